// A small, strict JSON reader for config.json, model.safetensors.index.json and safetensors
// headers. Numbers are kept as double (and as int64 where they are integral), objects keep keys.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace gptoss {
namespace json {

struct Value {
  enum Kind { Null, Bool, Number, String, Array, Object } kind = Null;
  bool b = false;
  double num = 0;
  bool integral = false;
  int64_t i64 = 0;
  std::string str;
  std::vector<Value> arr;
  std::vector<std::pair<std::string, Value>> obj;  // in file order

  const Value* find(const std::string& key) const;  // null if absent (or not an object)
  bool is_object() const { return kind == Object; }
};

// Throws gptoss::Error "<where>: invalid JSON at byte N: ..." on malformed input, which here
// also means: nesting deeper than 64, more than 2^20 values, a duplicate key in an object,
// invalid UTF-8 or a lone surrogate in a string, a number past the range of a double.
// Integers are exact (integral, i64) within int64; numbers are read independently of the locale.
Value parse(const char* data, size_t size, const std::string& where);

}  // namespace json
}  // namespace gptoss
