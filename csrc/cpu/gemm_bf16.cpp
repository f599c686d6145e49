// bf16-weight matrix products on the CPU: out[t, r] = W[r, :] . x[t, :] + bias[r].
//
// Weights stay bf16 in the mapped file; each 32 (AVX-512) or 16 (AVX2) widen to float32 as
// even/odd pairs by a 16-bit shift and a mask and feed FMAs against float32 activations arranged
// in the same pair order, so results match a float32 reference up to summation order. Work maps
// to threads by rows (callers split [r0, r1)). For several activation rows (prefill) each weight
// vector is loaded once and used for several tokens held in registers; decode (m = 1) is a pure
// streaming GEMV bound by memory bandwidth.
#include <algorithm>
#include <cstring>
#include <type_traits>

#include "common/numeric.h"
#include "cpu/bf16_simd.h"
#include "cpu/kernels.h"
#include "gptoss/error.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace gptoss {
namespace cpu {

static void bf16w_gemm_rows_plain(const uint16_t* W, size_t ldw, int r0, int r1, const float* x,
                                  int m, int K, const float* bias, float* out, int ldo) {
  for (int r = r0; r < r1; ++r) {
    const uint16_t* w = W + size_t(r) * ldw;
    for (int t = 0; t < m; ++t) {
      const float* xt = x + size_t(t) * K;
      float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
      int k = 0;
      for (; k + 8 <= K; k += 8)
        for (int j = 0; j < 8; ++j) acc[j] += bf16_to_f32(w[k + j]) * xt[k + j];
      float s = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
      for (; k < K; ++k) s += bf16_to_f32(w[k]) * xt[k];
      out[size_t(t) * ldo + r] = s + (bias ? bias[r] : 0.f);
    }
  }
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define GPTOSS_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq")))
#define GPTOSS_AVX2 __attribute__((target("avx2,fma")))

// Decode's rows [r0, r1) as N parts of h = (r1 - r0) / N rows read side by side, rows (r, r + h,
// ..., r + (N - 1) h), then the rows left over one at a time: the tile is called as tile(rows,
// first row, row step) with rows a std::integral_constant.
template <int N, class Tile>
static inline void decode_rows_split(int r0, int r1, Tile&& tile) {
  const int h = (r1 - r0) / N;
  for (int r = r0; r < r0 + h; ++r) tile(std::integral_constant<int, N>(), r, h);
  for (int r = r0 + N * h; r < r1; ++r) tile(std::integral_constant<int, 1>(), r, 1);
}

// The AVX-512 kernel reads x in its own pair order (bf16_pair_order): in each run of 32 values
// the 16 even then the 16 odd (the tail past the last whole 32 in place). One 64-byte load holds
// 32 bf16 weights as 16 pairs; a 16-bit shift makes the even ones floats and a mask the odd ones
// (two single-cycle operations per 32 weights, no lane crossing), and they meet the two halves of
// the arranged x, both FMAs into the one accumulator of that row and token. Decode
// (decode_rows_split) takes two rows at a time from the two halves of a band: two sequential
// streams that never share a 4 KiB page, and two FMA chains. On a Zen 4 (2026-12-04) adjacent
// rows interleaved (two or four: the AVX2 code's pattern) read 30-45% slower than one row at a
// time, and one row at a time waits on its chain's FMA latency when memory is fast: with the
// probe at 58-68 GB/s the unembedding read 46 GB/s one row at a time and 53-54 as two halves,
// the 24 q_proj matrices 43-44 and 49-51; at 35 GB/s both read the same. Prefill tiles 4 rows x
// 4 tokens (16 accumulators, 4 weight and 8 activation loads per 32 FMAs). Each accumulator sees
// the same operations in the same order whatever the tile, so a row's result is the same bits at
// decode and at prefill.
template <int RB, int TB>
GPTOSS_AVX512 static void bf16w_tile_avx512(const uint16_t* W, size_t ldw, int r, const float* xp,
                                            int t0, int K, const float* bias, float* out,
                                            int ldo, int rstep = 1) {
  __m512 acc[RB][TB];
  for (int i = 0; i < RB; ++i)
    for (int t = 0; t < TB; ++t) acc[i][t] = _mm512_setzero_ps();
  const __m512i hi = _mm512_set1_epi32(int(0xffff0000u));
  const int k32 = K / 32 * 32;
  for (int k = 0; k < k32; k += 32) {
    __m512 we[RB], wo[RB];
    for (int i = 0; i < RB; ++i) {
      const __m512i raw = _mm512_loadu_si512(W + size_t(r + i * rstep) * ldw + k);
      we[i] = _mm512_castsi512_ps(_mm512_slli_epi32(raw, 16));
      wo[i] = _mm512_castsi512_ps(_mm512_and_si512(raw, hi));
    }
    for (int t = 0; t < TB; ++t) {  // each activation vector loaded once for the RB rows
      const float* xt = xp + size_t(t0 + t) * K + k;
      const __m512 xe = _mm512_loadu_ps(xt), xo = _mm512_loadu_ps(xt + 16);
      for (int i = 0; i < RB; ++i)
        acc[i][t] = _mm512_fmadd_ps(wo[i], xo, _mm512_fmadd_ps(we[i], xe, acc[i][t]));
    }
  }
  for (int i = 0; i < RB; ++i) {
    const uint16_t* w = W + size_t(r + i * rstep) * ldw;
    for (int t = 0; t < TB; ++t) {
      const float* xt = xp + size_t(t0 + t) * K;  // the tail past the last 32 is in place
      float sum = _mm512_reduce_add_ps(acc[i][t]);
      for (int kk = k32; kk < K; ++kk) sum += bf16_to_f32(w[kk]) * xt[kk];
      out[size_t(t0 + t) * ldo + r + i * rstep] = sum + (bias ? bias[r + i * rstep] : 0.f);
    }
  }
}

template <int RB, int TB>
GPTOSS_AVX512 static void bf16w_tokens_avx512(const uint16_t* W, size_t ldw, int r0, int r1,
                                              const float* xp, int t, int K, const float* bias,
                                              float* out, int ldo) {
  int r = r0;
  for (; r + RB <= r1; r += RB) bf16w_tile_avx512<RB, TB>(W, ldw, r, xp, t, K, bias, out, ldo);
  for (; r < r1; ++r) bf16w_tile_avx512<1, TB>(W, ldw, r, xp, t, K, bias, out, ldo);
}

// tokens are the outer loop so a band of weight rows stays in L2 while all tokens pass over it
GPTOSS_AVX512 static void bf16w_gemm_rows_avx512(const uint16_t* W, size_t ldw, int r0, int r1,
                                                 const float* xp, int m, int K, const float* bias,
                                                 float* out, int ldo) {
  if (m == 1)
    return decode_rows_split<2>(r0, r1, [&](auto rb, int r, int step) {
      bf16w_tile_avx512<decltype(rb)::value, 1>(W, ldw, r, xp, 0, K, bias, out, ldo, step);
    });
  int t = 0;
  for (; t + 4 <= m; t += 4) bf16w_tokens_avx512<4, 4>(W, ldw, r0, r1, xp, t, K, bias, out, ldo);
  switch (m - t) {
    case 3: return bf16w_tokens_avx512<4, 3>(W, ldw, r0, r1, xp, t, K, bias, out, ldo);
    case 2: return bf16w_tokens_avx512<4, 2>(W, ldw, r0, r1, xp, t, K, bias, out, ldo);
    case 1: return bf16w_tokens_avx512<4, 1>(W, ldw, r0, r1, xp, t, K, bias, out, ldo);
    default: return;
  }
}

// One activation level (activation_levels=1) at the avx512bf16 level: x rounded to bf16 (an error
// below 2^-9 of each value, within the int8 expert activations' 1/254 of their block maximum) and
// the products on vdpbf16ps, 32 weights against 32 activations in one instruction where the
// float32 code takes two FMAs and the widening: twice the rate at prefill. x is prepared once
// per product in K order (bf16_pair_order with levels 1). Decode takes two rows from the two
// halves of a band, as above; prefill tiles 4 rows x 4 tokens. Each accumulator sees the same
// instructions in the same order whatever the tile, so decode and prefill give the same bits.
#define GPTOSS_AVX512_BF16 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16")))
template <int RB, int TB>
GPTOSS_AVX512_BF16 static void bf16x_tile_avx512(const uint16_t* W, size_t ldw, int r,
                                                 const uint16_t* xb, int t0, int K,
                                                 const float* bias, float* out, int ldo,
                                                 int rstep = 1) {
  __m512 acc[RB][TB];
  for (int i = 0; i < RB; ++i)
    for (int t = 0; t < TB; ++t) acc[i][t] = _mm512_setzero_ps();
  const int k32 = K / 32 * 32;
  for (int k = 0; k < k32; k += 32) {
    __m512bh w[RB];
    for (int i = 0; i < RB; ++i)
      w[i] = (__m512bh)_mm512_loadu_si512(W + size_t(r + i * rstep) * ldw + k);
    for (int t = 0; t < TB; ++t) {
      const __m512bh x = (__m512bh)_mm512_loadu_si512(xb + size_t(t0 + t) * K + k);
      for (int i = 0; i < RB; ++i) acc[i][t] = _mm512_dpbf16_ps(acc[i][t], w[i], x);
    }
  }
  for (int i = 0; i < RB; ++i) {
    const uint16_t* wr = W + size_t(r + i * rstep) * ldw;
    for (int t = 0; t < TB; ++t) {
      const uint16_t* xt = xb + size_t(t0 + t) * K;
      float sum = _mm512_reduce_add_ps(acc[i][t]);
      for (int kk = k32; kk < K; ++kk) sum += bf16_to_f32(wr[kk]) * bf16_to_f32(xt[kk]);
      out[size_t(t0 + t) * ldo + r + i * rstep] = sum + (bias ? bias[r + i * rstep] : 0.f);
    }
  }
}

template <int TB>
GPTOSS_AVX512_BF16 static void bf16x_tokens_avx512(const uint16_t* W, size_t ldw, int r0, int r1,
                                                   const uint16_t* xb, int t, int K,
                                                   const float* bias, float* out, int ldo) {
  int r = r0;
  for (; r + 4 <= r1; r += 4) bf16x_tile_avx512<4, TB>(W, ldw, r, xb, t, K, bias, out, ldo);
  for (; r < r1; ++r) bf16x_tile_avx512<1, TB>(W, ldw, r, xb, t, K, bias, out, ldo);
}

GPTOSS_AVX512_BF16 static void bf16x_gemm_rows_avx512(const uint16_t* W, size_t ldw, int r0,
                                                      int r1, const uint16_t* xb, int m, int K,
                                                      const float* bias, float* out, int ldo) {
  if (m == 1)
    return decode_rows_split<2>(r0, r1, [&](auto rb, int r, int step) {
      bf16x_tile_avx512<decltype(rb)::value, 1>(W, ldw, r, xb, 0, K, bias, out, ldo, step);
    });
  int t = 0;
  for (; t + 4 <= m; t += 4) bf16x_tokens_avx512<4>(W, ldw, r0, r1, xb, t, K, bias, out, ldo);
  switch (m - t) {
    case 3: return bf16x_tokens_avx512<3>(W, ldw, r0, r1, xb, t, K, bias, out, ldo);
    case 2: return bf16x_tokens_avx512<2>(W, ldw, r0, r1, xb, t, K, bias, out, ldo);
    case 1: return bf16x_tokens_avx512<1>(W, ldw, r0, r1, xb, t, K, bias, out, ldo);
    default: return;
  }
}

GPTOSS_AVX2 static inline float hsum256(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
  return _mm_cvtss_f32(s);
}

// RB weight rows x TB activation rows, two 8-lane accumulators each, on x in pair order
// (bf16_pair_order): a 32-byte load holds 16 bf16 weights as 8 pairs, a 16-bit shift makes the
// even ones floats and a mask the odd ones, two ALU operations per 16 weights, no lane crossing;
// they meet the even and the odd halves of the arranged x. Decode takes RB = 2, TB = 1 from the
// two halves of a band (decode_rows_split, as the AVX-512 code): four FMA chains, where one row's
// two chains left a Zen 3 core waiting on the FMA latency (2026-12-04: 4 adjacent rows read the
// 24 q_proj matrices at 34-37 GB/s where one row read 28-29), and two streams in different pages,
// where 4 adjacent rows share each page (a later Zen 4 run at --simd avx2, interleaved: the
// unembedding 24-32 GB/s with 4 adjacent rows, 32-50 with the two halves, the probe at 33-66).
// Prefill RB = 1, TB = 6 (each widened weight vector serves six tokens; tokens outermost so a
// band of rows stays in L2). Each accumulator sees the same operations in the same order
// whatever the tile.
//
// Prefill runs over K in blocks of kKBlock so a tile's activations (6 x 512 floats) stay in L1;
// between blocks a tile's accumulators wait in `state` (an exact store and load), so each
// accumulator still sees the same operations in the same order as in one pass.
constexpr int kKBlock = 512;
constexpr int kBandMax = 32;  // rows whose accumulators wait at once (the callers' bands)

template <int RB, int TB>
GPTOSS_AVX2 static void bf16w_tile_avx2(const uint16_t* W, size_t ldw, int r, const float* xp,
                                        int t0, int K, int kb, int ke, float* state,
                                        const float* bias, float* out, int ldo, int rstep = 1) {
  __m256 a0[RB][TB], a1[RB][TB];
  for (int i = 0; i < RB; ++i)
    for (int t = 0; t < TB; ++t) {
      if (kb == 0) {
        a0[i][t] = a1[i][t] = _mm256_setzero_ps();
      } else {
        a0[i][t] = _mm256_loadu_ps(state + (i * TB + t) * 16);
        a1[i][t] = _mm256_loadu_ps(state + (i * TB + t) * 16 + 8);
      }
    }
  const __m256i hi = _mm256_set1_epi32(int(0xffff0000u));
  for (int k = kb; k < ke; k += 16) {
    for (int i = 0; i < RB; ++i) {
      const uint16_t* w = W + size_t(r + i * rstep) * ldw + k;
      const __m256i raw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w));
      const __m256 we = _mm256_castsi256_ps(_mm256_slli_epi32(raw, 16));
      const __m256 wo = _mm256_castsi256_ps(_mm256_and_si256(raw, hi));
      for (int t = 0; t < TB; ++t) {
        const float* xt = xp + size_t(t0 + t) * K + k;
        a0[i][t] = _mm256_fmadd_ps(we, _mm256_loadu_ps(xt), a0[i][t]);
        a1[i][t] = _mm256_fmadd_ps(wo, _mm256_loadu_ps(xt + 8), a1[i][t]);
      }
    }
  }
  const int k16 = K / 16 * 16;
  if (ke < k16 && state) {  // decode: one pass over K (ke = k16), no state
    for (int i = 0; i < RB; ++i)
      for (int t = 0; t < TB; ++t) {
        _mm256_storeu_ps(state + (i * TB + t) * 16, a0[i][t]);
        _mm256_storeu_ps(state + (i * TB + t) * 16 + 8, a1[i][t]);
      }
    return;
  }
  for (int i = 0; i < RB; ++i) {
    const uint16_t* w = W + size_t(r + i * rstep) * ldw;
    for (int t = 0; t < TB; ++t) {
      const float* xt = xp + size_t(t0 + t) * K;  // the tail past the last 16 is in place
      float sum = hsum256(_mm256_add_ps(a0[i][t], a1[i][t]));
      for (int kk = k16; kk < K; ++kk) sum += bf16_to_f32(w[kk]) * xt[kk];
      out[size_t(t0 + t) * ldo + r + i * rstep] = sum + (bias ? bias[r + i * rstep] : 0.f);
    }
  }
}

template <int TB>
GPTOSS_AVX2 static void bf16w_tokens_avx2(const uint16_t* W, size_t ldw, int r0, int r1,
                                          const float* xp, int t, int K, const float* bias,
                                          float* out, int ldo) {
  const int k16 = K / 16 * 16;
  alignas(32) float state[kBandMax * TB * 16];
  for (int rb = r0; rb < r1; rb += kBandMax) {
    const int re = std::min(r1, rb + kBandMax);
    for (int kb = 0; kb < std::max(k16, 1); kb += kKBlock) {
      const int ke = std::min(k16, kb + kKBlock);
      for (int r = rb; r < re; ++r)
        bf16w_tile_avx2<1, TB>(W, ldw, r, xp, t, K, kb, ke, state + size_t(r - rb) * TB * 16,
                               bias, out, ldo);
    }
  }
}

GPTOSS_AVX2 static void bf16w_gemm_rows_avx2(const uint16_t* W, size_t ldw, int r0, int r1,
                                             const float* xp, int m, int K, const float* bias,
                                             float* out, int ldo) {
  int t = 0;
  for (; t + 6 <= m; t += 6) bf16w_tokens_avx2<6>(W, ldw, r0, r1, xp, t, K, bias, out, ldo);
  const int left = m - t;
  switch (left) {
    case 5: bf16w_tokens_avx2<5>(W, ldw, r0, r1, xp, t, K, bias, out, ldo); return;
    case 4: bf16w_tokens_avx2<4>(W, ldw, r0, r1, xp, t, K, bias, out, ldo); return;
    case 3: bf16w_tokens_avx2<3>(W, ldw, r0, r1, xp, t, K, bias, out, ldo); return;
    case 2: bf16w_tokens_avx2<2>(W, ldw, r0, r1, xp, t, K, bias, out, ldo); return;
    case 1: {
      const int k16 = K / 16 * 16;
      return decode_rows_split<2>(r0, r1, [&](auto rb, int r, int step) {
        bf16w_tile_avx2<decltype(rb)::value, 1>(W, ldw, r, xp, t, K, 0, k16, nullptr, bias, out,
                                                ldo, step);
      });
    }
    default: return;
  }
}
#endif

// ------------------------------------------------------------------------------------ AMX
// At the amx level the bf16 products run on the AMX-BF16 tiles, for decode and prefill alike, so
// a row's result stays the same bits whatever the batch. The weights are the A tiles, straight
// from the mapped rows (16 rows x 32 values per tile); the activations are the B tiles, each
// value split into two bf16 terms, hi = bf16(x) and lo = bf16(x - hi) (together 16 significant
// bits: an error below 2^-17 of |x|, float32-class for these products), prepared once per
// product by bf16_pair_order. tdpbf16ps accumulates both terms' products in float32 in the C
// tile across all of K, chunk by chunk in the same order for every row and any number of tokens.
// Prepared layout, per tile of N <= 16 tokens (t0 = 16 j, the tiles before it full): for each
// 32-chunk kc and term h, 16 rows of N pairs: [i][t][e] = term_h(x[t0 + t, 32 kc + 2 i + e])
// (zero past K); chunk kc's terms start at uint16 offset t0 * KC * 64 + (2 kc + h) * 32 N.
#if defined(__x86_64__) && defined(__GNUC__) && (defined(__clang__) || __GNUC__ >= 11)
#define GPTOSS_HAVE_AMX_BF16 1
#define GPTOSS_AMX_BF16 __attribute__((target("amx-tile,amx-bf16,avx512f,avx512bw,avx512vl,avx512dq")))


// x in the prepared layout above: a token's chunk of 32 values becomes 16 pairs of each term,
// pair i scattered to row i of the chunk's B tiles.
GPTOSS_AMX_BF16 static void bf16_amx_prepare(const float* x, int m, int K, uint16_t* out) {
  const int KC = (K + 31) / 32;
#pragma omp parallel for schedule(static) if (m > 16)
  for (int t0 = 0; t0 < m; t0 += 16) {
    const int N = std::min(16, m - t0);
    const __m512i idx = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                           _mm512_set1_epi32(N));
    uint16_t* base = out + size_t(t0) * KC * 64;
    for (int t = 0; t < N; ++t) {
      const float* xr = x + size_t(t0 + t) * K;
      for (int kc = 0; kc < KC; ++kc) {
        const int k0 = 32 * kc, left = K - k0;
        const __mmask16 m0 = left >= 16 ? __mmask16(0xffff) : __mmask16((1u << left) - 1u);
        const __mmask16 m1 = left >= 32 ? __mmask16(0xffff)
                             : left > 16 ? __mmask16((1u << (left - 16)) - 1u) : __mmask16(0);
        const __m512 v0 = _mm512_maskz_loadu_ps(m0, xr + k0);
        const __m512 v1 = _mm512_maskz_loadu_ps(m1, xr + k0 + 16);
        const __m512i h0 = bf16_rne_avx512(v0), h1 = bf16_rne_avx512(v1);
        const __m512i l0 = bf16_rne_avx512(_mm512_sub_ps(v0, _mm512_castsi512_ps(_mm512_slli_epi32(h0, 16))));
        const __m512i l1 = bf16_rne_avx512(_mm512_sub_ps(v1, _mm512_castsi512_ps(_mm512_slli_epi32(h1, 16))));
        // 16 pairs (value 2i, 2i + 1) as 32-bit words
        const __m512i hp = _mm512_inserti64x4(_mm512_castsi256_si512(_mm512_cvtepi32_epi16(h0)),
                                              _mm512_cvtepi32_epi16(h1), 1);
        const __m512i lp = _mm512_inserti64x4(_mm512_castsi256_si512(_mm512_cvtepi32_epi16(l0)),
                                              _mm512_cvtepi32_epi16(l1), 1);
        uint16_t* bh = base + size_t(2 * kc) * 32 * N;
        _mm512_i32scatter_epi32(bh + 2 * t, idx, hp, 4);
        _mm512_i32scatter_epi32(bh + 32 * N + 2 * t, idx, lp, 4);
      }
    }
  }
}

GPTOSS_AMX_BF16 static void bf16w_gemm_rows_amx(const uint16_t* W, size_t ldw, int r0, int r1,
                                                const uint16_t* xb, int m, int K,
                                                const float* bias, float* out, int ldo) {
  const int KC = (K + 31) / 32, kfull = K / 32;
  alignas(64) float cbuf[16 * 16];
  alignas(64) uint16_t apad[16 * 32];  // a chunk of rows past r1 or past K, zero-filled
  AmxTileConfig cfg;
  int cfg_n = -1;
  for (int t0 = 0; t0 < m; t0 += 16) {
    const int N = std::min(16, m - t0);
    if (N != cfg_n) {  // C: 16 rows x N tokens; A: 16 rows x 32 bf16; B (hi, lo): 16 x N pairs
      cfg.rows[0] = 16, cfg.colsb[0] = uint16_t(4 * N);
      cfg.rows[1] = 16, cfg.colsb[1] = 64;
      cfg.rows[2] = cfg.rows[3] = 16, cfg.colsb[2] = cfg.colsb[3] = uint16_t(4 * N);
      _tile_loadconfig(&cfg);
      cfg_n = N;
    }
    const uint16_t* xt = xb + size_t(t0) * KC * 64;
    for (int r = r0; r < r1; r += 16) {
      const int rows = std::min(16, r1 - r);
      const uint16_t* wr = W + size_t(r) * ldw;
      _tile_zero(0);
      for (int kc = 0; kc < KC; ++kc) {
        const uint16_t* bh = xt + size_t(2 * kc) * 32 * N;
        if (rows == 16 && kc < kfull) {
          if (kc + 8 < kfull)
            for (int i = 0; i < 16; ++i)
              _mm_prefetch(reinterpret_cast<const char*>(wr + size_t(i) * ldw + 32 * (kc + 8)),
                           _MM_HINT_T0);
          _tile_loadd(1, wr + 32 * size_t(kc), ldw * 2);
        } else {
          for (int i = 0; i < 16; ++i)
            for (int j = 0; j < 32; ++j) {
              const int k = 32 * kc + j;
              apad[i * 32 + j] = i < rows && k < K ? wr[size_t(i) * ldw + k] : uint16_t(0);
            }
          _tile_loadd(1, apad, 64);
        }
        _tile_loadd(2, bh, 4 * N);
        _tile_loadd(3, bh + 32 * N, 4 * N);
        _tile_dpbf16ps(0, 1, 2);
        _tile_dpbf16ps(0, 1, 3);
      }
      _tile_stored(0, cbuf, 64);
      for (int i = 0; i < rows; ++i) {
        const float b = bias ? bias[r + i] : 0.f;
        for (int t = 0; t < N; ++t) out[size_t(t0 + t) * ldo + r + i] = cbuf[i * 16 + t] + b;
      }
    }
  }
  _tile_release();
}
#endif

static bool bf16_amx_active() {
#if defined(GPTOSS_HAVE_AMX_BF16)
  return active_isa() >= Isa::Amx;
#else
  return false;
#endif
}

// the one-level code (bf16 activations on vdpbf16ps) serves this call
static bool bf16_x_active(int levels) { return levels == 1 && active_isa() == Isa::Avx512Bf16; }

bool bf16_wants_pair_order() {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  return active_isa() >= Isa::Avx2;  // every SIMD level (AVX2, AVX-512, AMX) reads prepared x
#else
  return false;
#endif
}

size_t bf16_pair_order_floats(int m, int K, int levels) {
  if (bf16_x_active(levels)) return (size_t(m) * size_t(K) + 1) / 2;
  return bf16_amx_active() ? size_t(m) * size_t((K + 31) / 32) * 32 : size_t(m) * size_t(K);
}

void bf16_pair_order(const float* x, int m, int K, float* out, int levels) {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  if (bf16_x_active(levels)) {  // bf16(x) in K order
    uint16_t* o = reinterpret_cast<uint16_t*>(out);
    const size_t n = size_t(m) * size_t(K), n16 = n / 16 * 16;
    bf16_round_avx512(x, n16, o);
    for (size_t i = n16; i < n; ++i) o[i] = f32_to_bf16(x[i]);
    return;
  }
#endif
#if defined(GPTOSS_HAVE_AMX_BF16)
  if (bf16_amx_active()) {
    bf16_amx_prepare(x, m, K, reinterpret_cast<uint16_t*>(out));
    return;
  }
#endif
  // runs of 16 (AVX2) or 32 (AVX-512): the even values, then the odd ones; the tail in place
  const int run = active_isa() >= Isa::Avx512Bw ? 32 : 16, half = run / 2;
#pragma omp parallel for schedule(static) if (m > 16)
  for (int t = 0; t < m; ++t) {
    const float* xr = x + size_t(t) * K;
    float* o = out + size_t(t) * K;
    int k = 0;
    for (; k + run <= K; k += run)
      for (int j = 0; j < half; ++j) o[k + j] = xr[k + 2 * j], o[k + half + j] = xr[k + 2 * j + 1];
    for (; k < K; ++k) o[k] = xr[k];
  }
}

void bf16w_gemm_rows(const uint16_t* W, size_t ldw, int r0, int r1, const float* x,
                     const float* xpair, int m, int K, const float* bias, float* out, int ldo,
                     int levels) {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  const Isa isa = active_isa();
  if (bf16_x_active(levels)) {
    GPTOSS_CHECK(xpair != nullptr, "bf16w_gemm_rows: the one-level kernel needs x as bf16 (bf16_pair_order)");
    return bf16x_gemm_rows_avx512(W, ldw, r0, r1, reinterpret_cast<const uint16_t*>(xpair), m, K,
                                  bias, out, ldo);
  }
#if defined(GPTOSS_HAVE_AMX_BF16)
  if (isa >= Isa::Amx) {
    GPTOSS_CHECK(xpair != nullptr, "bf16w_gemm_rows: the AMX kernel needs x prepared (bf16_pair_order)");
    return bf16w_gemm_rows_amx(W, ldw, r0, r1, reinterpret_cast<const uint16_t*>(xpair), m, K,
                               bias, out, ldo);
  }
#endif
  if (isa >= Isa::Avx2)
    GPTOSS_CHECK(xpair != nullptr, "bf16w_gemm_rows: the " << isa_name(isa)
                                                           << " kernel needs x in pair order");
  if (isa >= Isa::Avx512Bw) return bf16w_gemm_rows_avx512(W, ldw, r0, r1, xpair, m, K, bias, out, ldo);
  if (isa >= Isa::Avx2) return bf16w_gemm_rows_avx2(W, ldw, r0, r1, xpair, m, K, bias, out, ldo);
#endif
  bf16w_gemm_rows_plain(W, ldw, r0, r1, x, m, K, bias, out, ldo);
}

}  // namespace cpu
}  // namespace gptoss
