// Tests for client/json.h: round trips that keep member order and number text, the strictness
// a parser of downloaded headers needs (RFC 8259 grammar, UTF-8, duplicate keys, nesting), and
// the Python-compatible non-finite numbers of our own files.
#include "json.h"

#include <cmath>
#include <limits>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "gtest/gtest.h"

namespace quantd {
namespace {

void ExpectRefused(absl::string_view text, absl::string_view fragment,
                   const JsonParseOptions& options = {}) {
  absl::StatusOr<Json> parsed = ParseJson(text, options);
  ASSERT_FALSE(parsed.ok()) << "accepted: " << text;
  EXPECT_EQ(parsed.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(parsed.status().message(), fragment))
      << "message: " << parsed.status().message() << "\nexpected to contain: " << fragment;
}

TEST(JsonTest, RoundTripKeepsOrderAndNumberText) {
  const std::string text =
      R"({"z":1,"a":[true,false,null],"eps":1e-06,"big":123456789012345678901234567890,)"
      R"("neg":-0.5,"s":"x\"y\\z\n","empty":{},"list":[]})";
  absl::StatusOr<Json> json = ParseJson(text);
  ASSERT_TRUE(json.ok()) << json.status();
  EXPECT_EQ(SerializeJson(*json), text);
  ASSERT_EQ(json->members().size(), 8u);
  EXPECT_EQ(json->members()[0].first, "z");
  EXPECT_EQ(json->Find("eps")->text(), "1e-06");
  EXPECT_EQ(json->Find("missing"), nullptr);
}

TEST(JsonTest, IndentedOutputIsPythonsIndentForm) {
  absl::StatusOr<Json> json = ParseJson(R"({"a": [1, {"b": null}], "c": {}})");
  ASSERT_TRUE(json.ok());
  EXPECT_EQ(SerializeJson(*json, 2),
            "{\n  \"a\": [\n    1,\n    {\n      \"b\": null\n    }\n  ],\n  \"c\": {}\n}");
}

TEST(JsonTest, SetReplacesInPlaceOrAppends) {
  Json json = Json::Object({{"a", Json::Int(1)}, {"b", Json::Int(2)}});
  json.Set("a", Json::String("x"));
  json.Set("c", Json::Bool(true));
  EXPECT_EQ(SerializeJson(json), R"({"a":"x","b":2,"c":true})");
  Json list;
  list.Append(Json::Int(3));
  EXPECT_EQ(SerializeJson(list), "[3]");
}

TEST(JsonTest, Integers) {
  EXPECT_EQ(*ParseJson("9223372036854775807")->AsInt64(), std::numeric_limits<int64_t>::max());
  EXPECT_EQ(*ParseJson("-9223372036854775808")->AsInt64(), std::numeric_limits<int64_t>::min());
  EXPECT_EQ(*ParseJson("-0")->AsInt64(), 0);
  EXPECT_FALSE(ParseJson("9223372036854775808")->AsInt64().ok());
  EXPECT_FALSE(ParseJson("1.0")->AsInt64().ok());
  EXPECT_FALSE(ParseJson("1e3")->AsInt64().ok());
  EXPECT_FALSE(ParseJson("\"1\"")->AsInt64().ok());
  EXPECT_EQ(*ParseJson("2.5e-1")->AsDouble(), 0.25);
  EXPECT_TRUE(std::isinf(*ParseJson("1e999")->AsDouble()));
}

TEST(JsonTest, DoublesAreShortestRoundTrips) {
  EXPECT_EQ(Json::Double(0.1).text(), "0.1");
  EXPECT_EQ(Json::Double(31.5).text(), "31.5");
  EXPECT_EQ(*ParseJson(Json::Double(1.0 / 3).text())->AsDouble(), 1.0 / 3);
  EXPECT_EQ(Json::Double(HUGE_VAL).text(), "Infinity");
  EXPECT_EQ(Json::Double(-HUGE_VAL).text(), "-Infinity");
  EXPECT_EQ(Json::Double(std::nan("")).text(), "NaN");
}

TEST(JsonTest, NonFiniteTokensOnlyWhenAllowed) {
  ExpectRefused("[NaN]", "where a value was expected");
  ExpectRefused("Infinity", "where a value was expected");
  JsonParseOptions options;
  options.allow_non_finite = true;
  absl::StatusOr<Json> json = ParseJson("[NaN, Infinity, -Infinity, -1]", options);
  ASSERT_TRUE(json.ok()) << json.status();
  EXPECT_TRUE(std::isnan(*json->items()[0].AsDouble()));
  EXPECT_EQ(*json->items()[2].AsDouble(), -HUGE_VAL);
  EXPECT_FALSE(json->items()[1].AsInt64().ok());
}

TEST(JsonTest, StringEscapesAndUtf8) {
  absl::StatusOr<Json> json = ParseJson(R"(["\u00e9\ud83d\ude00\/\t", "é"])");
  ASSERT_TRUE(json.ok()) << json.status();
  EXPECT_EQ(json->items()[0].text(), "\xC3\xA9\xF0\x9F\x98\x80/\t");
  EXPECT_EQ(json->items()[1].text(), "\xC3\xA9");
  EXPECT_EQ(SerializeJson(Json::String(std::string("a\x01"
                                                   "b",
                                                   3))),
            "\"a\\u0001b\"");
}

TEST(JsonTest, RefusesWhatIsNotJson) {
  ExpectRefused("", "JSON ends at byte 0");
  ExpectRefused("{", "a member name");
  ExpectRefused("[1,]", "a value");
  ExpectRefused("{\"a\":1,}", "a member name");
  ExpectRefused("{'a':1}", "a member name");
  ExpectRefused("01", "the end of the document");
  ExpectRefused("1.", "a digit after '.'");
  ExpectRefused("1e", "an exponent digit");
  ExpectRefused("-", "a digit");
  ExpectRefused("[1] [2]", "the end of the document");
  ExpectRefused("tru", "a value");
  ExpectRefused("\"a\nb\"", "an escaped control character");
  ExpectRefused(R"("\x")", "one of");
  ExpectRefused(R"("\u12G4")", "a hex digit");
  ExpectRefused(R"("\u12")", "four hex digits");
  ExpectRefused(R"("\ud800")", "the low surrogate");
  ExpectRefused(R"("\udc00")", "a high surrogate before a low one");
  ExpectRefused(R"("\ud800\u0041")", "a low surrogate");
  ExpectRefused("\"\xC0\xAF\"", "UTF-8");          // overlong '/'
  ExpectRefused("\"\xED\xA0\x80\"", "UTF-8");      // an encoded surrogate
  ExpectRefused("\"\xF4\x90\x80\x80\"", "UTF-8");  // above U+10FFFF
  ExpectRefused("\"\xE2\x82\"", "UTF-8");          // cut short
  ExpectRefused("\"\x80\"", "UTF-8");              // a lone continuation byte
  ExpectRefused(std::string("\"a\0b\"", 5), "an escaped control character");
}

TEST(JsonTest, DuplicateKeysAreRefusedUnlessAllowed) {
  ExpectRefused(R"({"a": 1, "b": 2, "a": 3})", "repeats the key \"a\"");
  JsonParseOptions options;
  options.allow_duplicate_keys = true;
  EXPECT_TRUE(ParseJson(R"({"a": 1, "a": 3})", options).ok());
}

TEST(JsonTest, NestingIsBounded) {
  const std::string deep = std::string(100000, '[') + std::string(100000, ']');
  ExpectRefused(deep, "nests deeper than 64 levels");
  JsonParseOptions options;
  options.max_depth = 3;
  EXPECT_TRUE(ParseJson("[[[1]]]", options).ok());
  ExpectRefused("[[[[1]]]]", "nests deeper than 3 levels", options);
}

TEST(JsonTest, Equality) {
  EXPECT_EQ(*ParseJson(R"({"a": [1, "x"]})"), *ParseJson(R"({"a":[1,"x"]})"));
  EXPECT_NE(*ParseJson(R"({"a": 1, "b": 2})"), *ParseJson(R"({"b": 2, "a": 1})"));
  EXPECT_NE(*ParseJson("1"), *ParseJson("1.0"));  // number text, not value
}

}  // namespace
}  // namespace quantd
