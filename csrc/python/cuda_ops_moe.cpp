// Bindings of the CUDA router and MoE kernels (csrc/cuda/route.cu, moe.cu): check shapes, dtypes
// and expert ids, run the wrapper (host arrays copied up and back, device arrays in place;
// python/cuda_buffers.h).
#if defined(GPTOSS_WITH_CUDA)
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <climits>
#include <string>
#include <vector>

#include "cuda/kernels.h"
#include "gptoss/error.h"
#include "python/cuda_buffers.h"

namespace py = pybind11;
using namespace gptoss;
using namespace gptoss::pyb;

namespace {

// An integer index argument as int32 on the device: a host array of any integer dtype is
// converted; a device array must be int32 already.
Tensor<int32_t> index_tensor(const py::object& o, const char* name,
                             const std::vector<py::ssize_t>& shape) {
  py::object v = o;
  if (!is_device_array(o)) {
    py::array a = py::array(py::module_::import("numpy").attr("asarray")(o));
    const char kind = a.dtype().kind();
    need(kind == 'i' || kind == 'u', std::string(name) + " must be an integer array");
    // ids past int32 must not wrap into range: check before narrowing
    py::array_t<int64_t> wide = a.attr("astype")("int64");
    for (py::ssize_t i = 0; i < wide.size(); ++i)
      need(wide.data()[i] >= INT32_MIN && wide.data()[i] <= INT32_MAX,
           std::string(name) + " holds " + std::to_string(wide.data()[i]) + ", past int32");
    v = a.attr("astype")("int32");
  }
  return tensor<int32_t>(v, name, shape, "int32");
}

py::tuple cuda_topk_softmax(const py::object& logits_in, int k) {
  auto logits = tensor<float>(logits_in, "logits", {-1, -1});
  const py::ssize_t n = logits.shape(0), E = logits.shape(1);
  if (E != 32 && E != 128)
    throw py::value_error("logits must have 32 or 128 columns (experts), got " +
                          std::to_string(E));
  if (k < 1 || k > 32 || k > E) throw py::value_error("k must be in [1, min(E, 32)]");
  auto experts = output<int32_t>({n, py::ssize_t(k)});
  auto weights = output<float>({n, py::ssize_t(k)});
  {
    py::gil_scoped_release nogil;
    cuda::f32_topk_softmax(logits.p, int(n), int(E), k, experts.p, weights.p, nullptr);
    cuda::synchronize(nullptr);
  }
  return py::make_tuple(result(experts, logits.on_device), result(weights, logits.on_device));
}

py::object cuda_moe(const py::object& x_in, const py::object& experts_in,
                    const py::object& weights_in, const py::object& w1b_in,
                    const py::object& w1s_in, const py::object& w1bias_in,
                    const py::object& w2b_in, const py::object& w2s_in,
                    const py::object& w2bias_in, float alpha, float limit) {
  auto w1b = tensor<uint8_t>(w1b_in, "w1_blocks", {-1, -1, -1, 16});
  const py::ssize_t E = w1b.shape(0), I2 = w1b.shape(1), H = w1b.shape(2) * 32, I = I2 / 2;
  if (E < 1 || H < 32 || I2 % 2 != 0 || I % 32 != 0 || I == 0)
    throw py::value_error("w1_blocks must have shape [E, 2I, H/32, 16] with I a positive "
                          "multiple of 32, got " +
                          shape_str({E, I2, H / 32, 16}));
  if (E > 256) throw py::value_error("w1_blocks: at most 256 experts");
  auto w1s = tensor<uint8_t>(w1s_in, "w1_scales", {E, I2, H / 32});
  auto w1bias = tensor<float>(w1bias_in, "w1_bias", {E, I2});
  auto w2b = tensor<uint8_t>(w2b_in, "w2_blocks", {E, H, I / 32, 16});
  auto w2s = tensor<uint8_t>(w2s_in, "w2_scales", {E, H, I / 32});
  auto w2bias = tensor<float>(w2bias_in, "w2_bias", {E, H});
  auto x = tensor<float>(x_in, "x", {-1, H});
  const py::ssize_t n = x.shape(0);
  auto experts = index_tensor(experts_in, "experts", {n, -1});
  const py::ssize_t k = experts.shape(1);
  if (k < 1 || k > E) throw py::value_error("experts must have between 1 and E columns");
  auto weights = tensor<float>(weights_in, "weights", {n, k});
  const std::vector<int32_t> ids = experts.values();
  for (int32_t e : ids)
    if (e < 0 || e >= E)
      throw py::value_error("experts holds id " + std::to_string(e) + " outside [0, " +
                            std::to_string(E) + ")");
  auto out = output<float>({n, H});
  {
    py::gil_scoped_release nogil;
    Dev ws(cuda::moe_workspace_bytes(int(n), int(H), int(I), int(E), int(k)));
    cuda::mf4w_moe(x.p, int(n), int(H), int(I), int(E), int(k), experts.p, weights.p, w1b.p,
                   w1s.p, w1bias.p, w2b.p, w2s.p, w2bias.p, alpha, limit, ws.p, out.p, nullptr);
    cuda::synchronize(nullptr);
  }
  return result(out, any_on_device(x, experts, weights, w1b, w1s, w1bias, w2b, w2s, w2bias));
}

}  // namespace

void bind_cuda_moe(py::module_& ops) {
  ops.def("cuda_topk_softmax", &cuda_topk_softmax, py::arg("logits"), py::arg("k") = 4,
          "on the device: router logits [n, E] float32 (E = 32 or 128) -> (experts [n, k] int32, "
          "weights [n, k] float32): the k largest (ties: lower index first), softmax over them");
  ops.def("cuda_moe", &cuda_moe, py::arg("x"), py::arg("experts"), py::arg("weights"),
          py::arg("w1_blocks"), py::arg("w1_scales"), py::arg("w1_bias"), py::arg("w2_blocks"),
          py::arg("w2_scales"), py::arg("w2_bias"), py::arg("alpha") = 1.702f,
          py::arg("limit") = 7.0f,
          "on the device: x [n, H] float32, experts [n, k] int, weights [n, k] float32, W1 "
          "[E, 2I, H/32, 16] u8 + [E, 2I, H/32] u8 + bias [E, 2I] float32, W2 [E, H, I/32, 16] + "
          "[E, H, I/32] + bias [E, H] -> [n, H]. n <= 8: float32 GEMVs; larger n: tokens grouped "
          "by expert and bf16 tensor-core GEMMs (x and the SwiGLU output rounded to bf16)");
}
#endif
