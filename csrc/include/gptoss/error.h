// gptoss::Error: every failure in the native library, carrying the failing check, file and line.
// Library code never exits or aborts; the Python bindings turn Error into a Python exception.
#pragma once
#include <cstdio>
#include <stdexcept>
#include <string>
#include <string_view>
#include <type_traits>

namespace gptoss {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what) : std::runtime_error(what) {}
};

// The text of a failed check, built without iostreams: no locale, no facets, no std::ostream state
// in the error path. (On the H200 machine's build an ostringstream in a failing check crashed the
// process inside libstdc++'s number formatting instead of raising; this builder has nothing of
// the kind to crash in.) Takes the pieces a check writes: strings, characters, numbers, enums.
class Message {
 public:
  Message& operator<<(const std::string& s) { s_ += s; return *this; }
  Message& operator<<(std::string_view s) { s_.append(s.data(), s.size()); return *this; }
  Message& operator<<(const char* s) { s_ += s ? s : "(null)"; return *this; }
  Message& operator<<(char c) { s_ += c; return *this; }
  Message& operator<<(bool b) { s_ += b ? "true" : "false"; return *this; }
  Message& operator<<(const void* p) {
    char b[32];
    std::snprintf(b, sizeof b, "%p", p);
    s_ += b;
    return *this;
  }
  template <typename T, typename std::enable_if<std::is_integral<T>::value &&
                                                    !std::is_same<T, bool>::value &&
                                                    !std::is_same<T, char>::value, int>::type = 0>
  Message& operator<<(T v) {
    s_ += std::to_string(v);
    return *this;
  }
  template <typename T,
            typename std::enable_if<std::is_floating_point<T>::value, int>::type = 0>
  Message& operator<<(T v) {
    char b[40];
    std::snprintf(b, sizeof b, "%g", double(v));  // what an ostream writes by default
    s_ += b;
    return *this;
  }
  template <typename T, typename std::enable_if<std::is_enum<T>::value, int>::type = 0>
  Message& operator<<(T v) {
    return *this << static_cast<typename std::underlying_type<T>::type>(v);
  }
  const std::string& str() const { return s_; }

 private:
  std::string s_;
};

[[noreturn]] inline void fail(const char* file, int line, const std::string& msg) {
  throw Error(msg + " [" + file + ":" + std::to_string(line) + "]");
}

}  // namespace gptoss

// GPTOSS_CHECK(cond, message pieces...): throws gptoss::Error naming the condition and place.
#define GPTOSS_CHECK(cond, ...)                                                       \
  do {                                                                                \
    if (!(cond)) {                                                                    \
      ::gptoss::Message gptoss_os_;                                                   \
      gptoss_os_ << __VA_ARGS__ << " (check failed: " #cond ")";                      \
      ::gptoss::fail(__FILE__, __LINE__, gptoss_os_.str());                           \
    }                                                                                 \
  } while (0)
