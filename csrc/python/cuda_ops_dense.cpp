// Bindings of the dense CUDA kernels (cuda/dense.cu, cuda/gemm.cu) and the CUDA sampler
// (cuda/sample.cu) on NumPy host arrays: check, copy to the device, run the launch wrapper, copy
// back. For tests and benchmarks; the engine calls the wrappers directly on device memory.
#if defined(GPTOSS_WITH_CUDA)
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstring>
#include <string>
#include <vector>

#include "cuda/kernels.h"
#include "gptoss/error.h"
#include "python/cuda_buffers.h"
#include "python/sample_args.h"

namespace py = pybind11;
using namespace gptoss;
using namespace gptoss::pyb;

namespace {

enum class Linear { Auto, Gemv, Gemm };

py::array_t<float> linear(const py::array& x_in, const py::array& w_in, const py::object& b_in,
                          Linear which) {
  auto w = need<uint16_t>(w_in, "w", {-1, -1}, "uint16 (bf16 bits)");
  const py::ssize_t R = w.shape(0), K = w.shape(1);
  if (K < 1) throw py::value_error("w must have at least one column");
  auto x = need<float>(x_in, "x", {-1, K}, "float32");
  const py::ssize_t n = x.shape(0);
  carray<float> b;
  if (!b_in.is_none()) b = need<float>(b_in.cast<py::array>(), "bias", {R}, "float32");
  const bool gemv = which == Linear::Gemv || (which == Linear::Auto && n <= 8);
  if (gemv && n > 8)
    throw py::value_error("x: cuda_bf16_gemv takes at most 8 rows, got " + std::to_string(n));
  if (!gemv && K % 32 != 0)
    throw py::value_error("w: cuda_bf16_gemm needs K (w.shape[1]) a multiple of 32, got " +
                          std::to_string(K));
  py::array_t<float> out({n, R});
  const size_t ldw = (size_t(K) + 7) / 8 * 8;  // device rows padded to 16 bytes
  const uint16_t* wp = w.data();
  const float* xp = x.data();
  const float* bp = b_in.is_none() ? nullptr : b.data();
  float* op = out.mutable_data();
  {
    py::gil_scoped_release nogil;
    Dev dw(size_t(R) * ldw * 2), dx(size_t(n) * size_t(K) * 4), dout(size_t(n) * size_t(R) * 4),
        db(size_t(R) * 4);
    if (ldw == size_t(K)) {
      cuda::copy_to_device(dw.p, wp, size_t(R) * ldw * 2, nullptr);
    } else {
      std::vector<uint16_t> pad(size_t(R) * ldw, 0);
      for (py::ssize_t r = 0; r < R; ++r)
        std::memcpy(&pad[size_t(r) * ldw], wp + size_t(r) * size_t(K), size_t(K) * 2);
      cuda::copy_to_device(dw.p, pad.data(), pad.size() * 2, nullptr);
      cuda::synchronize(nullptr);  // pad goes out of scope
    }
    cuda::copy_to_device(dx.p, xp, size_t(n) * size_t(K) * 4, nullptr);
    if (bp) cuda::copy_to_device(db.p, bp, size_t(R) * 4, nullptr);
    const float* dbias = bp ? db.as<float>() : nullptr;
    if (gemv)
      cuda::f32_bf16w_gemv(dx.as<float>(), int(n), int(K), dw.as<uint16_t>(), ldw, int(R), dbias,
                           dout.as<float>(), int(R), nullptr);
    else
      cuda::f32_bf16w_gemm(dx.as<float>(), int(n), int(K), dw.as<uint16_t>(), ldw, int(R), dbias,
                           dout.as<float>(), int(R), nullptr);
    cuda::copy_to_host(op, dout.p, size_t(n) * size_t(R) * 4, nullptr);
    cuda::synchronize(nullptr);
  }
  return out;
}

}  // namespace

void bind_cuda_dense(py::module_& ops) {
  ops.def("cuda_embed", [](const py::array& emb_in, const py::array& tokens_in) {
    auto emb = need<uint16_t>(emb_in, "emb", {-1, -1}, "uint16 (bf16 bits)");
    auto tokens = need<int32_t>(py::array(tokens_in.attr("astype")("int32")), "tokens", {-1});
    const py::ssize_t V = emb.shape(0), H = emb.shape(1), n = tokens.shape(0);
    if (H < 1) throw py::value_error("emb must have at least one column");
    for (py::ssize_t i = 0; i < n; ++i)
      if (tokens.data()[i] < 0 || tokens.data()[i] >= V)
        throw py::value_error("tokens holds id " + std::to_string(tokens.data()[i]) +
                              " outside [0, " + std::to_string(V) + ")");
    py::array_t<float> out({n, H});
    const uint16_t* ep = emb.data();
    const int32_t* tp = tokens.data();
    float* op = out.mutable_data();
    {
      py::gil_scoped_release nogil;
      Dev de(size_t(V) * size_t(H) * 2), dt(size_t(n) * 4), dx(size_t(n) * size_t(H) * 4);
      cuda::copy_to_device(de.p, ep, size_t(V) * size_t(H) * 2, nullptr);
      cuda::copy_to_device(dt.p, tp, size_t(n) * 4, nullptr);
      cuda::embed_bf16(de.as<uint16_t>(), dt.as<int32_t>(), int(n), int(H), dx.as<float>(), nullptr);
      cuda::copy_to_host(op, dx.p, size_t(n) * size_t(H) * 4, nullptr);
      cuda::synchronize(nullptr);
    }
    return out;
  }, py::arg("emb"), py::arg("tokens"),
     "emb [V, H] bf16 bits (uint16), tokens [n] -> float32 [n, H], on the device");

  ops.def("cuda_add_rmsnorm", [](const py::array& x_in, const py::object& y_in,
                                 const py::array& w_in, float eps) {
    auto x = need<float>(x_in, "x", {-1, -1}, "float32");
    const py::ssize_t n = x.shape(0), H = x.shape(1);
    if (H < 1) throw py::value_error("x must have at least one column");
    carray<float> y;
    if (!y_in.is_none()) y = need<float>(y_in.cast<py::array>(), "y", {n, H}, "float32");
    auto w = need<float>(w_in, "w", {H}, "float32");
    py::array_t<float> xo({n, H}), out({n, H});
    const size_t bytes = size_t(n) * size_t(H) * 4;
    const float* xp = x.data();
    const float* yp = y_in.is_none() ? nullptr : y.data();
    const float* wp = w.data();
    float* xop = xo.mutable_data();
    float* op = out.mutable_data();
    {
      py::gil_scoped_release nogil;
      Dev dx(bytes), dy(bytes), dw(size_t(H) * 4), dout(bytes);
      cuda::copy_to_device(dx.p, xp, bytes, nullptr);
      if (yp) cuda::copy_to_device(dy.p, yp, bytes, nullptr);
      cuda::copy_to_device(dw.p, wp, size_t(H) * 4, nullptr);
      cuda::f32_add_rmsnorm(dx.as<float>(), yp ? dy.as<float>() : nullptr, dw.as<float>(), int(n),
                            int(H), eps, dout.as<float>(), nullptr);
      cuda::copy_to_host(xop, dx.p, bytes, nullptr);
      cuda::copy_to_host(op, dout.p, bytes, nullptr);
      cuda::synchronize(nullptr);
    }
    return py::make_tuple(xo, out);
  }, py::arg("x"), py::arg("y"), py::arg("w"), py::arg("eps") = 1e-5f,
     "x [n, H], y [n, H] or None, w [H] -> (x + y, rmsnorm(x + y) * w), on the device");

  ops.def("cuda_bf16_linear", [](const py::array& x, const py::array& w, const py::object& b) {
    return linear(x, w, b, Linear::Auto);
  }, py::arg("x"), py::arg("w"), py::arg("bias") = py::none(),
     "x [n, K] f32, w [R, K] bf16 bits -> x @ w.T + bias [n, R]: the GEMV for n <= 8, else the "
     "tensor-core GEMM (x rounded to bf16; K a multiple of 32)");
  ops.def("cuda_bf16_gemv", [](const py::array& x, const py::array& w, const py::object& b) {
    return linear(x, w, b, Linear::Gemv);
  }, py::arg("x"), py::arg("w"), py::arg("bias") = py::none(),
     "the decode GEMV: x [n <= 8, K] f32, w [R, K] bf16 bits -> [n, R]");
  ops.def("cuda_bf16_gemm", [](const py::array& x, const py::array& w, const py::object& b) {
    return linear(x, w, b, Linear::Gemm);
  }, py::arg("x"), py::arg("w"), py::arg("bias") = py::none(),
     "the tensor-core GEMM: x [n, K] f32 (rounded to bf16), w [R, K] bf16 bits, K % 32 == 0");

  ops.def("cuda_sample", [](const py::array& logits, const py::object& temperature,
                            const py::object& top_k, const py::object& top_p,
                            const py::object& seed, const py::object& counter) {
    auto r = pysample::parse(logits, temperature, top_k, top_p, seed, counter);
    std::vector<int32_t> tokens(size_t(r.n));
    const float* lp = r.logits.data();
    {
      py::gil_scoped_release nogil;
      const size_t lb = size_t(r.n) * size_t(r.V) * 4;
      const size_t ws = cuda::sample_workspace_bytes(r.n, r.V);
      Dev dl(lb), dp(size_t(r.n) * sizeof(SampleParams)), dt(size_t(r.n) * 4), dws(ws);
      cuda::copy_to_device(dl.p, lp, lb, nullptr);
      cuda::copy_to_device(dp.p, r.params.data(), size_t(r.n) * sizeof(SampleParams), nullptr);
      cuda::sample_tokens(dl.as<float>(), r.n, r.V, dp.as<SampleParams>(), ws ? dws.p : nullptr,
                          dt.as<int32_t>(), nullptr);
      cuda::copy_to_host(tokens.data(), dt.p, size_t(r.n) * 4, nullptr);
      cuda::synchronize(nullptr);
    }
    return pysample::result(r, tokens);
  }, py::arg("logits"), py::arg("temperature"), py::arg("top_k") = 0, py::arg("top_p") = 1.0,
     py::arg("seed") = 0, py::arg("counter") = 0,
     "the CUDA sampler: one token per row of logits ([V] -> int, [n, V] -> int32 [n]); the same "
     "tokens as ops.sample_reference and gptoss.sampling.sample_gumbel");
}

#endif  // GPTOSS_WITH_CUDA
