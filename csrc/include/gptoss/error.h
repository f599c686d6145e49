// gptoss::Error: every failure in the native library, carrying the failing check, file and line.
// Library code never exits or aborts; the Python bindings turn Error into a Python exception.
#pragma once
#include <sstream>
#include <stdexcept>
#include <string>

namespace gptoss {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what) : std::runtime_error(what) {}
};

[[noreturn]] inline void fail(const char* file, int line, const std::string& msg) {
  std::ostringstream os;
  os << msg << " [" << file << ":" << line << "]";
  throw Error(os.str());
}

}  // namespace gptoss

// GPTOSS_CHECK(cond, message pieces...): throws gptoss::Error naming the condition and place.
#define GPTOSS_CHECK(cond, ...)                                                       \
  do {                                                                                \
    if (!(cond)) {                                                                    \
      std::ostringstream gptoss_os_;                                                  \
      gptoss_os_ << __VA_ARGS__ << " (check failed: " #cond ")";                      \
      ::gptoss::fail(__FILE__, __LINE__, gptoss_os_.str());                           \
    }                                                                                 \
  } while (0)
