// Bindings of the dense CUDA kernels (cuda/dense.cu, cuda/gemm.cu) and the CUDA sampler
// (cuda/sample.cu): check the arguments, run the launch wrapper on them (host arrays copied up and
// back, device arrays in place; python/cuda_buffers.h). For tests and benchmarks; the engine calls
// the wrappers directly on device memory.
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

py::object linear(const py::object& x_in, const py::object& w_in, const py::object& b_in,
                  Linear which) {
  need(ndim_of(w_in, "w") == 2, "w must have shape [R, K]");
  py::tuple wshape = w_in.attr("shape");
  const py::ssize_t R = wshape[0].cast<py::ssize_t>(), K = wshape[1].cast<py::ssize_t>();
  if (K < 1) throw py::value_error("w must have at least one column");
  // the kernels read w in rows padded to 16 bytes: a host w is padded on the way up, a device w
  // must already be
  const py::ssize_t ldw = (K + 7) / 8 * 8;
  py::object w_arg = w_in;
  if (!is_device_array(w_in) && ldw != K) {
    auto w_host = need<uint16_t>(py::array(py::module_::import("numpy").attr("asarray")(w_in)), "w",
                                 {-1, -1}, "uint16 (bf16 bits)");
    py::array_t<uint16_t> pad({R, ldw});
    std::memset(pad.mutable_data(), 0, size_t(R) * size_t(ldw) * 2);
    for (py::ssize_t r = 0; r < R; ++r)
      std::memcpy(pad.mutable_data() + size_t(r) * size_t(ldw), w_host.data() + size_t(r) * size_t(K),
                  size_t(K) * 2);
    w_arg = pad;
  } else if (ldw != K) {
    need(false, "w: a device w needs K (w.shape[1]) a multiple of 8, got " + std::to_string(K));
  }
  auto w = tensor<uint16_t>(w_arg, "w", {R, ldw}, "uint16 (bf16 bits)");
  auto x = tensor<float>(x_in, "x", {-1, K}, "float32");
  const py::ssize_t n = x.shape(0);
  Tensor<float> b;
  if (!b_in.is_none()) b = tensor<float>(b_in, "bias", {R}, "float32");
  const bool gemv = which == Linear::Gemv || (which == Linear::Auto && n <= 8);
  if (gemv && n > 8)
    throw py::value_error("x: cuda_bf16_gemv takes at most 8 rows, got " + std::to_string(n));
  if (!gemv && K % 32 != 0)
    throw py::value_error("w: cuda_bf16_gemm needs K (w.shape[1]) a multiple of 32, got " +
                          std::to_string(K));
  auto out = output<float>({n, R});
  {
    py::gil_scoped_release nogil;
    if (gemv)
      cuda::f32_bf16w_gemv(x.p, int(n), int(K), w.p, size_t(ldw), int(R), b.p, out.p, int(R),
                           nullptr);
    else
      cuda::f32_bf16w_gemm(x.p, int(n), int(K), w.p, size_t(ldw), int(R), b.p, out.p, int(R),
                           nullptr);
    cuda::synchronize(nullptr);
  }
  return result(out, any_on_device(x, w, b));
}

}  // namespace

void bind_cuda_dense(py::module_& ops) {
  ops.def("cuda_embed", [](const py::object& emb_in, const py::object& tokens_in) {
    auto emb = tensor<uint16_t>(emb_in, "emb", {-1, -1}, "uint16 (bf16 bits)");
    const py::ssize_t V = emb.shape(0), H = emb.shape(1);
    if (H < 1) throw py::value_error("emb must have at least one column");
    py::object tok = tokens_in;
    if (!is_device_array(tokens_in)) {
      py::array t = py::array(py::module_::import("numpy").attr("asarray")(tokens_in));
      const char kind = t.dtype().kind();
      need(kind == 'i' || kind == 'u', "tokens must be an integer array");
      tok = t.attr("astype")("int32");
    }
    auto tokens = tensor<int32_t>(tok, "tokens", {-1}, "int32");
    const py::ssize_t n = tokens.shape(0);
    const std::vector<int32_t> ids = tokens.values();
    for (py::ssize_t i = 0; i < n; ++i)
      if (ids[size_t(i)] < 0 || ids[size_t(i)] >= V)
        throw py::value_error("tokens holds id " + std::to_string(ids[size_t(i)]) +
                              " outside [0, " + std::to_string(V) + ")");
    auto out = output<float>({n, H});
    {
      py::gil_scoped_release nogil;
      cuda::embed_bf16(emb.p, tokens.p, int(n), int(H), out.p, nullptr);
      cuda::synchronize(nullptr);
    }
    return result(out, any_on_device(emb, tokens));
  }, py::arg("emb"), py::arg("tokens"),
     "emb [V, H] bf16 bits (uint16), tokens [n] -> float32 [n, H], on the device");

  ops.def("cuda_add_rmsnorm", [](const py::object& x_in, const py::object& y_in,
                                 const py::object& w_in, float eps) {
    auto x = tensor<float>(x_in, "x", {-1, -1}, "float32");
    const py::ssize_t n = x.shape(0), H = x.shape(1);
    if (H < 1) throw py::value_error("x must have at least one column");
    Tensor<float> y;
    if (!y_in.is_none()) y = tensor<float>(y_in, "y", {n, H}, "float32");
    auto w = tensor<float>(w_in, "w", {H}, "float32");
    auto out = output<float>({n, H});
    {
      py::gil_scoped_release nogil;
      cuda::f32_add_rmsnorm(x.p, y.p, w.p, int(n), int(H), eps, out.p, nullptr);
      cuda::synchronize(nullptr);
    }
    const bool dev = any_on_device(x, y, w);
    return py::make_tuple(updated(x, dev), result(out, dev));
  }, py::arg("x"), py::arg("y"), py::arg("w"), py::arg("eps") = 1e-5f,
     "x [n, H], y [n, H] or None, w [H] -> (x + y, rmsnorm(x + y) * w), on the device (a device "
     "x is updated in place to x + y, as in the engine)");

  ops.def("cuda_bf16_linear", [](const py::object& x, const py::object& w, const py::object& b) {
    return linear(x, w, b, Linear::Auto);
  }, py::arg("x"), py::arg("w"), py::arg("bias") = py::none(),
     "x [n, K] f32, w [R, K] bf16 bits -> x @ w.T + bias [n, R]: the GEMV for n <= 8, else the "
     "tensor-core GEMM (x rounded to bf16; K a multiple of 32)");
  ops.def("cuda_bf16_gemv", [](const py::object& x, const py::object& w, const py::object& b) {
    return linear(x, w, b, Linear::Gemv);
  }, py::arg("x"), py::arg("w"), py::arg("bias") = py::none(),
     "the decode GEMV: x [n <= 8, K] f32, w [R, K] bf16 bits -> [n, R]");
  ops.def("cuda_bf16_gemm", [](const py::object& x, const py::object& w, const py::object& b) {
    return linear(x, w, b, Linear::Gemm);
  }, py::arg("x"), py::arg("w"), py::arg("bias") = py::none(),
     "the tensor-core GEMM: x [n, K] f32 (rounded to bf16), w [R, K] bf16 bits, K % 32 == 0");

  ops.def("cuda_sample", [](const py::object& logits_in, const py::object& temperature,
                            const py::object& top_k, const py::object& top_p,
                            const py::object& seed, const py::object& counter) {
    const int nd = ndim_of(logits_in, "logits");
    need(nd == 1 || nd == 2, "logits must have shape [V] or [n, V]");
    auto logits = nd == 1 ? tensor<float>(logits_in, "logits", {-1}, "float32")
                          : tensor<float>(logits_in, "logits", {-1, -1}, "float32");
    const int n = nd == 1 ? 1 : int(logits.shape(0));
    auto r = pysample::parse_params(n, logits.shape(size_t(nd - 1)), temperature, top_k, top_p,
                                    seed, counter);
    r.one_row = nd == 1;
    auto params = output<int32_t>({py::ssize_t((size_t(n) * sizeof(SampleParams) + 3) / 4)});
    auto tokens = output<int32_t>(nd == 1 ? std::vector<py::ssize_t>{} : std::vector<py::ssize_t>{n});
    {
      py::gil_scoped_release nogil;
      const size_t ws = cuda::sample_workspace_bytes(r.n, r.V);
      Dev dws(ws);
      cuda::copy_to_device(params.p, r.params.data(), size_t(r.n) * sizeof(SampleParams), nullptr);
      cuda::sample_tokens(logits.p, r.n, r.V, reinterpret_cast<const SampleParams*>(params.p),
                          ws ? dws.p : nullptr, tokens.p, nullptr);
      cuda::synchronize(nullptr);
    }
    if (logits.on_device) return result(tokens, true);
    return pysample::result(r, tokens.values());
  }, py::arg("logits"), py::arg("temperature"), py::arg("top_k") = 0, py::arg("top_p") = 1.0,
     py::arg("seed") = 0, py::arg("counter") = 0,
     "the CUDA sampler: one token per row of logits ([V] -> int, [n, V] -> int32 [n]; device "
     "logits: a DeviceArray of int32 [] or [n]); the same tokens as ops.sample_reference and "
     "gptoss.sampling.sample_gumbel");
}

#endif  // GPTOSS_WITH_CUDA
