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
#include <type_traits>
#include <vector>

#if defined(__linux__)
#include <sys/mman.h>
#endif

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
  // a prefill's expert rows over the threads (each element on its own: the same values)
#pragma omp parallel for schedule(static) if (size_t(m) * I > 65536)
  for (int t = 0; t < m; ++t) {
    const float* ur = u + size_t(t) * 2 * I;
    float* ar = a + size_t(t) * I;
    for (int i = 0; i < I; ++i) ar[i] = swiglu_clamped(ur[2 * i], ur[2 * i + 1], alpha, limit);
  }
}

namespace {

// One (query, kv head) pair in plain C++: scores of all visible keys for the G query heads that
// share the kv head, softmax with the sink, weighted sum of V. sc: [G, S] scratch.
// A key or value row as float32: the row itself, or bf16 widened into buf (exact).
inline const float* row_f32(const float* r, int, float*) { return r; }
inline const float* row_f32(const uint16_t* r, int d, float* buf) {
  for (int i = 0; i < d; ++i) buf[i] = bf16_to_f32(r[i]);
  return buf;
}

template <class T>
void attend_plain(const float* qg, const KVViewT<T>& kv, int kh, int lo, int S, int G, int d,
                  float scale, const float* sinks, float* og, float* sc) {
  std::vector<float> buf(std::is_same<T, float>::value ? 0 : size_t(d));
  for (int j = 0; j < S; ++j) {
    const float* kr = row_f32(kv.k(lo + j, kh), d, buf.data());
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
    const float sink = sinks[g];
    float mx = sink;
    for (int j = 0; j < S; ++j) mx = std::max(mx, sg[j]);
    float sum = std::exp(sink - mx);
    for (int j = 0; j < S; ++j) sum += (sg[j] = std::exp(sg[j] - mx));
    inv[g] = 1.0f / sum;
    std::memset(og + size_t(g) * d, 0, sizeof(float) * size_t(d));
  }
  for (int j = 0; j < S; ++j) {
    const float* vr = row_f32(kv.v(lo + j, kh), d, buf.data());
    for (int g = 0; g < G; ++g) {
      const float pj = sc[size_t(g) * S + j] * inv[g];
      float* o = og + size_t(g) * d;
#pragma omp simd
      for (int i = 0; i < d; ++i) o[i] += pj * vr[i];
    }
  }
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define GPTOSS_AVX512_ATT __attribute__((target("avx512f,avx512dq,avx512vl")))

// e^x for x <= 0 (the softmax's shifted logits): range reduction to r in [-ln2/2, ln2/2], a
// degree-6 polynomial, and scalef by 2^n. Relative error about 2e-7.
GPTOSS_AVX512_ATT static inline __m512 exp512(__m512 x) {
  x = _mm512_max_ps(x, _mm512_set1_ps(-87.0f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.0f / 720);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  return _mm512_scalef_ps(p, n);
}

// The horizontal sums of 8 vectors, as 8 floats.
GPTOSS_AVX512_ATT static inline __m256 hsum8(const __m512 v[8]) {
  __m512 a01 = _mm512_add_ps(_mm512_unpacklo_ps(v[0], v[1]), _mm512_unpackhi_ps(v[0], v[1]));
  __m512 a23 = _mm512_add_ps(_mm512_unpacklo_ps(v[2], v[3]), _mm512_unpackhi_ps(v[2], v[3]));
  __m512 a45 = _mm512_add_ps(_mm512_unpacklo_ps(v[4], v[5]), _mm512_unpackhi_ps(v[4], v[5]));
  __m512 a67 = _mm512_add_ps(_mm512_unpacklo_ps(v[6], v[7]), _mm512_unpackhi_ps(v[6], v[7]));
  // per 128-bit lane: (sum of 4 of v0, v1, v2, v3) and the same for v4..v7
  __m512 b = _mm512_add_ps(_mm512_shuffle_ps(a01, a23, 0x44), _mm512_shuffle_ps(a01, a23, 0xEE));
  __m512 c = _mm512_add_ps(_mm512_shuffle_ps(a45, a67, 0x44), _mm512_shuffle_ps(a45, a67, 0xEE));
  // add the four 128-bit lanes: lanes (b0+b2, b1+b3, c0+c2, c1+c3), then pairs
  __m512 e = _mm512_add_ps(_mm512_shuffle_f32x4(b, c, 0x44), _mm512_shuffle_f32x4(b, c, 0xEE));
  e = _mm512_add_ps(e, _mm512_shuffle_f32x4(e, e, 0xB1));
  return _mm512_castps512_ps256(_mm512_shuffle_f32x4(e, e, 0x08));
}

// The same for head dim 64 and 8 query heads per kv head: the 8 dot products of a key are reduced
// together (hsum8), scores are stored key-major [S, 8] so the softmax runs across the 8 heads in
// one vector, exp is vectorised, and V rows are accumulated into registers four heads at a time.
// 16 keys or values as float32: loaded, or bf16 bits widened (exact).
GPTOSS_AVX512_ATT static inline __m512 ld16(const float* p) { return _mm512_loadu_ps(p); }
GPTOSS_AVX512_ATT static inline __m512 ld16(const uint16_t* p) {
  const __m256i b = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(b), 16));
}

// The softmax over S keys of 8 heads' scores, key-major sc [S, 8], with each head's sink in the
// normaliser: sc becomes exp(score - max), inv the 8 reciprocals of the sums (sink included).
GPTOSS_AVX512_ATT static void softmax_keys8(float* sc, int S, const float* sinks, float* inv) {
  // softmax across keys, 8 heads per vector (two keys per 512-bit register)
  const __m256 sink = _mm256_loadu_ps(sinks);
  __m256 mx = sink;
  for (int j = 0; j < S; ++j) mx = _mm256_max_ps(mx, _mm256_loadu_ps(sc + size_t(j) * 8));
  const __m512 mx2 = _mm512_insertf32x8(_mm512_castps256_ps512(mx), mx, 1);
  __m512 sum2 = _mm512_setzero_ps();
  int j = 0;
  for (; j + 2 <= S; j += 2) {
    const __m512 e = exp512(_mm512_sub_ps(_mm512_loadu_ps(sc + size_t(j) * 8), mx2));
    _mm512_storeu_ps(sc + size_t(j) * 8, e);
    sum2 = _mm512_add_ps(sum2, e);
  }
  __m256 sum = _mm256_add_ps(_mm512_castps512_ps256(sum2), _mm512_extractf32x8_ps(sum2, 1));
  if (j < S) {
    const __m512 e = exp512(_mm512_castps256_ps512(_mm256_sub_ps(_mm256_loadu_ps(sc + size_t(j) * 8), mx)));
    const __m256 e8 = _mm512_castps512_ps256(e);
    _mm256_storeu_ps(sc + size_t(j) * 8, e8);
    sum = _mm256_add_ps(sum, e8);
  }
  const __m256 es = _mm512_castps512_ps256(exp512(_mm512_castps256_ps512(_mm256_sub_ps(sink, mx))));
  _mm256_store_ps(inv, _mm256_div_ps(_mm256_set1_ps(1.0f), _mm256_add_ps(sum, es)));
}

template <class T>
GPTOSS_AVX512_ATT static void attend_d64_g8(const float* qg, const KVViewT<T>& kv, int kh, int lo,
                                            int S, float scale, const float* sinks, float* og,
                                            float* sc) {
  for (int j = 0; j < S; ++j) {
    const T* kr = kv.k(lo + j, kh);
    const __m512 k0 = ld16(kr), k1 = ld16(kr + 16), k2 = ld16(kr + 32), k3 = ld16(kr + 48);
    __m512 acc[8];
    for (int g = 0; g < 8; ++g) {
      const float* qh = qg + g * 64;
      __m512 a = _mm512_mul_ps(_mm512_loadu_ps(qh), k0);
      a = _mm512_fmadd_ps(_mm512_loadu_ps(qh + 16), k1, a);
      a = _mm512_fmadd_ps(_mm512_loadu_ps(qh + 32), k2, a);
      acc[g] = _mm512_fmadd_ps(_mm512_loadu_ps(qh + 48), k3, a);
    }
    _mm256_storeu_ps(sc + size_t(j) * 8, _mm256_mul_ps(hsum8(acc), _mm256_set1_ps(scale)));
  }
  alignas(32) float inv[8];
  softmax_keys8(sc, S, sinks, inv);
  for (int h0 = 0; h0 < 8; h0 += 4) {
    __m512 o[4][4];
    for (int g = 0; g < 4; ++g)
      for (int c = 0; c < 4; ++c) o[g][c] = _mm512_setzero_ps();
    for (int jj = 0; jj < S; ++jj) {
      const T* vr = kv.v(lo + jj, kh);
      const __m512 v0 = ld16(vr), v1 = ld16(vr + 16), v2 = ld16(vr + 32), v3 = ld16(vr + 48);
      for (int g = 0; g < 4; ++g) {
        const __m512 p = _mm512_set1_ps(sc[size_t(jj) * 8 + h0 + g]);
        o[g][0] = _mm512_fmadd_ps(p, v0, o[g][0]);
        o[g][1] = _mm512_fmadd_ps(p, v1, o[g][1]);
        o[g][2] = _mm512_fmadd_ps(p, v2, o[g][2]);
        o[g][3] = _mm512_fmadd_ps(p, v3, o[g][3]);
      }
    }
    for (int g = 0; g < 4; ++g) {
      const __m512 iv = _mm512_set1_ps(inv[h0 + g]);
      for (int c = 0; c < 4; ++c)
        _mm512_storeu_ps(og + size_t(h0 + g) * 64 + c * 16, _mm512_mul_ps(o[g][c], iv));
    }
  }
}
#endif

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define GPTOSS_AVX2_ATT __attribute__((target("avx2,fma")))

// exp512's method with 256-bit vectors; 2^n is built in the exponent bits (n >= -126 after the
// clamp at -87, so never a denormal).
GPTOSS_AVX2_ATT static inline __m256 exp256(__m256 x) {
  x = _mm256_max_ps(x, _mm256_set1_ps(-87.0f));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.0f / 720);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 120));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 24));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 6));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

// The horizontal sums of 8 vectors, as 8 floats.
GPTOSS_AVX2_ATT static inline __m256 hsum8_256(const __m256 v[8]) {
  const __m256 t0 = _mm256_hadd_ps(v[0], v[1]), t1 = _mm256_hadd_ps(v[2], v[3]);
  const __m256 t2 = _mm256_hadd_ps(v[4], v[5]), t3 = _mm256_hadd_ps(v[6], v[7]);
  const __m256 u0 = _mm256_hadd_ps(t0, t1), u1 = _mm256_hadd_ps(t2, t3);
  return _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20), _mm256_permute2f128_ps(u0, u1, 0x31));
}

// attend_d64_g8 with 256-bit vectors: the 8 heads' scores of a key reduced together and stored
// key-major [S, 8] so the softmax runs across the heads in one vector; V accumulated four heads
// by 16 dimensions at a time (8 accumulators, within the 16 ymm registers).
// 8 keys or values as float32: loaded, or bf16 bits widened (exact).
GPTOSS_AVX2_ATT static inline __m256 ld8(const float* p) { return _mm256_loadu_ps(p); }
GPTOSS_AVX2_ATT static inline __m256 ld8(const uint16_t* p) {
  const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(b), 16));
}

template <class T>
GPTOSS_AVX2_ATT static void attend_d64_g8_avx2(const float* qg, const KVViewT<T>& kv, int kh, int lo,
                                               int S, float scale, const float* sinks, float* og,
                                               float* sc) {
  // a position-major view puts each key's 256 bytes of this head 2 KiB apart, which the hardware
  // prefetcher does not follow (and a head-major one crosses pages): ask for keys kAhead on
  constexpr int kAhead = 32;
  for (int j = 0; j < S; ++j) {
    const T* kr = kv.k(lo + j, kh);
    if (j + kAhead < S) {
      const char* pf = reinterpret_cast<const char*>(kv.k(lo + j + kAhead, kh));
      for (int c = 0; c < int(64 * sizeof(T)); c += 64) _mm_prefetch(pf + c, _MM_HINT_T0);
    }
    __m256 acc[8];
    {
      const __m256 k0 = ld8(kr), k1 = ld8(kr + 8), k2 = ld8(kr + 16), k3 = ld8(kr + 24);
      for (int g = 0; g < 8; ++g) {
        const float* qh = qg + g * 64;
        __m256 a = _mm256_mul_ps(_mm256_loadu_ps(qh), k0);
        a = _mm256_fmadd_ps(_mm256_loadu_ps(qh + 8), k1, a);
        a = _mm256_fmadd_ps(_mm256_loadu_ps(qh + 16), k2, a);
        acc[g] = _mm256_fmadd_ps(_mm256_loadu_ps(qh + 24), k3, a);
      }
    }
    {
      const __m256 k4 = ld8(kr + 32), k5 = ld8(kr + 40), k6 = ld8(kr + 48), k7 = ld8(kr + 56);
      for (int g = 0; g < 8; ++g) {
        const float* qh = qg + g * 64 + 32;
        acc[g] = _mm256_fmadd_ps(_mm256_loadu_ps(qh), k4, acc[g]);
        acc[g] = _mm256_fmadd_ps(_mm256_loadu_ps(qh + 8), k5, acc[g]);
        acc[g] = _mm256_fmadd_ps(_mm256_loadu_ps(qh + 16), k6, acc[g]);
        acc[g] = _mm256_fmadd_ps(_mm256_loadu_ps(qh + 24), k7, acc[g]);
      }
    }
    _mm256_storeu_ps(sc + size_t(j) * 8, _mm256_mul_ps(hsum8_256(acc), _mm256_set1_ps(scale)));
  }
  const __m256 sink = _mm256_loadu_ps(sinks);
  __m256 mx = sink;
  for (int j = 0; j < S; ++j) mx = _mm256_max_ps(mx, _mm256_loadu_ps(sc + size_t(j) * 8));
  __m256 sum = _mm256_setzero_ps();
  for (int j = 0; j < S; ++j) {
    const __m256 e = exp256(_mm256_sub_ps(_mm256_loadu_ps(sc + size_t(j) * 8), mx));
    _mm256_storeu_ps(sc + size_t(j) * 8, e);
    sum = _mm256_add_ps(sum, e);
  }
  alignas(32) float inv[8];
  _mm256_store_ps(inv, _mm256_div_ps(_mm256_set1_ps(1.0f),
                                     _mm256_add_ps(sum, exp256(_mm256_sub_ps(sink, mx)))));
  // keys in blocks of 128, so the block's V rows (32 KiB) stay in cache across the 8 passes
  alignas(32) float acc[8 * 64];
  std::memset(acc, 0, sizeof acc);
  for (int j0 = 0; j0 < S; j0 += 128) {
    const int j1 = std::min(S, j0 + 128);
    for (int h0 = 0; h0 < 8; h0 += 4) {
      for (int c0 = 0; c0 < 64; c0 += 16) {
        __m256 o[4][2];
        for (int g = 0; g < 4; ++g) o[g][0] = o[g][1] = _mm256_setzero_ps();
        for (int jj = j0; jj < j1; ++jj) {
          const T* vr = kv.v(lo + jj, kh) + c0;
          if (h0 == 0 && c0 == 0 && jj + kAhead < S) {  // the first pass brings the block in
            const char* pf = reinterpret_cast<const char*>(kv.v(lo + jj + kAhead, kh));
            for (int c = 0; c < int(64 * sizeof(T)); c += 64) _mm_prefetch(pf + c, _MM_HINT_T0);
          }
          const __m256 v0 = ld8(vr), v1 = ld8(vr + 8);
          const float* pr = sc + size_t(jj) * 8 + h0;
          for (int g = 0; g < 4; ++g) {
            const __m256 p = _mm256_broadcast_ss(pr + g);
            o[g][0] = _mm256_fmadd_ps(p, v0, o[g][0]);
            o[g][1] = _mm256_fmadd_ps(p, v1, o[g][1]);
          }
        }
        for (int g = 0; g < 4; ++g) {
          float* a = acc + (h0 + g) * 64 + c0;
          _mm256_store_ps(a, _mm256_add_ps(_mm256_load_ps(a), o[g][0]));
          _mm256_store_ps(a + 8, _mm256_add_ps(_mm256_load_ps(a + 8), o[g][1]));
        }
      }
    }
  }
  for (int g = 0; g < 8; ++g) {
    const __m256 iv = _mm256_set1_ps(inv[g]);
    for (int c = 0; c < 64; c += 8)
      _mm256_storeu_ps(og + g * 64 + c, _mm256_mul_ps(_mm256_load_ps(acc + g * 64 + c), iv));
  }
}
#endif

}  // namespace

namespace {
template <class T>
void attention_t(const float* q, int n, int ldq, const int32_t* qpos, const KVViewT<T>* kvs, int Hq,
                 int Hkv, int d, int window, const float* sinks, float* out) {
  const int G = Hq / Hkv;
  GPTOSS_CHECK(G >= 1 && G <= 64 && Hq % Hkv == 0,
               "attention: " << Hq << " query heads over " << Hkv << " kv heads (at most 64 per kv head)");
  const float scale = 1.0f / std::sqrt(float(d));
  const long long items = (long long)n * Hkv;
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  const bool fast = d == 64 && G == 8 && active_isa() >= Isa::Avx512Bw;
  const bool fast2 = d == 64 && G == 8 && active_isa() >= Isa::Avx2;
#else
  const bool fast = false;
#endif
#pragma omp parallel if (items > 1)
  {
    thread_local std::vector<float> scores;
#pragma omp for schedule(dynamic, 1)
    for (long long it = 0; it < items; ++it) {
      const int t = int(it / Hkv), kh = int(it % Hkv);
      const KVViewT<T>& kv = kvs[t];
      const int p = qpos[t];
      const int lo = window > 0 ? std::max(0, p - window + 1) : 0;
      const int S = p - lo + 1;
      if (scores.size() < size_t(S) * G + 16) scores.resize(size_t(S) * G + 16);
      const float* qg = q + size_t(t) * ldq + size_t(kh) * G * d;
      float* og = out + (size_t(t) * Hq + size_t(kh) * G) * d;
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
      if (fast) {
        attend_d64_g8(qg, kv, kh, lo, S, scale, sinks + kh * G, og, scores.data());
        continue;
      }
      if (fast2) {
        attend_d64_g8_avx2(qg, kv, kh, lo, S, scale, sinks + kh * G, og, scores.data());
        continue;
      }
#endif
      attend_plain(qg, kv, kh, lo, S, G, d, scale, sinks + kh * G, og, scores.data());
    }
  }
}
}  // namespace

void attention(const float* q, int n, int ldq, const int32_t* qpos, const KVView* kv, int Hq,
               int Hkv, int d, int window, const float* sinks, float* out) {
  attention_t(q, n, ldq, qpos, kv, Hq, Hkv, d, window, sinks, out);
}
void attention(const float* q, int n, int ldq, const int32_t* qpos, const KVViewBf16* kv, int Hq,
               int Hkv, int d, int window, const float* sinks, float* out) {
  attention_t(q, n, ldq, qpos, kv, Hq, Hkv, d, window, sinks, out);
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
  // Every thread streams its own contiguous slice with wide loads; the best of `repeats` passes
  // (the rate the memory can give, which a floor is). The buffer asks for transparent huge
  // pages: in 4 KiB pages the same loop read 25-26 GB/s where the page cache's weight files
  // (large folios) and a huge-page buffer read 31-33 (2026-12-04, a Zen 4), so a 4 KiB buffer
  // put the floor below what the engine's own mapped weights are read at.
  const size_t n = bytes / sizeof(float) / 4096 * 4096;
  const size_t nbytes = (n * sizeof(float) + (size_t(2) << 20) - 1) / (size_t(2) << 20) * (size_t(2) << 20);
  float* buf = static_cast<float*>(std::aligned_alloc(size_t(2) << 20, nbytes));
  GPTOSS_CHECK(buf != nullptr, "read_bandwidth: out of memory");
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  madvise(buf, nbytes, MADV_HUGEPAGE);  // advice only: where refused, 4 KiB pages
#endif
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
  return keep < 0 ? 0 : rates.back();
}

}  // namespace cpu
}  // namespace gptoss
