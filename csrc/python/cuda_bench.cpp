// Device-resident timing of each CUDA kernel family at the real shapes of gpt-oss (H = 2880,
// 64 query heads over 8 kv heads, head dim 64, I = 2880, 4 of E experts, vocab 201088), for
// bench/bench_cuda_kernels.py and bench/gpu_check.py. Inputs are random and live on the device;
// each case reports the median milliseconds, the bytes it must read and the FLOPs it does, so the
// caller prints GB/s and TFLOP/s. Meant for a GPU; under emulation only tiny shapes are sensible.
#if defined(GPTOSS_WITH_CUDA)
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "common/numeric.h"
#include "cuda/kernels.h"
#include "gptoss/error.h"
#include "python/cuda_buffers.h"

namespace py = pybind11;
using namespace gptoss;
using gptoss::pyb::Dev;

namespace {

// fills a device buffer from a host pattern generated in slices (bounded host memory)
void fill_bf16(const Dev& d, float scale, uint64_t seed) {
  std::mt19937_64 g(seed);
  std::normal_distribution<float> nd(0.0f, scale);
  const size_t n = d.bytes / 2, slice = size_t(1) << 22;
  std::vector<uint16_t> h(std::min(n, slice));
  for (size_t off = 0; off < n; off += slice) {
    const size_t m = std::min(slice, n - off);
    for (size_t i = 0; i < m; ++i) h[i] = f32_to_bf16(nd(g));
    cuda::copy_to_device(d.as<uint16_t>() + off, h.data(), m * 2, nullptr);
    cuda::synchronize(nullptr);
  }
}
void fill_bytes(const Dev& d, int lo, int hi, uint64_t seed) {
  std::mt19937_64 g(seed);
  std::uniform_int_distribution<int> u(lo, hi);
  const size_t slice = size_t(1) << 24;
  std::vector<uint8_t> h(std::min(d.bytes, slice));
  for (size_t off = 0; off < d.bytes; off += slice) {
    const size_t m = std::min(slice, d.bytes - off);
    for (size_t i = 0; i < m; ++i) h[i] = uint8_t(u(g));
    cuda::copy_to_device(d.as<uint8_t>() + off, h.data(), m, nullptr);
    cuda::synchronize(nullptr);
  }
}
void fill_f32(const Dev& d, float scale, uint64_t seed) {
  std::mt19937_64 g(seed);
  std::normal_distribution<float> nd(0.0f, scale);
  std::vector<float> h(d.bytes / 4);
  for (auto& v : h) v = nd(g);
  cuda::copy_to_device(d.p, h.data(), d.bytes, nullptr);
  cuda::synchronize(nullptr);
}
void fill_i32(const Dev& d, const std::vector<int32_t>& v) {
  cuda::copy_to_device(d.p, v.data(), v.size() * 4, nullptr);
  cuda::synchronize(nullptr);
}

py::dict result(double ms, double bytes, double flops) {
  py::dict d;
  d["ms"] = ms;
  d["bytes"] = bytes;
  d["flops"] = flops;
  d["gb_s"] = bytes / (ms * 1e6);
  d["tflop_s"] = flops / (ms * 1e9);
  return d;
}

py::dict bench(const std::string& name, int n, int E, int ctx, int iters) {
  const int H = 2880, I = 2880, Hq = 64, Hkv = 8, d = 64, V = 201088, K = 4;
  GPTOSS_CHECK(n >= 1 && iters >= 1, "cuda_bench: n and iters must be >= 1");
  if (name == "copy") {  // device-to-device copy: the bandwidth the others are judged against
    const size_t bytes = size_t(1) << 30;
    Dev a(bytes), b(bytes);
    fill_bytes(a, 0, 255, 1);
    const double ms = cuda::time_ms([&](cuda::Stream s) {
      cuda::device_copy(b.p, a.p, bytes, s);
    }, iters, nullptr);
    return result(ms, 2.0 * bytes, 0);
  }
  if (name == "gemv" || name == "gemm") {  // rows R given by E (5120 qkv, 2880 out, 201088 unembed)
    const int R = E;
    Dev W(size_t(R) * H * 2), x(size_t(n) * H * 4), b(size_t(R) * 4), o(size_t(n) * R * 4);
    fill_bf16(W, 0.02f, 2);
    fill_f32(x, 1.0f, 3);
    fill_f32(b, 0.1f, 4);
    const double ms = cuda::time_ms([&](cuda::Stream s) {
      if (name == "gemv")
        cuda::f32_bf16w_gemv(x.as<float>(), n, H, W.as<uint16_t>(), H, R, b.as<float>(),
                             o.as<float>(), R, s);
      else
        cuda::f32_bf16w_gemm(x.as<float>(), n, H, W.as<uint16_t>(), H, R, b.as<float>(),
                             o.as<float>(), R, s);
    }, iters, nullptr);
    return result(ms, double(R) * H * 2 + double(n) * H * 4, 2.0 * n * R * H);
  }
  if (name == "moe") {
    const size_t w1b = size_t(E) * 2 * I * (H / 32) * 16, w1s = size_t(E) * 2 * I * (H / 32);
    const size_t w2b = size_t(E) * H * (I / 32) * 16, w2s = size_t(E) * H * (I / 32);
    Dev B1(w1b), S1(w1s), B2(w2b), S2(w2s), b1(size_t(E) * 2 * I * 4), b2(size_t(E) * H * 4);
    fill_bytes(B1, 0, 255, 5);
    fill_bytes(S1, 118, 122, 6);
    fill_bytes(B2, 0, 255, 7);
    fill_bytes(S2, 118, 122, 8);
    fill_f32(b1, 0.1f, 9);
    fill_f32(b2, 0.1f, 10);
    Dev x(size_t(n) * H * 4), ex(size_t(n) * K * 4), w(size_t(n) * K * 4), y(size_t(n) * H * 4);
    fill_f32(x, 1.0f, 11);
    std::vector<int32_t> ids(size_t(n) * K);
    std::mt19937 g(12);
    for (int t = 0; t < n; ++t) {
      std::vector<int32_t> perm(static_cast<size_t>(E));
      for (int e = 0; e < E; ++e) perm[size_t(e)] = e;
      std::shuffle(perm.begin(), perm.end(), g);
      for (int j = 0; j < K; ++j) ids[size_t(t) * K + j] = perm[size_t(j)];
    }
    fill_i32(ex, ids);
    std::vector<float> wt(size_t(n) * K, 0.25f);
    cuda::copy_to_device(w.p, wt.data(), wt.size() * 4, nullptr);
    Dev ws(cuda::moe_workspace_bytes(n, H, I, E, K));
    const double ms = cuda::time_ms([&](cuda::Stream s) {
      cuda::mf4w_moe(x.as<float>(), n, H, I, E, K, ex.as<int32_t>(), w.as<float>(),
                     B1.as<uint8_t>(), S1.as<uint8_t>(), b1.as<float>(), B2.as<uint8_t>(),
                     S2.as<uint8_t>(), b2.as<float>(), 1.702f, 7.0f, ws.p, y.as<float>(), s);
    }, iters, nullptr);
    // bytes: the distinct experts the n tokens route to (all of them once n is large)
    std::vector<bool> used(static_cast<size_t>(E));
    for (int32_t e : ids) used[size_t(e)] = true;
    double ne = 0;
    for (bool u : used) ne += u;
    const double per_expert = double(2 * I) * (H / 32) * 17 + double(H) * (I / 32) * 17;
    return result(ms, ne * per_expert, 2.0 * n * K * (2.0 * I * H + double(H) * I));
  }
  if (name == "attention") {  // n queries of one sequence at the end of a ctx-key context
    GPTOSS_CHECK(ctx >= n, "cuda_bench attention: ctx must be >= n");
    const int page = 256, pages = (ctx + page - 1) / page;
    Dev k(size_t(pages) * page * Hkv * d * 2), v(size_t(pages) * page * Hkv * d * 2);
    fill_bf16(k, 1.0f, 13);
    fill_bf16(v, 1.0f, 14);
    Dev q(size_t(n) * (Hq + 2 * Hkv) * d * 4), sinks(size_t(Hq) * 4), out(size_t(n) * Hq * d * 4);
    fill_f32(q, 1.0f, 15);
    fill_f32(sinks, 1.0f, 16);
    std::vector<int32_t> pt(static_cast<size_t>(pages)), pos(static_cast<size_t>(n)),
        slot(static_cast<size_t>(n), 0);
    for (int p = 0; p < pages; ++p) pt[size_t(p)] = p;
    for (int i = 0; i < n; ++i) pos[size_t(i)] = ctx - n + i;
    Dev dpt(pt.size() * 4), dpos(pos.size() * 4), dslot(slot.size() * 4);
    fill_i32(dpt, pt);
    fill_i32(dpos, pos);
    fill_i32(dslot, slot);
    cuda::KVLayer kv;
    kv.k = k.as<uint16_t>();
    kv.v = v.as<uint16_t>();
    kv.page_table = dpt.as<int32_t>();
    kv.max_pages = pages;
    kv.page = page;
    Dev ws(cuda::attention_workspace_bytes(n, Hq, d, ctx));
    const double ms = cuda::time_ms([&](cuda::Stream s) {
      cuda::f32_bf16kv_attention(q.as<float>(), (Hq + 2 * Hkv) * d, n, dpos.as<int32_t>(),
                                 dslot.as<int32_t>(), kv, Hq, Hkv, d, 0, sinks.as<float>(), ctx,
                                 ws.p, out.as<float>(), s);
    }, iters, nullptr);
    // keys each query sees: ctx - n + i + 1
    const double keys = double(n) * (ctx - n) + double(n) * (n + 1) / 2;
    return result(ms, double(ctx) * Hkv * d * 2 * 2, 4.0 * keys * Hq * d);
  }
  if (name == "sample") {
    Dev lg(size_t(n) * V * 4), tok(size_t(n) * 4), prm(size_t(n) * sizeof(cuda::SampleParams));
    fill_f32(lg, 3.0f, 17);
    std::vector<cuda::SampleParams> p(static_cast<size_t>(n));
    for (auto& q : p) {
      q.temperature = E > 0 ? 0.8f : 0.0f;  // E > 0: sampled with top_p 0.9, else greedy
      q.top_p = E > 0 ? 0.9f : 1.0f;
    }
    cuda::copy_to_device(prm.p, p.data(), prm.bytes, nullptr);
    Dev ws(cuda::sample_workspace_bytes(n, V));
    const double ms = cuda::time_ms([&](cuda::Stream s) {
      cuda::sample_tokens(lg.as<float>(), n, V, prm.as<cuda::SampleParams>(), ws.p,
                          tok.as<int32_t>(), s);
    }, iters, nullptr);
    return result(ms, double(n) * V * 4, 0);
  }
  GPTOSS_CHECK(false, "cuda_bench: unknown kernel '" << name
                          << "' (copy, gemv, gemm, moe, attention, sample)");
  return py::dict();
}

}  // namespace

void bind_cuda_bench(py::module_& ops) {
  ops.def("cuda_bench", [](const std::string& name, int n, int E, int ctx, int iters) {
    return bench(name, n, E, ctx, iters);
  }, py::arg("name"), py::arg("n") = 1, py::arg("E") = 32, py::arg("ctx") = 4096,
     py::arg("iters") = 20,
     "median device ms of one kernel family at the real shapes: name in copy, gemv/gemm (E = "
     "rows), moe (E experts), attention (ctx keys), sample (E > 0: top-p sampling, 0: greedy); "
     "returns {ms, bytes, flops, gb_s, tflop_s}");
}
#endif
