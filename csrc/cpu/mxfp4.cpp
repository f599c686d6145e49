// MXFP4 on the CPU.
//
// Decode (dequant): a 256-entry table maps each byte to its two values, times the E8M0 scale.
//
// The expert matmul works straight from the 4-bit codes with integer dot products. A code c
// becomes the unsigned byte u = 2*value(c) + 12 (0..24, exact), activations are quantized per
// 32-block into two int8 levels (Q8Act), and the products sum as
//   sum(value * x) = (sum(u * q) - 12 * sum(q)) / 2, per level,
// where the -12 * sum(q) correction is precomputed per 32-bit lane (Q8Act::c1/c2) and seeds the
// accumulator. The AVX-512 version does this with vpdpbusd (VNNI; without it vpmaddubsw + vpmaddwd): one 64-byte load covers 4 blocks
// (128 values), two vpshufb turn the low and high nibbles into bytes, and each int32 lane
// accumulates 8 products of one block; the block's E8M0 scale is applied as a float multiply per
// lane group. The plain version does the same integer arithmetic in scalar code, so the two agree
// up to float32 summation order. Work maps to threads by rows (callers split [r0, r1)); several
// activation rows (prefill) share each decoded weight vector.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "common/numeric.h"
#include "cpu/kernels.h"
#include "gptoss/error.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace gptoss {
namespace cpu {

namespace {
struct BytePairs {
  float v[256][2];
  BytePairs() {
    for (int b = 0; b < 256; ++b) {
      v[b][0] = fp4_e2m1_to_f32(b & 15);
      v[b][1] = fp4_e2m1_to_f32(b >> 4);
    }
  }
};
const BytePairs& byte_pairs() {
  static const BytePairs t;
  return t;
}
// code -> 2 * value + 12: 12, 13, 14, 15, 16, 18, 20, 24, 12, 11, 10, 9, 8, 6, 4, 0
constexpr int kPrefetchRows = 4;
alignas(64) const uint8_t kU8Lut[16] = {12, 13, 14, 15, 16, 18, 20, 24,
                                        12, 11, 10, 9, 8, 6, 4, 0};
}  // namespace

void f32_mf4_dequant(const uint8_t* blocks, const uint8_t* scales, size_t rows, size_t nb,
                     float* out) {
  const BytePairs& t = byte_pairs();
  const long long n = (long long)(rows * nb);
#pragma omp parallel for schedule(static) if (n > 4096)
  for (long long i = 0; i < n; ++i) {
    const uint8_t* b = blocks + i * 16;
    const float s = e8m0_to_f32(scales[i]);
    float* o = out + i * 32;
    for (int j = 0; j < 16; ++j) {
      o[2 * j] = t.v[b[j]][0] * s;
      o[2 * j + 1] = t.v[b[j]][1] * s;
    }
  }
}

// ------------------------------------------------------------------------------------ Q8Act
size_t Q8Act::bytes(int m, int K) {
  const size_t nbp = size_t((K / 32 + 3) / 4 * 4);
  return size_t(m) * nbp * (16 * 4 + 4 * 4 * 4) + 64;
}

Q8Act Q8Act::carve(void* ws, int m, int K) {
  Q8Act q;
  q.nb = K / 32;
  q.nbp = (q.nb + 3) / 4 * 4;
  const size_t nbp = size_t(q.nbp);
  uint8_t* p = static_cast<uint8_t*>(ws);
  p = reinterpret_cast<uint8_t*>((reinterpret_cast<uintptr_t>(p) + 63) & ~uintptr_t(63));
  auto take = [&](size_t bytes) {
    uint8_t* r = p;
    p += bytes;
    return r;
  };
  q.c1 = reinterpret_cast<int32_t*>(take(size_t(m) * nbp * 16));
  q.c2 = reinterpret_cast<int32_t*>(take(size_t(m) * nbp * 16));
  q.step = reinterpret_cast<float*>(take(size_t(m) * nbp * 16));
  q.step1 = reinterpret_cast<float*>(take(size_t(m) * nbp * 16));
  q.e1 = reinterpret_cast<int8_t*>(take(size_t(m) * nbp * 16));
  q.o1 = reinterpret_cast<int8_t*>(take(size_t(m) * nbp * 16));
  q.e2 = reinterpret_cast<int8_t*>(take(size_t(m) * nbp * 16));
  q.o2 = reinterpret_cast<int8_t*>(take(size_t(m) * nbp * 16));
  return q;
}

void q8_quantize(const float* x, int m, int K, const Q8Act& q) {
  GPTOSS_CHECK(K % 32 == 0 && K / 32 == q.nb, "q8_quantize: K = " << K << " does not match "
                                                                   << q.nb << " blocks");
  const int nbp = q.nbp;
  for (int t = 0; t < m; ++t) {
    const float* xr = x + size_t(t) * K;
    int8_t* e1 = q.e1 + size_t(t) * nbp * 16;
    int8_t* o1 = q.o1 + size_t(t) * nbp * 16;
    int8_t* e2 = q.e2 + size_t(t) * nbp * 16;
    int8_t* o2 = q.o2 + size_t(t) * nbp * 16;
    int32_t* c1 = q.c1 + size_t(t) * nbp * 4;
    int32_t* c2 = q.c2 + size_t(t) * nbp * 4;
    float* st = q.step + size_t(t) * nbp * 4;
    float* st1 = q.step1 + size_t(t) * nbp * 4;
    for (int b = 0; b < nbp; ++b) {
      if (b >= q.nb) {  // padding: contributes nothing
        std::memset(e1 + b * 16, 0, 16);
        std::memset(o1 + b * 16, 0, 16);
        std::memset(e2 + b * 16, 0, 16);
        std::memset(o2 + b * 16, 0, 16);
        for (int g = 0; g < 4; ++g)
          c1[b * 4 + g] = c2[b * 4 + g] = 0, st[b * 4 + g] = st1[b * 4 + g] = 0.f;
        continue;
      }
      const float* xb = xr + b * 32;
      float amax = 0.f;
      for (int i = 0; i < 32; ++i) amax = std::max(amax, std::fabs(xb[i]));
      const float d = amax / 127.0f;
      const float inv1 = amax > 0 ? 127.0f / amax : 0.f;
      const float inv2 = amax > 0 ? 254.0f * 127.0f / amax : 0.f;
      int8_t l1[32], l2[32];
      for (int i = 0; i < 32; ++i) {
        float a = std::nearbyint(xb[i] * inv1);
        a = std::min(127.f, std::max(-127.f, a));
        float r = xb[i] - a * d;
        float c = std::nearbyint(r * inv2);
        c = std::min(127.f, std::max(-127.f, c));
        l1[i] = int8_t(a);
        l2[i] = int8_t(c);
      }
      for (int j = 0; j < 16; ++j) {
        e1[b * 16 + j] = l1[2 * j];
        o1[b * 16 + j] = l1[2 * j + 1];
        e2[b * 16 + j] = l2[2 * j];
        o2[b * 16 + j] = l2[2 * j + 1];
      }
      for (int g = 0; g < 4; ++g) {
        int s1 = 0, s2 = 0;
        for (int j = 4 * g; j < 4 * g + 4; ++j) {
          s1 += l1[2 * j] + l1[2 * j + 1];
          s2 += l2[2 * j] + l2[2 * j + 1];
        }
        c1[b * 4 + g] = -12 * s1;
        c2[b * 4 + g] = -12 * s2;
        st[b * 4 + g] = d / 254.0f * 0.5f;
        st1[b * 4 + g] = d * 0.5f;
      }
    }
  }
}

// ------------------------------------------------------------------------------------ plain
static void mf4w_q8_gemm_rows_plain(const uint8_t* blocks, const uint8_t* scales, int r0, int r1,
                                    const Q8Act& q, int m, const float* bias, float* out,
                                    int ldo, int levels) {
  const int nb = q.nb, nbp = q.nbp;
  for (int r = r0; r < r1; ++r) {
    const uint8_t* wr = blocks + size_t(r) * nb * 16;
    const uint8_t* sr = scales + size_t(r) * nb;
    for (int t = 0; t < m; ++t) {
      const int8_t* e1 = q.e1 + size_t(t) * nbp * 16;
      const int8_t* o1 = q.o1 + size_t(t) * nbp * 16;
      const int8_t* e2 = q.e2 + size_t(t) * nbp * 16;
      const int8_t* o2 = q.o2 + size_t(t) * nbp * 16;
      const int32_t* c1 = q.c1 + size_t(t) * nbp * 4;
      const int32_t* c2 = q.c2 + size_t(t) * nbp * 4;
      const float* st = q.step + size_t(t) * nbp * 4;
      const float* st1 = q.step1 + size_t(t) * nbp * 4;
      float acc = 0.f;
      for (int b = 0; b < nb; ++b) {
        const float ws = e8m0_to_f32(sr[b]);
        float fb = 0.f;
        for (int g = 0; g < 4; ++g) {
          int32_t a1 = c1[b * 4 + g], a2 = c2[b * 4 + g];
          for (int j = 4 * g; j < 4 * g + 4; ++j) {
            const uint8_t byte = wr[b * 16 + j];
            const int32_t lo = kU8Lut[byte & 15], hi = kU8Lut[byte >> 4];
            a1 += lo * e1[b * 16 + j] + hi * o1[b * 16 + j];
            a2 += lo * e2[b * 16 + j] + hi * o2[b * 16 + j];
          }
          fb += levels == 2 ? (float(a1) * 254.0f + float(a2)) * st[b * 4 + g]
                            : float(a1) * st1[b * 4 + g];
        }
        acc += fb * ws;
      }
      out[size_t(t) * ldo + r] = acc + (bias ? bias[r] : 0.f);
    }
  }
}

// ------------------------------------------------------------------------------------ AVX-512
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
// Compiled for AVX-512 F/BW/VL/DQ only, so the compiler never emits a VNNI instruction on its
// own; the VNNI = true kernels issue vpdpbusd explicitly (dot_u8s8 below).
#define GPTOSS_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq")))

// acc + per int32 lane the sum of 4 products u8 * s8. Exact either way (the 16-bit pair sums of
// vpmaddubsw reach at most 2 * 24 * 127, far from saturating), so both give the same bits.
template <bool VNNI>
GPTOSS_AVX512 static inline __m512i dot_u8s8(__m512i acc, __m512i w, __m512i x) {
  if (VNNI) {
    __asm__("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(w), "v"(x));
    return acc;
  }
  const __m512i p = _mm512_maddubs_epi16(w, x);
  return _mm512_add_epi32(acc, _mm512_madd_epi16(p, _mm512_set1_epi16(1)));
}

GPTOSS_AVX512 static inline __m512 expand_scales4(const uint8_t* s, int count) {
  // 4 E8M0 bytes -> 16 float lanes, each block's 2^(s-127) repeated for its 4 lanes
  uint32_t w = 0;
  if (count == 4) std::memcpy(&w, s, 4);  // constant size: a plain load
  else for (int i = 0; i < count; ++i) w |= uint32_t(s[i]) << (8 * i);
  const __m128i bytes = _mm_shuffle_epi8(
      _mm_cvtsi32_si128(int(w)), _mm_setr_epi8(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu8_epi32(bytes), 23));
}

// RB weight rows against TB activation rows at a time (RB * TB accumulators): decode uses
// RB = 2, TB = 1 (two independent chains, activations loaded once for both rows); prefill uses
// RB = 1, TB = 4 (each decoded weight vector serves 4 tokens). LV: activation levels (1 or 2).
template <int RB, int TB, int LV, bool VNNI>
GPTOSS_AVX512 static void mf4w_avx512_blk(const uint8_t* blocks, const uint8_t* scales, int r,
                                          const Q8Act& q, int t0, const float* bias, float* out,
                                          int ldo) {
  const int nb = q.nb, nbp = q.nbp;
  const __m512i lut = _mm512_broadcast_i32x4(_mm_load_si128(reinterpret_cast<const __m128i*>(kU8Lut)));
  const __m512i low4 = _mm512_set1_epi8(0x0f);
  const size_t xs = size_t(nbp) * 16, cs = size_t(nbp) * 4;
  __m512 acc[RB][TB];
  for (int i = 0; i < RB; ++i)
    for (int t = 0; t < TB; ++t) acc[i][t] = _mm512_setzero_ps();
  for (int i = 0; i < RB; ++i) {  // this row's scales, kPrefetchRows ahead (nb bytes, <= 2 lines here)
    const uint8_t* sp = scales + size_t(r + i + kPrefetchRows) * nb;
    for (int j = 0; j < nb; j += 64) _mm_prefetch(reinterpret_cast<const char*>(sp + j), _MM_HINT_T0);
  }
  for (int b = 0; b < nb; b += 4) {
    const int nblk = std::min(4, nb - b);
    __m512i wl[RB], wh[RB];
    __m512 ws[RB];
    for (int i = 0; i < RB; ++i) {
      const uint8_t* wr = blocks + size_t(r + i) * nb * 16 + size_t(b) * 16;
      // the hardware prefetcher alone does not keep enough lines in flight for this
      // compute-heavy loop: ask for the same blocks kPrefetchRows rows ahead
      _mm_prefetch(reinterpret_cast<const char*>(wr + size_t(kPrefetchRows) * nb * 16), _MM_HINT_T0);
      const __m512i w = nblk == 4 ? _mm512_loadu_si512(wr)
                                  : _mm512_maskz_loadu_epi8((__mmask64)((1ull << (16 * nblk)) - 1), wr);
      wl[i] = _mm512_shuffle_epi8(lut, _mm512_and_si512(w, low4));
      wh[i] = _mm512_shuffle_epi8(lut, _mm512_and_si512(_mm512_srli_epi16(w, 4), low4));
      ws[i] = expand_scales4(scales + size_t(r + i) * nb + b, nblk);
    }
    for (int t = 0; t < TB; ++t) {
      const size_t tt = size_t(t0 + t);
      const __m512i e1 = _mm512_load_si512(q.e1 + tt * xs + b * 16);
      const __m512i o1 = _mm512_load_si512(q.o1 + tt * xs + b * 16);
      const __m512i c1 = _mm512_load_si512(q.c1 + tt * cs + b * 4);
      if (LV == 2) {
        const __m512i e2 = _mm512_load_si512(q.e2 + tt * xs + b * 16);
        const __m512i o2 = _mm512_load_si512(q.o2 + tt * xs + b * 16);
        const __m512i c2 = _mm512_load_si512(q.c2 + tt * cs + b * 4);
        const __m512 st = _mm512_load_ps(q.step + tt * cs + b * 4);
        for (int i = 0; i < RB; ++i) {
          __m512i a1 = dot_u8s8<VNNI>(c1, wl[i], e1);
          a1 = dot_u8s8<VNNI>(a1, wh[i], o1);
          __m512i a2 = dot_u8s8<VNNI>(c2, wl[i], e2);
          a2 = dot_u8s8<VNNI>(a2, wh[i], o2);
          const __m512 f = _mm512_fmadd_ps(_mm512_cvtepi32_ps(a1), _mm512_set1_ps(254.0f),
                                           _mm512_cvtepi32_ps(a2));
          acc[i][t] = _mm512_fmadd_ps(f, _mm512_mul_ps(ws[i], st), acc[i][t]);
        }
      } else {
        const __m512 st = _mm512_load_ps(q.step1 + tt * cs + b * 4);
        for (int i = 0; i < RB; ++i) {
          __m512i a1 = dot_u8s8<VNNI>(c1, wl[i], e1);
          a1 = dot_u8s8<VNNI>(a1, wh[i], o1);
          acc[i][t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(a1), _mm512_mul_ps(ws[i], st), acc[i][t]);
        }
      }
    }
  }
  for (int i = 0; i < RB; ++i) {
    const float bb = bias ? bias[r + i] : 0.f;
    for (int t = 0; t < TB; ++t) out[size_t(t0 + t) * ldo + r + i] = _mm512_reduce_add_ps(acc[i][t]) + bb;
  }
}

template <int LV, bool VNNI>
GPTOSS_AVX512 static void mf4w_q8_gemm_rows_avx512(const uint8_t* blocks, const uint8_t* scales,
                                                   int r0, int r1, const Q8Act& q, int m,
                                                   const float* bias, float* out, int ldo) {
  if (m == 1) {  // decode: four rows at a time
    int r = r0;
    for (; r + 4 <= r1; r += 4) mf4w_avx512_blk<4, 1, LV, VNNI>(blocks, scales, r, q, 0, bias, out, ldo);
    for (; r + 2 <= r1; r += 2) mf4w_avx512_blk<2, 1, LV, VNNI>(blocks, scales, r, q, 0, bias, out, ldo);
    if (r < r1) mf4w_avx512_blk<1, 1, LV, VNNI>(blocks, scales, r, q, 0, bias, out, ldo);
    return;
  }
  // prefill: 2 rows x 4 tokens per tile; each decoded weight vector serves 4 tokens and each
  // activation load 2 rows
  int r = r0;
  for (; r + 2 <= r1; r += 2) {
    int t = 0;
    for (; t + 4 <= m; t += 4) mf4w_avx512_blk<2, 4, LV, VNNI>(blocks, scales, r, q, t, bias, out, ldo);
    for (; t < m; ++t) mf4w_avx512_blk<2, 1, LV, VNNI>(blocks, scales, r, q, t, bias, out, ldo);
  }
  for (; r < r1; ++r) {
    int t = 0;
    for (; t + 4 <= m; t += 4) mf4w_avx512_blk<1, 4, LV, VNNI>(blocks, scales, r, q, t, bias, out, ldo);
    for (; t < m; ++t) mf4w_avx512_blk<1, 1, LV, VNNI>(blocks, scales, r, q, t, bias, out, ldo);
  }
}

// ------------------------------------------------------------------------------------ AVX2
// The same arithmetic with 256-bit vectors and no VNNI: vpmaddubsw multiplies the unsigned weight
// bytes by the signed activation bytes into 16-bit pair sums (at most 2 * 24 * 127, no
// saturation) and vpmaddwd by ones widens them to the int32 lane sums. One 32-byte load covers 2
// blocks; each 8-lane int32 accumulator holds 4 lanes per block, as in the AVX-512 kernel.
#define GPTOSS_AVX2_FMA __attribute__((target("avx2,fma")))

GPTOSS_AVX2_FMA static inline __m256i dot_u8s8_avx2(__m256i acc, __m256i w, __m256i x) {
  const __m256i p = _mm256_maddubs_epi16(w, x);
  return _mm256_add_epi32(acc, _mm256_madd_epi16(p, _mm256_set1_epi16(1)));
}

// RB weight rows against TB activation rows, as mf4w_avx512_blk does with 512-bit vectors: decode
// takes RB = 2, TB = 1 (each activation load serves two rows), prefill RB = 1, TB = 4 (each
// decoded weight vector serves four tokens); sized to the 16 ymm registers. Every accumulator
// sees the same operations in the same order whatever the tile, so the results do not depend on
// how rows and tokens are grouped.
template <int RB, int TB, int LV>
GPTOSS_AVX2_FMA static void mf4w_avx2_blk(const uint8_t* blocks, const uint8_t* scales, int r,
                                          const Q8Act& q, int t0, const float* bias, float* out,
                                          int ldo) {
  const int nb = q.nb, nbp = q.nbp;
  const __m256i lut = _mm256_broadcastsi128_si256(_mm_load_si128(reinterpret_cast<const __m128i*>(kU8Lut)));
  const __m256i low4 = _mm256_set1_epi8(0x0f);
  const size_t xs = size_t(nbp) * 16, cs = size_t(nbp) * 4;
  __m256 acc[RB][TB];
  for (int i = 0; i < RB; ++i)
    for (int t = 0; t < TB; ++t) acc[i][t] = _mm256_setzero_ps();
  for (int b = 0; b < nb; b += 2) {
    const int nblk = std::min(2, nb - b);
    __m256i wl[RB], wh[RB];
    __m256 ws[RB];
    for (int i = 0; i < RB; ++i) {
      const uint8_t* wr = blocks + size_t(r + i) * nb * 16 + size_t(b) * 16;
      if ((b & 3) == 0)
        _mm_prefetch(reinterpret_cast<const char*>(wr + size_t(kPrefetchRows) * nb * 16), _MM_HINT_T0);
      __m256i w;
      if (nblk == 2) {
        w = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wr));
      } else {
        w = _mm256_castsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(wr)));
        w = _mm256_inserti128_si256(w, _mm_setzero_si128(), 1);
      }
      wl[i] = _mm256_shuffle_epi8(lut, _mm256_and_si256(w, low4));
      wh[i] = _mm256_shuffle_epi8(lut, _mm256_and_si256(_mm256_srli_epi16(w, 4), low4));
      // 2 scales -> 8 lanes (4 per block) as 2^(s-127)
      const uint8_t* sr = scales + size_t(r + i) * nb;
      const int s0 = sr[b], s1 = nblk == 2 ? sr[b + 1] : 127;
      ws[i] = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_setr_epi32(s0, s0, s0, s0, s1, s1, s1, s1), 23));
    }
    for (int t = 0; t < TB; ++t) {
      const size_t tt = size_t(t0 + t);
      const size_t xo = tt * xs + size_t(b) * 16, co = tt * cs + size_t(b) * 4;
      const __m256i e1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q.e1 + xo));
      const __m256i o1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q.o1 + xo));
      const __m256i c1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q.c1 + co));
      if (LV == 2) {
        const __m256i e2 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q.e2 + xo));
        const __m256i o2 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q.o2 + xo));
        const __m256i c2 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q.c2 + co));
        const __m256 st = _mm256_loadu_ps(q.step + co);
        for (int i = 0; i < RB; ++i) {
          __m256i a1 = dot_u8s8_avx2(c1, wl[i], e1);
          a1 = dot_u8s8_avx2(a1, wh[i], o1);
          __m256i a2 = dot_u8s8_avx2(c2, wl[i], e2);
          a2 = dot_u8s8_avx2(a2, wh[i], o2);
          const __m256 f = _mm256_fmadd_ps(_mm256_cvtepi32_ps(a1), _mm256_set1_ps(254.0f),
                                           _mm256_cvtepi32_ps(a2));
          acc[i][t] = _mm256_fmadd_ps(f, _mm256_mul_ps(ws[i], st), acc[i][t]);
        }
      } else {
        const __m256 st = _mm256_loadu_ps(q.step1 + co);
        for (int i = 0; i < RB; ++i) {
          __m256i a1 = dot_u8s8_avx2(c1, wl[i], e1);
          a1 = dot_u8s8_avx2(a1, wh[i], o1);
          acc[i][t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(a1), _mm256_mul_ps(ws[i], st), acc[i][t]);
        }
      }
    }
  }
  for (int i = 0; i < RB; ++i) {
    const float bb = bias ? bias[r + i] : 0.f;
    for (int t = 0; t < TB; ++t) {
      const __m256 v = acc[i][t];
      __m128 h = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
      h = _mm_add_ps(h, _mm_movehl_ps(h, h));
      h = _mm_add_ss(h, _mm_shuffle_ps(h, h, 1));
      out[size_t(t0 + t) * ldo + r + i] = _mm_cvtss_f32(h) + bb;
    }
  }
}

template <int LV>
GPTOSS_AVX2_FMA static void mf4w_q8_gemm_rows_avx2(const uint8_t* blocks, const uint8_t* scales,
                                                   int r0, int r1, const Q8Act& q, int m,
                                                   const float* bias, float* out, int ldo) {
  if (m == 1) {  // decode: two rows per activation load
    int r = r0;
    for (; r + 2 <= r1; r += 2) mf4w_avx2_blk<2, 1, LV>(blocks, scales, r, q, 0, bias, out, ldo);
    if (r < r1) mf4w_avx2_blk<1, 1, LV>(blocks, scales, r, q, 0, bias, out, ldo);
    return;
  }
  for (int r = r0; r < r1; ++r) {  // prefill: each decoded weight vector serves 4 tokens
    int t = 0;
    for (; t + 4 <= m; t += 4) mf4w_avx2_blk<1, 4, LV>(blocks, scales, r, q, t, bias, out, ldo);
    for (; t < m; ++t) mf4w_avx2_blk<1, 1, LV>(blocks, scales, r, q, t, bias, out, ldo);
  }
}
#endif

void mf4w_q8_gemm_rows(const uint8_t* blocks, const uint8_t* scales, int r0, int r1,
                       const Q8Act& q, int m, const float* bias, float* out, int ldo, int levels) {
  GPTOSS_CHECK(levels == 1 || levels == 2, "mf4w_q8_gemm_rows: levels must be 1 or 2");
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  if (active_isa() >= Isa::Avx512) {
    if (levels == 2) mf4w_q8_gemm_rows_avx512<2, true>(blocks, scales, r0, r1, q, m, bias, out, ldo);
    else mf4w_q8_gemm_rows_avx512<1, true>(blocks, scales, r0, r1, q, m, bias, out, ldo);
    return;
  }
  if (active_isa() >= Isa::Avx512Bw) {
    if (levels == 2) mf4w_q8_gemm_rows_avx512<2, false>(blocks, scales, r0, r1, q, m, bias, out, ldo);
    else mf4w_q8_gemm_rows_avx512<1, false>(blocks, scales, r0, r1, q, m, bias, out, ldo);
    return;
  }
  if (active_isa() >= Isa::Avx2) {
    if (levels == 2) mf4w_q8_gemm_rows_avx2<2>(blocks, scales, r0, r1, q, m, bias, out, ldo);
    else mf4w_q8_gemm_rows_avx2<1>(blocks, scales, r0, r1, q, m, bias, out, ldo);
    return;
  }
#endif
  mf4w_q8_gemm_rows_plain(blocks, scales, r0, r1, q, m, bias, out, ldo, levels);
}

}  // namespace cpu
}  // namespace gptoss
