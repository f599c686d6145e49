// What the CUDA bindings share: argument checks on NumPy arrays (dtype and shape, the argument
// named in the ValueError) and a device buffer freed on every path. Header-only, internal to the
// extension.
#pragma once
#if defined(GPTOSS_WITH_CUDA)
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <string>
#include <vector>

#include "cuda/kernels.h"

namespace gptoss {
namespace pyb {

namespace py = pybind11;

template <typename T>
using carray = py::array_t<T, py::array::c_style | py::array::forcecast>;

inline void need(bool cond, const std::string& msg) {
  if (!cond) throw py::value_error(msg);
}

inline std::string shape_of(const py::array& a) {
  std::string s = "[";
  for (py::ssize_t i = 0; i < a.ndim(); ++i) s += (i ? ", " : "") + std::to_string(a.shape(i));
  return s + "]";
}

// `a` as a C-contiguous array of exactly dtype T and this shape (entries < 0 match any size);
// dtype_note names the expected dtype in the error when it says more than T (e.g. bf16 bits).
template <typename T>
carray<T> need(const py::array& a, const char* name, const std::vector<py::ssize_t>& shape,
               const char* dtype_note = nullptr) {
  need(a.dtype().is(py::dtype::of<T>()),
       std::string(name) + " must be " +
           (dtype_note ? std::string(dtype_note) : py::str(py::dtype::of<T>()).cast<std::string>()) +
           ", got " + py::str(a.dtype()).cast<std::string>());
  bool ok = a.ndim() == py::ssize_t(shape.size());
  for (size_t i = 0; ok && i < shape.size(); ++i) ok = shape[i] < 0 || a.shape(py::ssize_t(i)) == shape[i];
  if (!ok) {
    std::string want = "[";
    for (size_t i = 0; i < shape.size(); ++i)
      want += (i ? ", " : "") + (shape[i] < 0 ? std::string("*") : std::to_string(shape[i]));
    need(false, std::string(name) + " must have shape " + want + "], got " + shape_of(a));
  }
  return carray<T>::ensure(a);
}

// A device buffer (uninitialised, or a copy of host memory), freed on every path.
struct Dev {
  void* p = nullptr;
  size_t bytes = 0;
  explicit Dev(size_t n) : p(cuda::device_alloc(n ? n : 16)), bytes(n) {}
  Dev(const void* host, size_t n) : Dev(n) {
    if (n) cuda::copy_to_device(p, host, n, nullptr);
  }
  ~Dev() {
    try {
      cuda::device_free(p);
    } catch (...) {
    }
  }
  Dev(const Dev&) = delete;
  Dev& operator=(const Dev&) = delete;
  template <typename T>
  T* as() const {
    return static_cast<T*>(p);
  }
};

template <typename T>
size_t nbytes(const carray<T>& a) {
  return size_t(a.size()) * sizeof(T);
}

}  // namespace pyb
}  // namespace gptoss
#endif
