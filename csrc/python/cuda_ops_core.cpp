// Bindings of the CUDA layer's own pieces: device arrays (ops.DeviceArray, ops.to_device, DLPack
// export), MXFP4 -> bf16, the self-test kernels of the emulation (and, on a GPU, of the
// emulation's fidelity), and event timing.
#if defined(GPTOSS_WITH_CUDA)
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <string>

#include "cuda/kernels.h"
#include "cuda/selftest.h"
#include "gptoss/error.h"
#include "python/cuda_buffers.h"

namespace py = pybind11;
using namespace gptoss;
using namespace gptoss::pyb;

namespace {

// What a DLPack capsule of a DeviceArray owns: the tensor description, its shape, and a share of
// the memory (so the consumer's view outlives the DeviceArray if it must).
struct Export {
  dl::ManagedTensor mt;  // first: the deleter gets a pointer to it
  std::vector<int64_t> shape;
  std::shared_ptr<void> keep;
};

void export_deleter(dl::ManagedTensor* m) { delete reinterpret_cast<Export*>(m); }

py::dtype numpy_dtype(dl::DataType t) {
  const char* c = t.code == dl::kFloat ? "f" : t.code == dl::kInt ? "i" : "u";
  return py::dtype(std::string(c) + std::to_string(t.bits / 8));
}

dl::DataType dl_dtype_of(const py::dtype& d, const char* name) {
  const char k = d.kind();
  const int bits = int(d.itemsize()) * 8;
  if ((k == 'f' && bits == 32) || (k == 'i' && bits == 32) || (k == 'u' && (bits == 8 || bits == 16)))
    return dl::DataType{uint8_t(k == 'f' ? dl::kFloat : k == 'i' ? dl::kInt : dl::kUInt),
                        uint8_t(bits), 1};
  throw py::value_error(std::string(name) + ": the CUDA kernels take float32, int32, uint16 (bf16 "
                        "bits) and uint8 arrays, got " + py::str(d).cast<std::string>());
}

py::array to_host(const DeviceArray& a) {
  std::vector<py::ssize_t> shape(a.shape.begin(), a.shape.end());
  py::array out(numpy_dtype(a.dtype), shape);
  void* dst = out.mutable_data();
  {
    py::gil_scoped_release nogil;
    cuda::copy_to_host(dst, a.p, a.nbytes(), nullptr);
    cuda::synchronize(nullptr);
  }
  return out;
}

}  // namespace

void gptoss::pyb::bind_device_array(py::module_& ops) {
  py::class_<DeviceArray>(ops, "DeviceArray",
                          "An array in device memory (under emulation: host memory standing in "
                          "for it). The cuda_* functions take it, or any CUDA array exporting "
                          "DLPack, in place of a NumPy array and then return DeviceArrays; "
                          "numpy() copies it back; it exports DLPack itself (torch.from_dlpack, "
                          "cupy.from_dlpack; under emulation numpy.from_dlpack)")
      .def_property_readonly("shape", [](const DeviceArray& a) {
        py::tuple t(a.shape.size());
        for (size_t i = 0; i < a.shape.size(); ++i) t[i] = py::int_(a.shape[i]);
        return t;
      })
      .def_property_readonly("dtype", [](const DeviceArray& a) { return numpy_dtype(a.dtype); })
      .def_property_readonly("nbytes", &DeviceArray::nbytes)
      .def("numpy", &to_host, "a NumPy copy (waits for the kernels that write it)")
      .def("__array__", [](const DeviceArray& a, const py::object& dtype, const py::object&) {
        py::array h = to_host(a);
        return dtype.is_none() ? h : py::array(h.attr("astype")(dtype));
      }, py::arg("dtype") = py::none(), py::arg("copy") = py::none())
      .def("__dlpack_device__", [](const DeviceArray&) {
        // emulated device memory is host memory: say so, so NumPy can view it
        return py::make_tuple(cuda::emulated() ? int(dl::kCPU) : int(dl::kCUDA),
                              cuda::emulated() ? 0 : cuda::current_device());
      })
      .def("__dlpack__", [](const DeviceArray& a, const py::object& stream,
                            const py::object& max_version, const py::object& dl_device,
                            const py::object& copy) {
        (void)stream;  // written on the legacy default stream, which orders every blocking stream
        (void)max_version;  // the unversioned capsule is what this producer gives
        if (!copy.is_none() && copy.cast<bool>())
          throw py::buffer_error("DeviceArray.__dlpack__: copy=True is not supported; use numpy()");
        if (!dl_device.is_none()) {
          py::tuple d = dl_device;
          const int want = cuda::emulated() ? int(dl::kCPU) : int(dl::kCUDA);
          if (d[0].cast<int>() != want)
            throw py::buffer_error("DeviceArray.__dlpack__: cannot export to device type " +
                                   std::to_string(d[0].cast<int>()));
        }
        {
          py::gil_scoped_release nogil;
          cuda::synchronize(nullptr);
        }
        auto* e = new Export();
        e->shape = a.shape;
        e->keep = a.keep;
        dl::Tensor& t = e->mt.dl_tensor;
        t.data = a.p;
        t.device = dl::Device{cuda::emulated() ? int32_t(dl::kCPU) : int32_t(dl::kCUDA),
                              cuda::emulated() ? 0 : int32_t(cuda::current_device())};
        t.ndim = int32_t(e->shape.size());
        t.dtype = a.dtype;
        t.shape = e->shape.data();
        t.strides = nullptr;
        t.byte_offset = 0;
        e->mt.manager_ctx = e;
        e->mt.deleter = &export_deleter;
        PyObject* cap = PyCapsule_New(&e->mt, "dltensor", &dl_capsule_free);
        if (!cap) {
          delete e;
          throw py::error_already_set();
        }
        return py::reinterpret_steal<py::object>(cap);
      }, py::kw_only(), py::arg("stream") = py::none(), py::arg("max_version") = py::none(),
         py::arg("dl_device") = py::none(), py::arg("copy") = py::none())
      .def("__repr__", [](const DeviceArray& a) {
        std::vector<py::ssize_t> s(a.shape.begin(), a.shape.end());
        return "DeviceArray(shape=" + shape_str(s) + ", dtype=" +
               py::str(numpy_dtype(a.dtype)).cast<std::string>() +
               (cuda::emulated() ? ", emulated)" : ")");
      });

  ops.def("to_device", [](const py::object& o) {
    if (py::isinstance<DeviceArray>(o)) return o;
    py::array arr = py::array(py::module_::import("numpy").attr("ascontiguousarray")(o));
    DeviceArray a;
    a.dtype = dl_dtype_of(arr.dtype(), "array");
    a.shape.assign(arr.shape(), arr.shape() + arr.ndim());
    auto buf = std::make_shared<Dev>(a.nbytes());
    const void* src = arr.data();
    {
      py::gil_scoped_release nogil;
      cuda::copy_to_device(buf->p, src, a.nbytes(), nullptr);
      cuda::synchronize(nullptr);
    }
    a.p = buf->p;
    a.keep = buf;
    return py::cast(std::move(a));
  }, py::arg("array"),
     "a device copy of a host array (float32, int32, uint16 bf16 bits or uint8) for the cuda_* "
     "functions");
}

void bind_cuda_core(py::module_& ops) {
  bind_device_array(ops);

  ops.def("cuda_mxfp4_dequantize", [](const py::object& blocks_in, const py::object& scales_in) {
    auto blocks = tensor<uint8_t>(blocks_in, "blocks", {-1, -1, 16});
    auto scales = tensor<uint8_t>(scales_in, "scales", {blocks.shape(0), blocks.shape(1)});
    const size_t rows = size_t(blocks.shape(0)), nb = size_t(blocks.shape(1));
    auto out = output<uint16_t>({blocks.shape(0), blocks.shape(1) * 32});
    {
      py::gil_scoped_release nogil;
      cuda::bf16_mf4_dequant(blocks.p, scales.p, rows, nb, out.p, nullptr);
      cuda::synchronize(nullptr);
    }
    return result(out, any_on_device(blocks, scales));
  }, py::arg("blocks"), py::arg("scales"),
     "blocks [R, nb, 16] u8, scales [R, nb] u8 -> bf16 bits [R, nb * 32] (uint16), on the device");

  ops.def("cuda_bench_mxfp4_dequantize", [](size_t rows, size_t nb, int iters) {
    py::gil_scoped_release nogil;
    const size_t n = rows * nb;
    Dev b(n * 16), s(n), o(n * 64);
    cuda::memset_device(b.p, 0x5a, n * 16, nullptr);
    cuda::memset_device(s.p, 120, n, nullptr);
    return cuda::time_ms([&](cuda::Stream st) {
      cuda::bf16_mf4_dequant(static_cast<const uint8_t*>(b.p), static_cast<const uint8_t*>(s.p),
                             rows, nb, static_cast<uint16_t*>(o.p), st);
    }, iters, nullptr);
  }, py::arg("rows"), py::arg("nb"), py::arg("iters") = 20,
     "median device milliseconds of the MXFP4 -> bf16 kernel on [rows, nb] blocks");

  ops.def("cuda_selftest_warp", [](const py::array& in_) {
    auto in = need<int32_t>(in_, "x", {64});
    py::array_t<int32_t> out({64, 8});
    cuda::selftest_warp(in.data(), out.mutable_data());
    return out;
  }, py::arg("x"), "x [64] int32 -> [64, 8] what each thread saw (see csrc/cuda/selftest.h)");
  ops.def("cuda_selftest_mma", [](const py::array& a_, const py::array& b_) {
    auto a = need<uint16_t>(a_, "a", {16, 16});
    auto b = need<uint16_t>(b_, "b", {16, 8});
    py::array_t<float> d({16, 8});
    cuda::selftest_mma(a.data(), b.data(), d.mutable_data());
    return d;
  }, py::arg("a"), py::arg("b"), "one mma.m16n8k16: a [16, 16] bf16, b [16, 8] bf16 -> [16, 8]");
  ops.def("cuda_selftest_mma_ldmatrix", [](const py::array& a_, const py::array& w_) {
    auto a = need<uint16_t>(a_, "a", {16, 16});
    auto w = need<uint16_t>(w_, "w", {8, 16});
    py::array_t<float> d({16, 8});
    cuda::selftest_mma_ldmatrix(a.data(), w.data(), d.mutable_data());
    return d;
  }, py::arg("a"), py::arg("w"), "cp.async + ldmatrix + mma: a [16, 16], w [8, 16] -> a @ w.T");
  ops.def("cuda_selftest_ldmatrix", [](const py::array& m_, bool trans) {
    auto m = need<uint16_t>(m_, "m", {4, 8, 8});
    py::array_t<uint32_t> out({32, 4});
    cuda::selftest_ldmatrix(m.data(), trans, out.mutable_data());
    return out;
  }, py::arg("m"), py::arg("trans") = false, "ldmatrix.x4: m [4, 8, 8] bf16 -> [32 lanes, 4]");
  ops.def("cuda_selftest_cp_async", [](const py::array& in_, int partial) {
    auto in = need<uint8_t>(in_, "x", {-1, 16});
    py::array_t<uint8_t> out({in.shape(0), py::ssize_t(16)});
    cuda::selftest_cp_async(in.data(), int(in.shape(0)), partial, out.mutable_data());
    return out;
  }, py::arg("x"), py::arg("partial") = 0, "cp.async of x [n <= 64, 16] u8 in two groups");
  ops.def("cuda_selftest_bad", [](const std::string& which) {
    float out = 0;
    {
      py::gil_scoped_release nogil;
      cuda::selftest_bad(which, &out);
    }
    return out;
  }, py::arg("which"), "a kernel that breaks a rule on purpose (see csrc/cuda/selftest.h)");
}
#endif
