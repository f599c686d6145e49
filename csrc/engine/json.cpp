#include "engine/json.h"

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

struct Parser {
  const char* p;
  const char* end;
  const char* begin;
  const std::string& where;
  int depth = 0;

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
  std::string string() {
    if (p >= end || *p != '"') bad("expected a string");
    ++p;
    std::string out;
    while (true) {
      if (p >= end) bad("unterminated string");
      char c = *p++;
      if (c == '"') break;
      if ((unsigned char)c < 0x20) bad("control character in string");
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
  Value value() {
    if (++depth > 64) bad("nested too deeply");
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
      const char* s = p;
      if (*p == '-') ++p;
      bool frac = false;
      while (p < end && ((*p >= '0' && *p <= '9') || *p == '.' || *p == 'e' || *p == 'E' ||
                         *p == '+' || *p == '-')) {
        if (*p == '.' || *p == 'e' || *p == 'E') frac = true;
        ++p;
      }
      std::string tok(s, p);
      char* stop = nullptr;
      v.kind = Value::Number;
      v.num = std::strtod(tok.c_str(), &stop);
      if (stop != tok.c_str() + tok.size()) bad("bad number");
      if (!frac && tok.size() < 19) {
        v.integral = true;
        v.i64 = std::strtoll(tok.c_str(), nullptr, 10);
      } else if (std::isfinite(v.num) && std::floor(v.num) == v.num && std::fabs(v.num) < 9e15) {
        v.integral = true;
        v.i64 = int64_t(v.num);
      }
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
