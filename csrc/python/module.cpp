// gptoss._C: the bindings (layer 3). They check shapes and dtypes, turn gptoss::Error into Python
// exceptions, release the GIL around long calls, and pass NumPy arrays without copies.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <string>
#include <vector>

#include "cpu/cpu_features.h"
#include "cpu/kernels.h"
#include "gptoss/error.h"
#if defined(GPTOSS_WITH_CUDA)
#include "cuda/kernels.h"
#endif

namespace py = pybind11;
using namespace gptoss;

namespace {

template <typename T>
using carray = py::array_t<T, py::array::c_style | py::array::forcecast>;

void need(bool cond, const std::string& msg) {
  if (!cond) throw py::value_error(msg);
}

std::string shape_str(const py::array& a) {
  std::string s = "[";
  for (py::ssize_t i = 0; i < a.ndim(); ++i) s += (i ? ", " : "") + std::to_string(a.shape(i));
  return s + "]";
}

py::array_t<float> mxfp4_dequantize(const py::array& blocks_in, const py::array& scales_in) {
  need(blocks_in.dtype().is(py::dtype::of<uint8_t>()), "blocks must be uint8");
  need(scales_in.dtype().is(py::dtype::of<uint8_t>()), "scales must be uint8");
  auto blocks = carray<uint8_t>::ensure(blocks_in);
  auto scales = carray<uint8_t>::ensure(scales_in);
  need(blocks.ndim() >= 2 && blocks.shape(blocks.ndim() - 1) == 16,
       "blocks must have shape [..., nb, 16], got " + shape_str(blocks));
  need(scales.ndim() == blocks.ndim() - 1, "scales must have shape [..., nb] matching blocks " +
                                               shape_str(blocks) + ", got " + shape_str(scales));
  for (py::ssize_t i = 0; i < scales.ndim(); ++i)
    need(scales.shape(i) == blocks.shape(i), "scales " + shape_str(scales) +
                                                 " does not match blocks " + shape_str(blocks));
  const size_t nb = size_t(blocks.shape(blocks.ndim() - 2));
  const size_t rows = nb ? size_t(scales.size()) / nb : 0;
  std::vector<py::ssize_t> shape(blocks.shape(), blocks.shape() + blocks.ndim() - 2);
  shape.push_back(py::ssize_t(nb * 32));
  py::array_t<float> out(shape);
  const uint8_t* b = blocks.data();
  const uint8_t* s = scales.data();
  float* o = out.mutable_data();
  {
    py::gil_scoped_release nogil;
    cpu::f32_mf4_dequant(b, s, rows, nb, o);
  }
  return out;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "gptoss native engine and kernels";
  py::register_exception<Error>(m, "NativeError", PyExc_RuntimeError);

  m.def("build_info", [] {
    py::dict d;
#if defined(GPTOSS_WITH_CUDA)
    d["cuda_compiled"] = true;
    d["cuda_kernels"] = std::vector<std::string>{"bf16_mf4_dequant"};
#else
    d["cuda_compiled"] = false;
    d["cuda_kernels"] = std::vector<std::string>{};
#endif
    d["simd"] = cpu::isa_name(cpu::active_isa());
    d["simd_best"] = cpu::isa_name(cpu::detect_isa());
    d["threads"] = cpu::num_threads();
    return d;
  });
  m.def("cuda_device_count", []() -> std::pair<int, std::string> {
#if defined(GPTOSS_WITH_CUDA)
    std::string err;
    int n = cuda::device_count(&err);
    return {n, err};
#else
    return {0, "built without CUDA"};
#endif
  });
#if defined(GPTOSS_WITH_CUDA)
  m.def("cuda_device_name", &cuda::device_name, py::arg("device") = 0);
#endif
  m.def("set_num_threads", &cpu::set_num_threads, py::arg("n"));
  m.def("num_threads", &cpu::num_threads);

  py::module_ ops = m.def_submodule("ops", "single kernels, NumPy arrays in and out");
  ops.def("mxfp4_dequantize", &mxfp4_dequantize, py::arg("blocks"), py::arg("scales"),
          "blocks [..., nb, 16] uint8, scales [..., nb] uint8 -> float32 [..., nb * 32]");
}
