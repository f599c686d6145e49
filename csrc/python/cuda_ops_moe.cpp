// Bindings of the CUDA router and MoE kernels (csrc/cuda/route.cu, moe.cu) on NumPy host arrays:
// check shapes and dtypes, copy to the device, run the wrapper, copy back.
#if defined(GPTOSS_WITH_CUDA)
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <string>
#include <vector>

#include "cuda/kernels.h"
#include "gptoss/error.h"
#include "python/cuda_buffers.h"

namespace py = pybind11;
using namespace gptoss;
using namespace gptoss::pyb;

namespace {

py::tuple cuda_topk_softmax(const py::array& logits_in, int k) {
  auto logits = need<float>(logits_in, "logits", {-1, -1});
  const py::ssize_t n = logits.shape(0), E = logits.shape(1);
  if (E != 32 && E != 128)
    throw py::value_error("logits must have 32 or 128 columns (experts), got " +
                          std::to_string(E));
  if (k < 1 || k > 32 || k > E) throw py::value_error("k must be in [1, min(E, 32)]");
  py::array_t<int32_t> experts({n, py::ssize_t(k)});
  py::array_t<float> weights({n, py::ssize_t(k)});
  const float* lp = logits.data();
  int32_t* ep = experts.mutable_data();
  float* wp = weights.mutable_data();
  {
    py::gil_scoped_release nogil;
    Dev dl(lp, size_t(n * E) * 4), de(size_t(n) * k * 4), dw(size_t(n) * k * 4);
    cuda::f32_topk_softmax(dl.as<const float>(), int(n), int(E), k, de.as<int32_t>(),
                           dw.as<float>(), nullptr);
    cuda::copy_to_host(ep, de.p, de.bytes, nullptr);
    cuda::copy_to_host(wp, dw.p, dw.bytes, nullptr);
    cuda::synchronize(nullptr);
  }
  return py::make_tuple(experts, weights);
}

py::array_t<float> cuda_moe(const py::array& x_in, const py::array& experts_in,
                            const py::array& weights_in, const py::array& w1b_in,
                            const py::array& w1s_in, const py::array& w1bias_in,
                            const py::array& w2b_in, const py::array& w2s_in,
                            const py::array& w2bias_in, float alpha, float limit) {
  auto w1b = need<uint8_t>(w1b_in, "w1_blocks", {-1, -1, -1, 16});
  const py::ssize_t E = w1b.shape(0), I2 = w1b.shape(1), H = w1b.shape(2) * 32, I = I2 / 2;
  if (E < 1 || H < 32 || I2 % 2 != 0 || I % 32 != 0 || I == 0)
    throw py::value_error("w1_blocks must have shape [E, 2I, H/32, 16] with I a positive "
                          "multiple of 32, got " +
                          shape_of(w1b));
  if (E > 256) throw py::value_error("w1_blocks: at most 256 experts");
  auto w1s = need<uint8_t>(w1s_in, "w1_scales", {E, I2, H / 32});
  auto w1bias = need<float>(w1bias_in, "w1_bias", {E, I2});
  auto w2b = need<uint8_t>(w2b_in, "w2_blocks", {E, H, I / 32, 16});
  auto w2s = need<uint8_t>(w2s_in, "w2_scales", {E, H, I / 32});
  auto w2bias = need<float>(w2bias_in, "w2_bias", {E, H});
  auto x = need<float>(x_in, "x", {-1, H});
  const py::ssize_t n = x.shape(0);
  const char kind = experts_in.dtype().kind();
  if (kind != 'i' && kind != 'u') throw py::value_error("experts must be an integer array");
  auto experts = need<int32_t>(py::array(experts_in.attr("astype")("int32")), "experts", {n, -1});
  const py::ssize_t k = experts.shape(1);
  if (k < 1 || k > E) throw py::value_error("experts must have between 1 and E columns");
  auto weights = need<float>(weights_in, "weights", {n, k});
  py::array_t<int64_t> ex64 = experts_in.attr("astype")("int64");
  for (py::ssize_t i = 0; i < n * k; ++i) {
    const int64_t e = ex64.data()[i];
    if (e < 0 || e >= E)
      throw py::value_error("experts holds id " + std::to_string(e) + " outside [0, " +
                            std::to_string(E) + ")");
  }
  py::array_t<float> out({n, H});
  float* op = out.mutable_data();
  {
    py::gil_scoped_release nogil;
    Dev dx(x.data(), nbytes(x)), de(experts.data(), nbytes(experts)),
        dw(weights.data(), nbytes(weights)), d1b(w1b.data(), nbytes(w1b)),
        d1s(w1s.data(), nbytes(w1s)), d1bias(w1bias.data(), nbytes(w1bias)),
        d2b(w2b.data(), nbytes(w2b)), d2s(w2s.data(), nbytes(w2s)),
        d2bias(w2bias.data(), nbytes(w2bias));
    Dev ws(cuda::moe_workspace_bytes(int(n), int(H), int(I), int(E), int(k)));
    Dev dy(size_t(n * H) * 4);
    cuda::mf4w_moe(dx.as<const float>(), int(n), int(H), int(I), int(E), int(k),
                   de.as<const int32_t>(), dw.as<const float>(), d1b.as<const uint8_t>(),
                   d1s.as<const uint8_t>(), d1bias.as<const float>(), d2b.as<const uint8_t>(),
                   d2s.as<const uint8_t>(), d2bias.as<const float>(), alpha, limit, ws.p,
                   dy.as<float>(), nullptr);
    cuda::copy_to_host(op, dy.p, dy.bytes, nullptr);
    cuda::synchronize(nullptr);
  }
  return out;
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
