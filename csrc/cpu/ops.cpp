// The small CPU kernels: RMSNorm, RoPE, top-k routing, the clamped SwiGLU, attention with sinks,
// and a read-bandwidth probe. Plain C++ written so the compiler vectorises the inner loops; they
// cost little next to the weight-streaming matmuls.
//
// Attention: two passes per (query, kv head): scores of all visible keys for the group's query
// heads (each K row is loaded once for all heads that share it), then softmax with the sink
// folded into the normaliser, then the weighted sum of V rows (again once per row for the whole
// group). Threads split (query, kv head) pairs.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "common/numeric.h"
#include "cpu/kernels.h"
#include "gptoss/error.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace gptoss {
namespace cpu {

void rmsnorm(const float* x, const float* w, int n, int H, float eps, float* out) {
  for (int t = 0; t < n; ++t) {
    const float* xr = x + size_t(t) * H;
    float* o = out + size_t(t) * H;
    double ss = 0;
    for (int i = 0; i < H; ++i) ss += double(xr[i]) * xr[i];
    const float r = 1.0f / std::sqrt(float(ss / H) + eps);
    for (int i = 0; i < H; ++i) o[i] = xr[i] * r * w[i];
  }
}

void rope(float* x, int n, int heads, int d, int ld, const float* cos, const float* sin) {
  const int half = d / 2;
  for (int t = 0; t < n; ++t) {
    const float* c = cos + size_t(t) * half;
    const float* s = sin + size_t(t) * half;
    for (int h = 0; h < heads; ++h) {
      float* v = x + size_t(t) * ld + size_t(h) * d;
      for (int i = 0; i < half; ++i) {
        const float x1 = v[i], x2 = v[half + i];
        v[i] = x1 * c[i] - x2 * s[i];
        v[half + i] = x2 * c[i] + x1 * s[i];
      }
    }
  }
}

void topk_softmax(const float* logits, int n, int E, int k, int32_t* experts, float* weights) {
  GPTOSS_CHECK(k >= 1 && k <= E && k <= 16, "topk_softmax: k = " << k << " with E = " << E);
  for (int t = 0; t < n; ++t) {
    const float* g = logits + size_t(t) * E;
    int32_t* ex = experts + size_t(t) * k;
    float* w = weights + size_t(t) * k;
    int cnt = 0;
    for (int e = 0; e < E; ++e) {
      // insertion into a sorted list of k; strict '>' keeps the lower index first on ties
      int pos = cnt;
      while (pos > 0 && g[e] > g[ex[pos - 1]]) --pos;
      if (pos >= k) continue;
      for (int j = std::min(cnt, k - 1); j > pos; --j) ex[j] = ex[j - 1];
      ex[pos] = e;
      if (cnt < k) ++cnt;
    }
    const float mx = g[ex[0]];
    float sum = 0.f;
    for (int j = 0; j < k; ++j) sum += (w[j] = std::exp(g[ex[j]] - mx));
    for (int j = 0; j < k; ++j) w[j] /= sum;
  }
}

void swiglu(const float* u, int m, int I, float alpha, float limit, float* a) {
  for (int t = 0; t < m; ++t) {
    const float* ur = u + size_t(t) * 2 * I;
    float* ar = a + size_t(t) * I;
    for (int i = 0; i < I; ++i) ar[i] = swiglu_clamped(ur[2 * i], ur[2 * i + 1], alpha, limit);
  }
}

size_t attention_scratch_floats(int max_keys, int Hq) { return size_t(max_keys) * Hq; }

void attention(const float* q, int n, int ldq, const int32_t* qpos, const KVView& kv, int Hq,
               int Hkv, int d, int window, const float* sinks, float* out, float* /*scratch*/) {
  const int G = Hq / Hkv;
  GPTOSS_CHECK(G >= 1 && G <= 64 && Hq % Hkv == 0,
               "attention: " << Hq << " query heads over " << Hkv << " kv heads (at most 64 per kv head)");
  const float scale = 1.0f / std::sqrt(float(d));
  const long long items = (long long)n * Hkv;
#pragma omp parallel if (items > 1)
  {
    thread_local std::vector<float> scores;
#pragma omp for schedule(dynamic, 1)
    for (long long it = 0; it < items; ++it) {
      const int t = int(it / Hkv), kh = int(it % Hkv);
      const int p = qpos[t];
      const int lo = window > 0 ? std::max(0, p - window + 1) : 0;
      const int S = p - lo + 1;
      if (scores.size() < size_t(S) * G) scores.resize(size_t(S) * G);
      float* sc = scores.data();
      const float* qg = q + size_t(t) * ldq + size_t(kh) * G * d;
      for (int j = 0; j < S; ++j) {
        const float* kr = kv.k(lo + j) + size_t(kh) * d;
        for (int g = 0; g < G; ++g) {
          const float* qh = qg + size_t(g) * d;
          float s = 0.f;
#pragma omp simd reduction(+ : s)
          for (int i = 0; i < d; ++i) s += qh[i] * kr[i];
          sc[size_t(g) * S + j] = s * scale;
        }
      }
      float inv[64];
      for (int g = 0; g < G; ++g) {
        float* sg = sc + size_t(g) * S;
        const float sink = sinks[kh * G + g];
        float mx = sink;
        for (int j = 0; j < S; ++j) mx = std::max(mx, sg[j]);
        float sum = std::exp(sink - mx);
        for (int j = 0; j < S; ++j) sum += (sg[j] = std::exp(sg[j] - mx));
        inv[g] = 1.0f / sum;
        float* o = out + (size_t(t) * Hq + size_t(kh) * G + g) * d;
        std::memset(o, 0, sizeof(float) * size_t(d));
      }
      for (int j = 0; j < S; ++j) {
        const float* vr = kv.v(lo + j) + size_t(kh) * d;
        for (int g = 0; g < G; ++g) {
          const float pj = sc[size_t(g) * S + j] * inv[g];
          float* o = out + (size_t(t) * Hq + size_t(kh) * G + g) * d;
#pragma omp simd
          for (int i = 0; i < d; ++i) o[i] += pj * vr[i];
        }
      }
    }
  }
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
__attribute__((target("avx2"))) static float sum_avx2(const float* p, size_t n) {
  __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
  for (size_t i = 0; i < n; i += 32) {
    a0 = _mm256_add_ps(a0, _mm256_load_ps(p + i));
    a1 = _mm256_add_ps(a1, _mm256_load_ps(p + i + 8));
    a2 = _mm256_add_ps(a2, _mm256_load_ps(p + i + 16));
    a3 = _mm256_add_ps(a3, _mm256_load_ps(p + i + 24));
  }
  float t[8];
  _mm256_storeu_ps(t, _mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
  return t[0] + t[1] + t[2] + t[3] + t[4] + t[5] + t[6] + t[7];
}
#endif

static float sum_plain(const float* p, size_t n) {
  float acc[16] = {0};
  for (size_t i = 0; i < n; i += 16)
    for (int j = 0; j < 16; ++j) acc[j] += p[i + size_t(j)];
  float s = 0;
  for (float a : acc) s += a;
  return s;
}

double read_bandwidth_gbs(size_t bytes, int repeats) {
  // every thread streams its own contiguous slice with wide loads; median of `repeats` passes
  const size_t n = bytes / sizeof(float) / 4096 * 4096;
  float* buf = static_cast<float*>(std::aligned_alloc(64, n * sizeof(float)));
  GPTOSS_CHECK(buf != nullptr, "read_bandwidth: out of memory");
  for (size_t i = 0; i < n; ++i) buf[i] = 1.0f;
  std::vector<double> rates;
  float keep = 0;
  const bool avx2 = active_isa() >= Isa::Avx2;
  for (int rep = 0; rep < repeats + 1; ++rep) {
    const auto t0 = std::chrono::steady_clock::now();
    float total = 0;
    const long long chunks = (long long)(n / 4096);
#pragma omp parallel for reduction(+ : total) schedule(static)
    for (long long c = 0; c < chunks; ++c) {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
      total += avx2 ? sum_avx2(buf + size_t(c) * 4096, 4096) : sum_plain(buf + size_t(c) * 4096, 4096);
#else
      total += sum_plain(buf + size_t(c) * 4096, 4096);
#endif
    }
    const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    keep += total;
    if (rep > 0) rates.push_back(double(n) * sizeof(float) / dt / 1e9);
  }
  std::free(buf);
  std::sort(rates.begin(), rates.end());
  return keep < 0 ? 0 : rates[rates.size() / 2];
}

}  // namespace cpu
}  // namespace gptoss
