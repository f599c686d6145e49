#include "engine/json.h"

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstdlib>
#include <cstring>

#include "gptoss/error.h"

namespace gptoss {
namespace json {

const Value* Value::find(const std::string& key) const {
  if (kind != Object) return nullptr;
  for (const auto& kv : obj)
    if (kv.first == key) return &kv.second;
  return nullptr;
}

namespace {

// Nesting is recursion here: a bound keeps "[[[[..." from overflowing the stack.
constexpr int kMaxDepth = 64;
// Every value costs about sizeof(Value) (~120 bytes) for ~2 bytes of text: without a bound a
// 50 MB header of "[0,0,0,..." took 4 GB. With it, at most ~130 MB; a real header holds ~10
// values per tensor (a gpt-oss-120b shard ~10^4 values).
constexpr size_t kMaxValues = size_t(1) << 20;

struct Parser {
  const char* p;
  const char* end;
  const char* begin;
  const std::string& where;
  int depth = 0;
  size_t values = 0;

  [[noreturn]] void bad(const char* what) {
    GPTOSS_CHECK(false, where << ": invalid JSON at byte " << (p - begin) << ": " << what);
    throw;  // unreachable
  }
  void ws() {
    while (p < end && (*p == ' ' || *p == '\n' || *p == '\r' || *p == '\t')) ++p;
  }
  bool lit(const char* s) {
    size_t n = std::strlen(s);
    if (size_t(end - p) >= n && std::memcmp(p, s, n) == 0) {
      p += n;
      return true;
    }
    return false;
  }
  static void utf8(std::string& out, uint32_t cp) {
    if (cp < 0x80) {
      out += char(cp);
    } else if (cp < 0x800) {
      out += char(0xC0 | (cp >> 6));
      out += char(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
      out += char(0xE0 | (cp >> 12));
      out += char(0x80 | ((cp >> 6) & 0x3F));
      out += char(0x80 | (cp & 0x3F));
    } else {
      out += char(0xF0 | (cp >> 18));
      out += char(0x80 | ((cp >> 12) & 0x3F));
      out += char(0x80 | ((cp >> 6) & 0x3F));
      out += char(0x80 | (cp & 0x3F));
    }
  }
  uint32_t hex4() {
    if (end - p < 4) bad("truncated \\u escape");
    uint32_t v = 0;
    for (int i = 0; i < 4; ++i) {
      char c = *p++;
      v <<= 4;
      if (c >= '0' && c <= '9') v |= uint32_t(c - '0');
      else if (c >= 'a' && c <= 'f') v |= uint32_t(c - 'a' + 10);
      else if (c >= 'A' && c <= 'F') v |= uint32_t(c - 'A' + 10);
      else bad("bad \\u escape");
    }
    return v;
  }
  // One multi-byte UTF-8 sequence starting at p, copied to out; overlong forms, surrogates and
  // code points past U+10FFFF are errors (tensor names end up in messages and Python strings).
  void utf8_sequence(std::string& out) {
    const unsigned char c0 = (unsigned char)*p;
    int n;
    uint32_t cp, min;
    if (c0 >= 0xC2 && c0 <= 0xDF) { n = 1; cp = c0 & 0x1F; min = 0x80; }
    else if (c0 >= 0xE0 && c0 <= 0xEF) { n = 2; cp = c0 & 0x0F; min = 0x800; }
    else if (c0 >= 0xF0 && c0 <= 0xF4) { n = 3; cp = c0 & 0x07; min = 0x10000; }
    else bad("invalid UTF-8 in string");
    if (end - p <= n) bad("invalid UTF-8 in string (truncated sequence)");
    for (int i = 1; i <= n; ++i) {
      const unsigned char ci = (unsigned char)p[i];
      if ((ci & 0xC0) != 0x80) bad("invalid UTF-8 in string");
      cp = (cp << 6) | (ci & 0x3F);
    }
    if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp < 0xE000))
      bad("invalid UTF-8 in string");
    out.append(p, size_t(n + 1));
    p += n + 1;
  }
  std::string string() {
    if (p >= end || *p != '"') bad("expected a string");
    ++p;
    std::string out;
    while (true) {
      if (p >= end) bad("unterminated string");
      char c = *p++;
      if (c == '"') break;
      if ((unsigned char)c < 0x20) bad("control character in string");
      if ((unsigned char)c >= 0x80) {
        --p;
        utf8_sequence(out);
        continue;
      }
      if (c != '\\') {
        out += c;
        continue;
      }
      if (p >= end) bad("unterminated escape");
      char e = *p++;
      switch (e) {
        case '"': out += '"'; break;
        case '\\': out += '\\'; break;
        case '/': out += '/'; break;
        case 'b': out += '\b'; break;
        case 'f': out += '\f'; break;
        case 'n': out += '\n'; break;
        case 'r': out += '\r'; break;
        case 't': out += '\t'; break;
        case 'u': {
          uint32_t cp = hex4();
          if (cp >= 0xDC00 && cp < 0xE000) bad("lone low surrogate in \\u escape");
          if (cp >= 0xD800 && cp < 0xDC00) {
            if (!(end - p >= 2 && p[0] == '\\' && p[1] == 'u')) bad("lone surrogate");
            p += 2;
            uint32_t lo = hex4();
            if (lo < 0xDC00 || lo >= 0xE000) bad("bad surrogate pair");
            cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
          }
          utf8(out, cp);
          break;
        }
        default: bad("bad escape");
      }
    }
    return out;
  }
  // The grammar of a JSON number, checked here: -?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)?.
  // It is converted without the C locale's help (strtod would read "1.5" as 1 under a locale
  // with a decimal comma). Integers are exact in i64 when they fit; others only as double.
  void number(Value& v) {
    const char* s = p;
    auto digits = [&] {
      const char* d = p;
      while (p < end && *p >= '0' && *p <= '9') ++p;
      return p - d;
    };
    if (*p == '-') ++p;
    if (p < end && *p == '0') {
      ++p;
      if (p < end && *p >= '0' && *p <= '9') bad("bad number (leading zero)");
    } else if (digits() == 0) {
      bad("bad number");
    }
    bool frac = false;
    if (p < end && *p == '.') {
      ++p;
      frac = true;
      if (digits() == 0) bad("bad number (no digits after '.')");
    }
    if (p < end && (*p == 'e' || *p == 'E')) {
      ++p;
      frac = true;
      if (p < end && (*p == '+' || *p == '-')) ++p;
      if (digits() == 0) bad("bad number (no digits in the exponent)");
    }
    v.kind = Value::Number;
    v.num = to_double(s, p);
    if (!frac) {
      int64_t i = 0;
      auto r = std::from_chars(s, p, i);
      if (r.ec == std::errc() && r.ptr == p) {
        v.integral = true;
        v.i64 = i;
      }
    } else if (std::isfinite(v.num) && std::floor(v.num) == v.num && std::fabs(v.num) < 9e15) {
      v.integral = true;
      v.i64 = int64_t(v.num);
    }
  }
  // [s, e) is a valid JSON number. One past the range of a double (1e999, 1e-400) is an error
  // here, not +-inf or 0: no checkpoint value is meant that way.
  double to_double(const char* s, const char* e) {
#if defined(__cpp_lib_to_chars) && __cpp_lib_to_chars >= 201611L
    double d = 0;
    auto r = std::from_chars(s, e, d);
    if (r.ec == std::errc::result_out_of_range) bad("number out of the range of a double");
    if (r.ec != std::errc() || r.ptr != e) bad("bad number");
    return d;
#else
    // no floating-point from_chars in this standard library: strtod (right under the "C"
    // numeric locale, which is the default of a C++ program and of Python)
    errno = 0;
    double d = std::strtod(std::string(s, e).c_str(), nullptr);
    if (errno == ERANGE) bad("number out of the range of a double");
    return d;
#endif
  }
  // Two equal keys in one object: the second would silently win in one reader and lose in
  // another (json.loads keeps the last; Value::find the first), so both are refused.
  void duplicates(const Value& v) {
    const size_t n = v.obj.size();
    if (n < 2) return;
    std::vector<const std::string*> keys(n);
    for (size_t i = 0; i < n; ++i) keys[i] = &v.obj[i].first;
    std::sort(keys.begin(), keys.end(),
              [](const std::string* a, const std::string* b) { return *a < *b; });
    for (size_t i = 1; i < n; ++i)
      if (*keys[i] == *keys[i - 1]) {
        std::string k = keys[i]->size() > 80 ? keys[i]->substr(0, 80) + "..." : *keys[i];
        GPTOSS_CHECK(false, where << ": invalid JSON: duplicate key '" << k << "'");
      }
  }
  Value value() {
    if (++depth > kMaxDepth) bad("nested too deeply (more than 64 levels)");
    if (++values > kMaxValues) bad("too many values (more than 1048576)");
    ws();
    if (p >= end) bad("unexpected end");
    Value v;
    char c = *p;
    if (c == '{') {
      v.kind = Value::Object;
      ++p;
      ws();
      if (p < end && *p == '}') {
        ++p;
      } else {
        while (true) {
          ws();
          std::string k = string();
          ws();
          if (p >= end || *p != ':') bad("expected ':'");
          ++p;
          Value item = value();
          v.obj.emplace_back(std::move(k), std::move(item));
          ws();
          if (p < end && *p == ',') { ++p; continue; }
          if (p < end && *p == '}') { ++p; break; }
          bad("expected ',' or '}'");
        }
        duplicates(v);
      }
    } else if (c == '[') {
      v.kind = Value::Array;
      ++p;
      ws();
      if (p < end && *p == ']') {
        ++p;
      } else {
        while (true) {
          v.arr.push_back(value());
          ws();
          if (p < end && *p == ',') { ++p; continue; }
          if (p < end && *p == ']') { ++p; break; }
          bad("expected ',' or ']'");
        }
      }
    } else if (c == '"') {
      v.kind = Value::String;
      v.str = string();
    } else if (lit("true")) {
      v.kind = Value::Bool;
      v.b = true;
    } else if (lit("false")) {
      v.kind = Value::Bool;
    } else if (lit("null")) {
      v.kind = Value::Null;
    } else if (c == '-' || (c >= '0' && c <= '9')) {
      number(v);
    } else {
      bad("unexpected character");
    }
    --depth;
    return v;
  }
};

}  // namespace

Value parse(const char* data, size_t size, const std::string& where) {
  Parser ps{data, data + size, data, where};
  Value v = ps.value();
  ps.ws();
  // safetensors pads headers with spaces; anything else after the value is an error
  if (ps.p != ps.end) ps.bad("trailing characters after the JSON value");
  return v;
}

}  // namespace json
}  // namespace gptoss
