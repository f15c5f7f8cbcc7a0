#include "json.h"

#include <charconv>
#include <cmath>
#include <cstdint>
#include <string>
#include <unordered_set>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace quantd {

Json Json::Bool(bool value) {
  Json json;
  json.kind_ = Kind::kBool;
  json.bool_ = value;
  return json;
}

Json Json::Int(int64_t value) { return NumberText(absl::StrCat(value)); }

Json Json::Double(double value) {
  if (std::isnan(value)) return NumberText("NaN");
  if (std::isinf(value)) return NumberText(value > 0 ? "Infinity" : "-Infinity");
  // The shortest text that reads back as the same double.
  char buffer[32];
  const auto result = std::to_chars(buffer, buffer + sizeof(buffer), value);
  return NumberText(std::string(buffer, result.ptr));
}

Json Json::String(std::string value) {
  Json json;
  json.kind_ = Kind::kString;
  json.text_ = std::move(value);
  return json;
}

Json Json::Array(std::vector<Json> items) {
  Json json;
  json.kind_ = Kind::kArray;
  json.items_ = std::move(items);
  return json;
}

Json Json::Object(Members members) {
  Json json;
  json.kind_ = Kind::kObject;
  json.members_ = std::move(members);
  return json;
}

Json Json::NumberText(std::string text) {
  Json json;
  json.kind_ = Kind::kNumber;
  json.text_ = std::move(text);
  return json;
}

absl::StatusOr<int64_t> Json::AsInt64() const {
  if (kind_ != Kind::kNumber) return absl::InvalidArgumentError("not a number");
  if (text_.find_first_of(".eEIN") != std::string::npos) {
    return absl::InvalidArgumentError(absl::StrCat(text_, " is not an integer"));
  }
  int64_t value = 0;
  if (!absl::SimpleAtoi(text_, &value)) {
    return absl::InvalidArgumentError(absl::StrCat(text_, " is outside the int64 range"));
  }
  return value;
}

absl::StatusOr<double> Json::AsDouble() const {
  if (kind_ != Kind::kNumber) return absl::InvalidArgumentError("not a number");
  if (text_ == "NaN") return std::nan("");
  if (text_ == "Infinity") return HUGE_VAL;
  if (text_ == "-Infinity") return -HUGE_VAL;
  double value = 0;
  // SimpleAtod gives ±inf for a magnitude beyond double: JSON allows such numbers.
  if (!absl::SimpleAtod(text_, &value)) {
    return absl::InvalidArgumentError(absl::StrCat(text_, " is not a number"));
  }
  return value;
}

const Json* Json::Find(absl::string_view key) const {
  for (const auto& [name, value] : members_) {
    if (name == key) return &value;
  }
  return nullptr;
}

void Json::Set(std::string key, Json value) {
  if (kind_ == Kind::kNull) kind_ = Kind::kObject;
  for (auto& [name, existing] : members_) {
    if (name == key) {
      existing = std::move(value);
      return;
    }
  }
  members_.emplace_back(std::move(key), std::move(value));
}

void Json::Append(Json value) {
  if (kind_ == Kind::kNull) kind_ = Kind::kArray;
  items_.push_back(std::move(value));
}

bool operator==(const Json& a, const Json& b) {
  if (a.kind() != b.kind()) return false;
  switch (a.kind()) {
    case Json::Kind::kNull:
      return true;
    case Json::Kind::kBool:
      return a.bool_value() == b.bool_value();
    case Json::Kind::kNumber:
    case Json::Kind::kString:
      return a.text() == b.text();
    case Json::Kind::kArray:
      return a.items() == b.items();
    case Json::Kind::kObject:
      return a.members() == b.members();
  }
  return false;
}

namespace {

class Parser {
 public:
  Parser(absl::string_view text, const JsonParseOptions& options)
      : text_(text), options_(options) {}

  absl::StatusOr<Json> ParseDocument() {
    SkipWhitespace();
    absl::StatusOr<Json> value = ParseValue(/*depth=*/0);
    if (!value.ok()) return value;
    SkipWhitespace();
    if (pos_ != text_.size()) return Error("the end of the document");
    return value;
  }

 private:
  absl::Status Error(absl::string_view expected) const {
    if (pos_ >= text_.size()) {
      return absl::InvalidArgumentError(
          absl::StrCat("JSON ends at byte ", pos_, " where ", expected, " was expected"));
    }
    const unsigned char c = static_cast<unsigned char>(text_[pos_]);
    const std::string found = (c >= 0x20 && c < 0x7F) ? absl::StrCat("'", std::string(1, c), "'")
                                                      : absl::StrFormat("byte 0x%02X", c);
    return absl::InvalidArgumentError(
        absl::StrCat("JSON has ", found, " at byte ", pos_, " where ", expected, " was expected"));
  }

  void SkipWhitespace() {
    while (pos_ < text_.size() && (text_[pos_] == ' ' || text_[pos_] == '\t' ||
                                   text_[pos_] == '\n' || text_[pos_] == '\r')) {
      ++pos_;
    }
  }

  bool Consume(absl::string_view token) {
    if (text_.substr(pos_, token.size()) != token) return false;
    pos_ += token.size();
    return true;
  }

  absl::StatusOr<Json> ParseValue(int depth) {
    if (pos_ >= text_.size()) return Error("a value");
    const char c = text_[pos_];
    if (c == '{' || c == '[') {
      if (depth >= options_.max_depth) {
        return absl::InvalidArgumentError(
            absl::StrCat("JSON nests deeper than ", options_.max_depth, " levels at byte ", pos_));
      }
      return c == '{' ? ParseObject(depth + 1) : ParseArray(depth + 1);
    }
    if (c == '"') {
      absl::StatusOr<std::string> s = ParseString();
      if (!s.ok()) return s.status();
      return Json::String(*std::move(s));
    }
    if (Consume("true")) return Json::Bool(true);
    if (Consume("false")) return Json::Bool(false);
    if (Consume("null")) return Json();
    if (options_.allow_non_finite) {
      if (Consume("NaN")) return Json::NumberText("NaN");
      if (Consume("Infinity")) return Json::NumberText("Infinity");
      if (Consume("-Infinity")) return Json::NumberText("-Infinity");
    }
    if (c == '-' || (c >= '0' && c <= '9')) return ParseNumber();
    return Error("a value");
  }

  absl::StatusOr<Json> ParseObject(int depth) {
    ++pos_;  // '{'
    Json object = Json::Object();
    SkipWhitespace();
    if (Consume("}")) return object;
    Json::Members members;
    // A set rather than a scan of `members`: a hostile header may hold millions of keys.
    std::unordered_set<std::string> keys;
    while (true) {
      SkipWhitespace();
      if (pos_ >= text_.size() || text_[pos_] != '"') return Error("a member name");
      const size_t key_at = pos_;
      absl::StatusOr<std::string> key = ParseString();
      if (!key.ok()) return key.status();
      if (!options_.allow_duplicate_keys && !keys.insert(*key).second) {
        return absl::InvalidArgumentError(
            absl::StrCat("JSON object repeats the key \"", *key, "\" at byte ", key_at));
      }
      SkipWhitespace();
      if (!Consume(":")) return Error("':'");
      SkipWhitespace();
      absl::StatusOr<Json> value = ParseValue(depth);
      if (!value.ok()) return value.status();
      members.emplace_back(*std::move(key), *std::move(value));
      SkipWhitespace();
      if (Consume("}")) break;
      if (!Consume(",")) return Error("',' or '}'");
    }
    return Json::Object(std::move(members));
  }

  absl::StatusOr<Json> ParseArray(int depth) {
    ++pos_;  // '['
    std::vector<Json> items;
    SkipWhitespace();
    if (Consume("]")) return Json::Array();
    while (true) {
      SkipWhitespace();
      absl::StatusOr<Json> value = ParseValue(depth);
      if (!value.ok()) return value.status();
      items.push_back(*std::move(value));
      SkipWhitespace();
      if (Consume("]")) break;
      if (!Consume(",")) return Error("',' or ']'");
    }
    return Json::Array(std::move(items));
  }

  absl::StatusOr<Json> ParseNumber() {
    const size_t start = pos_;
    auto digits = [&] {
      const size_t from = pos_;
      while (pos_ < text_.size() && text_[pos_] >= '0' && text_[pos_] <= '9') ++pos_;
      return pos_ - from;
    };
    Consume("-");
    if (Consume("0")) {
      // No leading zeros: "01" is not JSON.
    } else if (digits() == 0) {
      return Error("a digit");
    }
    if (Consume(".") && digits() == 0) return Error("a digit after '.'");
    if (pos_ < text_.size() && (text_[pos_] == 'e' || text_[pos_] == 'E')) {
      ++pos_;
      if (!Consume("+")) Consume("-");
      if (digits() == 0) return Error("an exponent digit");
    }
    return Json::NumberText(std::string(text_.substr(start, pos_ - start)));
  }

  static void AppendUtf8(uint32_t code_point, std::string* out) {
    if (code_point < 0x80) {
      out->push_back(static_cast<char>(code_point));
    } else if (code_point < 0x800) {
      out->push_back(static_cast<char>(0xC0 | (code_point >> 6)));
      out->push_back(static_cast<char>(0x80 | (code_point & 0x3F)));
    } else if (code_point < 0x10000) {
      out->push_back(static_cast<char>(0xE0 | (code_point >> 12)));
      out->push_back(static_cast<char>(0x80 | ((code_point >> 6) & 0x3F)));
      out->push_back(static_cast<char>(0x80 | (code_point & 0x3F)));
    } else {
      out->push_back(static_cast<char>(0xF0 | (code_point >> 18)));
      out->push_back(static_cast<char>(0x80 | ((code_point >> 12) & 0x3F)));
      out->push_back(static_cast<char>(0x80 | ((code_point >> 6) & 0x3F)));
      out->push_back(static_cast<char>(0x80 | (code_point & 0x3F)));
    }
  }

  absl::StatusOr<uint32_t> ParseHex4() {
    if (pos_ + 4 > text_.size()) return Error("four hex digits");
    uint32_t value = 0;
    for (int i = 0; i < 4; ++i) {
      const char c = text_[pos_];
      value <<= 4;
      if (c >= '0' && c <= '9') {
        value |= static_cast<uint32_t>(c - '0');
      } else if (c >= 'a' && c <= 'f') {
        value |= static_cast<uint32_t>(c - 'a' + 10);
      } else if (c >= 'A' && c <= 'F') {
        value |= static_cast<uint32_t>(c - 'A' + 10);
      } else {
        return Error("a hex digit");
      }
      ++pos_;
    }
    return value;
  }

  // One UTF-8 sequence starting at pos_, checked (no overlong forms, no surrogates, nothing
  // above U+10FFFF), copied to `out`.
  absl::Status CopyUtf8Sequence(std::string* out) {
    const auto byte = [&](size_t i) { return static_cast<unsigned char>(text_[i]); };
    const unsigned char lead = byte(pos_);
    int length = 0;
    uint32_t code_point = 0;
    if (lead >= 0xC2 && lead <= 0xDF) {
      length = 2;
      code_point = lead & 0x1F;
    } else if (lead >= 0xE0 && lead <= 0xEF) {
      length = 3;
      code_point = lead & 0x0F;
    } else if (lead >= 0xF0 && lead <= 0xF4) {
      length = 4;
      code_point = lead & 0x07;
    } else {
      return Error("UTF-8 text");
    }
    if (pos_ + length > text_.size()) return Error("a complete UTF-8 sequence");
    for (int i = 1; i < length; ++i) {
      const unsigned char continuation = byte(pos_ + i);
      if ((continuation & 0xC0) != 0x80) {
        pos_ += i;
        return Error("a UTF-8 continuation byte");
      }
      code_point = (code_point << 6) | (continuation & 0x3F);
    }
    const uint32_t minimum = length == 2 ? 0x80 : length == 3 ? 0x800 : 0x10000;
    if (code_point < minimum || code_point > 0x10FFFF ||
        (code_point >= 0xD800 && code_point <= 0xDFFF)) {
      return Error("UTF-8 text (an overlong form, a surrogate or a code point above U+10FFFF)");
    }
    out->append(text_.data() + pos_, length);
    pos_ += length;
    return absl::OkStatus();
  }

  absl::StatusOr<std::string> ParseString() {
    ++pos_;  // '"'
    std::string out;
    while (true) {
      if (pos_ >= text_.size()) return Error("'\"' closing the string");
      const unsigned char c = static_cast<unsigned char>(text_[pos_]);
      if (c == '"') {
        ++pos_;
        return out;
      }
      if (c < 0x20) return Error("an escaped control character");
      if (c >= 0x80) {
        absl::Status status = CopyUtf8Sequence(&out);
        if (!status.ok()) return status;
        continue;
      }
      if (c != '\\') {
        out.push_back(static_cast<char>(c));
        ++pos_;
        continue;
      }
      ++pos_;
      if (pos_ >= text_.size()) return Error("an escape");
      const char escape = text_[pos_++];
      switch (escape) {
        case '"':
        case '\\':
        case '/':
          out.push_back(escape);
          break;
        case 'b':
          out.push_back('\b');
          break;
        case 'f':
          out.push_back('\f');
          break;
        case 'n':
          out.push_back('\n');
          break;
        case 'r':
          out.push_back('\r');
          break;
        case 't':
          out.push_back('\t');
          break;
        case 'u': {
          absl::StatusOr<uint32_t> unit = ParseHex4();
          if (!unit.ok()) return unit.status();
          uint32_t code_point = *unit;
          if (code_point >= 0xDC00 && code_point <= 0xDFFF) {
            return Error("a high surrogate before a low one");
          }
          if (code_point >= 0xD800 && code_point <= 0xDBFF) {
            if (!Consume("\\u")) return Error("the low surrogate of a \\u pair");
            absl::StatusOr<uint32_t> low = ParseHex4();
            if (!low.ok()) return low.status();
            if (*low < 0xDC00 || *low > 0xDFFF) return Error("a low surrogate");
            code_point = 0x10000 + ((code_point - 0xD800) << 10) + (*low - 0xDC00);
          }
          AppendUtf8(code_point, &out);
          break;
        }
        default:
          --pos_;
          return Error("one of \\\" \\\\ \\/ \\b \\f \\n \\r \\t \\u");
      }
    }
  }

  absl::string_view text_;
  JsonParseOptions options_;
  size_t pos_ = 0;
};

void AppendQuoted(absl::string_view s, std::string* out) {
  out->push_back('"');
  for (const char c : s) {
    switch (c) {
      case '"':
        out->append("\\\"");
        break;
      case '\\':
        out->append("\\\\");
        break;
      case '\n':
        out->append("\\n");
        break;
      case '\r':
        out->append("\\r");
        break;
      case '\t':
        out->append("\\t");
        break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          absl::StrAppendFormat(out, "\\u%04x", static_cast<unsigned char>(c));
        } else {
          out->push_back(c);
        }
    }
  }
  out->push_back('"');
}

void Serialize(const Json& value, int indent, int level, std::string* out) {
  const auto newline = [&](int at_level) {
    if (indent < 0) return;
    out->push_back('\n');
    out->append(static_cast<size_t>(indent) * at_level, ' ');
  };
  switch (value.kind()) {
    case Json::Kind::kNull:
      out->append("null");
      return;
    case Json::Kind::kBool:
      out->append(value.bool_value() ? "true" : "false");
      return;
    case Json::Kind::kNumber:
      out->append(value.text());
      return;
    case Json::Kind::kString:
      AppendQuoted(value.text(), out);
      return;
    case Json::Kind::kArray: {
      if (value.items().empty()) {
        out->append("[]");
        return;
      }
      out->push_back('[');
      bool first = true;
      for (const Json& item : value.items()) {
        if (!first) out->push_back(',');
        first = false;
        newline(level + 1);
        Serialize(item, indent, level + 1, out);
      }
      newline(level);
      out->push_back(']');
      return;
    }
    case Json::Kind::kObject: {
      if (value.members().empty()) {
        out->append("{}");
        return;
      }
      out->push_back('{');
      bool first = true;
      for (const auto& [name, member] : value.members()) {
        if (!first) out->push_back(',');
        first = false;
        newline(level + 1);
        AppendQuoted(name, out);
        out->append(indent < 0 ? ":" : ": ");
        Serialize(member, indent, level + 1, out);
      }
      newline(level);
      out->push_back('}');
      return;
    }
  }
}

}  // namespace

absl::StatusOr<Json> ParseJson(absl::string_view text, const JsonParseOptions& options) {
  return Parser(text, options).ParseDocument();
}

std::string SerializeJson(const Json& value, int indent) {
  std::string out;
  Serialize(value, indent, /*level=*/0, &out);
  return out;
}

}  // namespace quantd
