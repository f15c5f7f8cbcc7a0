// A small JSON document model for the files `quantctl compress` reads and writes: safetensors
// headers, model.safetensors.index.json, config.json (read, amended with a
// quantization_config, written back), the resume manifest and report.json.
//
//   QUANTD_ASSIGN_OR_RETURN(Json config, ParseJson(text));
//   config.Set("quantization_config", std::move(quantization_config));
//   std::string out = SerializeJson(config, /*indent=*/2);
//
// Why not a general-purpose library: the headers come from files users download, so the parser
// is strict RFC 8259 with limits (nesting depth, duplicate keys refused by default, UTF-8
// checked) and never throws; and config.json must survive a round trip unchanged apart from
// what we add, so objects keep their member order and numbers keep their original text (a
// 1e-06 stays 1e-06, a 2^63 integer is not squeezed through a double).
//
// Errors are absl::InvalidArgumentError naming the byte offset and what was expected there.
#ifndef QUANTD_CLIENT_JSON_H_
#define QUANTD_CLIENT_JSON_H_

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace quantd {

class Json {
 public:
  enum class Kind { kNull, kBool, kNumber, kString, kArray, kObject };
  using Members = std::vector<std::pair<std::string, Json>>;

  Json() = default;  // null
  static Json Bool(bool value);
  static Json Int(int64_t value);
  // Non-finite values serialize as NaN / Infinity / -Infinity, as Python's json module writes
  // and reads them (report.json holds sqnr_db = Infinity for an exact tensor).
  static Json Double(double value);
  static Json String(std::string value);
  static Json Array(std::vector<Json> items = {});
  static Json Object(Members members = {});
  // A number from its JSON text, which must already be valid (the parser's job).
  static Json NumberText(std::string text);

  Kind kind() const { return kind_; }
  bool is_null() const { return kind_ == Kind::kNull; }
  bool is_number() const { return kind_ == Kind::kNumber; }
  bool is_string() const { return kind_ == Kind::kString; }
  bool is_array() const { return kind_ == Kind::kArray; }
  bool is_object() const { return kind_ == Kind::kObject; }

  bool bool_value() const { return bool_; }
  // The string's value, or the number's JSON text.
  const std::string& text() const { return text_; }
  const std::vector<Json>& items() const { return items_; }
  const Members& members() const { return members_; }

  // The number as an exact int64: InvalidArgument for a non-number, a fraction, an exponent
  // form or a value outside int64.
  [[nodiscard]] absl::StatusOr<int64_t> AsInt64() const;
  // The number as the nearest double (NaN / ±Infinity for those tokens).
  [[nodiscard]] absl::StatusOr<double> AsDouble() const;

  // Object members: the value under `key`, or nullptr (also for non-objects).
  const Json* Find(absl::string_view key) const;
  // Replaces the member `key` where it is, or appends it. Turns a null into an object.
  void Set(std::string key, Json value);
  // Appends to an array. Turns a null into an array.
  void Append(Json value);

 private:
  Kind kind_ = Kind::kNull;
  bool bool_ = false;
  std::string text_;
  std::vector<Json> items_;
  Members members_;
};

bool operator==(const Json& a, const Json& b);
inline bool operator!=(const Json& a, const Json& b) { return !(a == b); }

struct JsonParseOptions {
  // Arrays and objects nested deeper than this are refused (the parser recurses).
  int max_depth = 64;
  // A repeated key in one object is refused: two readers of the same file could otherwise
  // take different values (the first or the last).
  bool allow_duplicate_keys = false;
  // Python's NaN / Infinity / -Infinity tokens (our own report and manifest files).
  bool allow_non_finite = false;
};

// Parses one JSON value; whitespace may surround it (safetensors pads its header with spaces).
[[nodiscard]] absl::StatusOr<Json> ParseJson(absl::string_view text,
                                             const JsonParseOptions& options = {});

// Compact when indent < 0 ({"a":1,"b":[1,2]}, the safetensors header form); otherwise one
// member or item per line indented by `indent` spaces, as Python's json.dumps(indent=...).
// Strings are written as UTF-8 with ", \ and control characters escaped.
std::string SerializeJson(const Json& value, int indent = -1);

}  // namespace quantd

#endif  // QUANTD_CLIENT_JSON_H_
