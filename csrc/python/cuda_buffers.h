// What the CUDA bindings share: argument checks (dtype and shape, the argument named in the
// ValueError), device buffers freed on every path, and the arrays a kernel reads and writes. An
// argument may be a NumPy host array (copied to the device for the call, results copied back) or
// a device array: a gptoss DeviceArray (ops.to_device, or the result of an earlier call) or any
// CUDA array that exports DLPack (a torch or CuPy tensor), used in place with no copy. Where any
// argument is a device array the results are DeviceArrays. Header-only, internal to the extension.
#pragma once
#if defined(GPTOSS_WITH_CUDA)
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <cstring>
#include <memory>
#include <type_traits>
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

// ------------------------------------------------------------------------------------- DLPack
// The DLPack ABI (the unversioned `dltensor` capsule every DLPack producer and consumer speaks),
// declared here field for field; only what the bindings use.
namespace dl {
enum : int32_t { kCPU = 1, kCUDA = 2, kCUDAHost = 3, kCUDAManaged = 13 };
enum : uint8_t { kInt = 0, kUInt = 1, kFloat = 2, kBfloat = 4 };
struct Device {
  int32_t device_type;
  int32_t device_id;
};
struct DataType {
  uint8_t code;
  uint8_t bits;
  uint16_t lanes;
};
struct Tensor {
  void* data;
  Device device;
  int32_t ndim;
  DataType dtype;
  int64_t* shape;
  int64_t* strides;  // in elements; null: C-contiguous
  uint64_t byte_offset;
};
struct ManagedTensor {
  Tensor dl_tensor;
  void* manager_ctx;
  void (*deleter)(ManagedTensor* self);
};
}  // namespace dl

template <typename T>
struct DType;
template <>
struct DType<float> {
  static constexpr uint8_t code = dl::kFloat, bits = 32;
};
template <>
struct DType<int32_t> {
  static constexpr uint8_t code = dl::kInt, bits = 32;
};
template <>
struct DType<uint16_t> {  // bf16 bits: a bfloat16 device array is taken as well
  static constexpr uint8_t code = dl::kUInt, bits = 16;
};
template <>
struct DType<uint8_t> {
  static constexpr uint8_t code = dl::kUInt, bits = 8;
};

inline std::string dl_dtype_name(dl::DataType t) {
  const char* c = t.code == dl::kFloat    ? "float"
                  : t.code == dl::kInt    ? "int"
                  : t.code == dl::kUInt   ? "uint"
                  : t.code == dl::kBfloat ? "bfloat"
                                          : "code";
  std::string s = c + std::to_string(t.bits);
  if (t.lanes != 1) s += "x" + std::to_string(t.lanes);
  return s;
}

// Device memory with its shape and DLPack dtype: what a call on device arrays returns, and what
// `ops.to_device` makes. Shares ownership of its memory, so views handed out by __dlpack__ keep it
// alive.
struct DeviceArray {
  std::shared_ptr<void> keep;  // owns (or keeps alive) the memory at p
  void* p = nullptr;
  std::vector<int64_t> shape;
  dl::DataType dtype{dl::kFloat, 32, 1};
  size_t size() const {
    size_t n = 1;
    for (int64_t d : shape) n *= size_t(d);
    return n;
  }
  size_t nbytes() const { return size() * dtype.bits / 8; }
};

inline std::string shape_str(const std::vector<py::ssize_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i)
    s += (i ? ", " : "") + (shape[i] < 0 ? std::string("*") : std::to_string(shape[i]));
  return s + "]";
}

inline bool dl_shape_matches(const std::vector<int64_t>& got,
                             const std::vector<py::ssize_t>& want) {
  if (got.size() != want.size()) return false;
  for (size_t i = 0; i < want.size(); ++i)
    if (want[i] >= 0 && got[i] != want[i]) return false;
  return true;
}

// An argument on the device, however it was given.
template <typename T>
struct Tensor {
  T* p = nullptr;                 // device pointer
  std::vector<int64_t> dims;
  bool on_device = false;         // given as a device array: used (and written) in place
  py::object given;               // the argument as the caller passed it
  std::shared_ptr<void> keep;     // the upload, or the device array's memory
  carray<T> host;                 // the host array, when given one
  py::ssize_t shape(size_t i) const { return py::ssize_t(dims.at(i)); }
  size_t size() const {
    size_t n = 1;
    for (int64_t d : dims) n *= size_t(d);
    return n;
  }
  size_t bytes() const { return size() * sizeof(T); }
  // The values on the host (for the index checks the bindings make before a launch).
  std::vector<T> values() const {
    std::vector<T> v(size());
    if (!on_device) {
      if (!v.empty()) std::memcpy(v.data(), host.data(), bytes());
    } else if (!v.empty()) {
      py::gil_scoped_release nogil;
      cuda::copy_to_host(v.data(), p, bytes(), nullptr);
      cuda::synchronize(nullptr);
    }
    return v;
  }
};

inline void dl_capsule_free(PyObject* cap) {
  // a capsule nobody consumed still owns its tensor
  if (PyCapsule_IsValid(cap, "dltensor")) {
    auto* m = static_cast<dl::ManagedTensor*>(PyCapsule_GetPointer(cap, "dltensor"));
    if (m && m->deleter) m->deleter(m);
  }
}

// A foreign device array's memory through its DLPack capsule (consumed: we call its deleter).
inline DeviceArray from_dlpack(const py::handle& o, const char* name) {
  py::tuple dev = o.attr("__dlpack_device__")();
  const int type = dev[0].cast<int>(), id = dev[1].cast<int>();
  if (type != dl::kCUDA && type != dl::kCUDAManaged)
    throw py::value_error(std::string(name) + " is a DLPack array on device type " +
                          std::to_string(type) + "; pass a NumPy array or a CUDA array");
  if (cuda::emulated())
    throw py::value_error(std::string(name) +
                          " is a CUDA array, but this build emulates CUDA on the CPU: pass a "
                          "NumPy array or an ops.to_device array");
  if (id != cuda::current_device())
    throw py::value_error(std::string(name) + " lives on CUDA device " + std::to_string(id) +
                          ", the current device is " + std::to_string(cuda::current_device()));
  // stream=1: the legacy default stream, the one these bindings launch on
  py::object cap = o.attr("__dlpack__")(py::arg("stream") = 1);
  if (!PyCapsule_IsValid(cap.ptr(), "dltensor"))
    throw py::value_error(std::string(name) + ".__dlpack__() did not return a DLPack capsule");
  auto* m = static_cast<dl::ManagedTensor*>(PyCapsule_GetPointer(cap.ptr(), "dltensor"));
  PyCapsule_SetName(cap.ptr(), "used_dltensor");
  std::shared_ptr<void> keep(m, [](void* q) {
    auto* mt = static_cast<dl::ManagedTensor*>(q);
    if (mt->deleter) mt->deleter(mt);
  });
  const dl::Tensor& t = m->dl_tensor;
  DeviceArray a;
  a.keep = keep;
  a.p = static_cast<char*>(t.data) + t.byte_offset;
  a.shape.assign(t.shape, t.shape + t.ndim);
  a.dtype = t.dtype;
  if (t.strides) {  // C-contiguous only (size-1 dimensions may carry any stride)
    int64_t expect = 1;
    for (int i = t.ndim - 1; i >= 0; --i) {
      if (t.shape[i] != 1 && t.strides[i] != expect)
        throw py::value_error(std::string(name) + " must be C-contiguous");
      expect *= t.shape[i];
    }
  }
  return a;
}

inline bool is_device_array(const py::handle& o) {
  if (py::isinstance<DeviceArray>(o)) return true;
  if (py::isinstance<py::array>(o) || !py::hasattr(o, "__dlpack_device__") ||
      !py::hasattr(o, "__dlpack__"))
    return false;
  return o.attr("__dlpack_device__")()[py::int_(0)].cast<int>() != dl::kCPU;
}

// The number of dimensions of an array argument of any kind (NumPy, DeviceArray, DLPack).
inline int ndim_of(const py::handle& o, const char* name) {
  if (py::isinstance<DeviceArray>(o)) return int(o.cast<DeviceArray>().shape.size());
  if (!py::hasattr(o, "shape")) throw py::value_error(std::string(name) + " must be an array");
  return int(py::len(o.attr("shape")));
}

// `o` on the device as T with this shape (entries < 0 match any size): a host array is checked
// and copied up; a device array is checked and used in place.
template <typename T>
Tensor<T> tensor(const py::handle& o, const char* name, const std::vector<py::ssize_t>& shape,
                 const char* dtype_note = nullptr) {
  Tensor<T> t;
  t.given = py::reinterpret_borrow<py::object>(o);
  const bool is_dev = py::isinstance<DeviceArray>(o);
  if (is_device_array(o)) {
    DeviceArray a = is_dev ? o.cast<DeviceArray>() : from_dlpack(o, name);
    const bool bf16_ok = std::is_same<T, uint16_t>::value && a.dtype.code == dl::kBfloat &&
                         a.dtype.bits == 16;
    const bool dtype_ok =
        a.dtype.lanes == 1 &&
        ((a.dtype.code == DType<T>::code && a.dtype.bits == DType<T>::bits) || bf16_ok);
    need(dtype_ok, std::string(name) + " must be " +
                       (dtype_note ? std::string(dtype_note)
                                   : py::str(py::dtype::of<T>()).cast<std::string>()) +
                       ", got a device array of " + dl_dtype_name(a.dtype));
    if (!dl_shape_matches(a.shape, shape)) {
      std::vector<py::ssize_t> got(a.shape.begin(), a.shape.end());
      need(false, std::string(name) + " must have shape " + shape_str(shape) + ", got " +
                      shape_str(got));
    }
    t.p = static_cast<T*>(a.p);
    t.dims = a.shape;
    t.on_device = true;
    t.keep = a.keep;
    return t;
  }
  py::array arr = py::isinstance<py::array>(o) ? py::reinterpret_borrow<py::array>(o)
                                               : py::array(py::module_::import("numpy").attr(
                                                     "asarray")(o));
  t.host = need<T>(arr, name, shape, dtype_note);
  t.dims.assign(t.host.shape(), t.host.shape() + t.host.ndim());
  auto buf = std::make_shared<Dev>(t.bytes());
  if (t.bytes()) {
    const void* src = t.host.data();
    py::gil_scoped_release nogil;
    cuda::copy_to_device(buf->p, src, t.bytes(), nullptr);
  }
  t.p = static_cast<T*>(buf->p);
  t.keep = buf;
  return t;
}

// A fresh device array for a result.
template <typename T>
Tensor<T> output(const std::vector<py::ssize_t>& shape) {
  Tensor<T> t;
  t.dims.assign(shape.begin(), shape.end());
  auto buf = std::make_shared<Dev>(t.bytes());
  t.p = static_cast<T*>(buf->p);
  t.keep = buf;
  t.on_device = true;
  return t;
}

// A result as the caller gets it: a DeviceArray where the call had a device argument, else a
// NumPy array copied back (the copy waits for the kernels).
template <typename T>
py::object result(const Tensor<T>& t, bool device) {
  if (device) {
    DeviceArray a;
    a.keep = t.keep;
    a.p = t.p;
    a.shape = t.dims;
    a.dtype = dl::DataType{DType<T>::code, DType<T>::bits, 1};
    return py::cast(std::move(a));
  }
  std::vector<py::ssize_t> shape(t.dims.begin(), t.dims.end());
  py::array_t<T> out(shape);
  T* dst = out.mutable_data();
  {
    py::gil_scoped_release nogil;
    cuda::copy_to_host(dst, t.p, t.bytes(), nullptr);
    cuda::synchronize(nullptr);
  }
  return std::move(out);
}

// An argument the kernel updated in place, as the caller gets it back: the same device array; or,
// for a host argument (never modified), the updated values as a DeviceArray where the call was on
// the device, else as a NumPy array.
template <typename T>
py::object updated(const Tensor<T>& t, bool device) {
  return t.on_device ? t.given : result(t, device);
}

template <typename... Ts>
bool any_on_device(const Tensor<Ts>&... ts) {
  return (false || ... || ts.on_device);
}

void bind_device_array(py::module_& ops);  // cuda_ops_core.cpp

}  // namespace pyb
}  // namespace gptoss
#endif
