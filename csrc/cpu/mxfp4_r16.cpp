// MXFP4 experts repacked for the SIMD levels (AVX2, AVX-512, AMX): 16 rows interleaved ("r16"),
// int16 activations, exact integer block sums.
//
// Why another layout. On AVX2 the checkpoint layout (one row's blocks contiguous, mxfp4.cpp)
// costs a horizontal reduction per output row, a scalar build of each block's scale vector and
// two activation levels of vpmaddubsw + vpmaddwd per value. Here 16 rows of one 32-block are
// stored together, so one 32-byte load holds 4 codes of each of 16 rows, every int32 lane of the
// accumulators belongs to one row (no reductions), one activation pair broadcast serves 16 rows,
// and the 16 rows' scales of a block are one 16-byte load.
//
// Packed layout of an [R, nb] MXFP4 matrix: groups of 16 rows (the last padded with zero codes
// and scale 127), each group nb records of kR16RecordBytes:
//   bytes [32c, 32c + 32), c = 0..7: byte 16L + 2i + k holds byte 2c + k of row 8L + i
//   bytes [256, 272): the 16 rows' E8M0 scales in accumulator-lane order (kLaneRow below)
//
// Arithmetic. A code c is taken as the unsigned u = 2 * value(c) + 12 (0..24, as in mxfp4.cpp),
// zero-extended to 16 bits. An activation block is quantized to int16: q = round(x / step),
// step = max|x| / 32767, so each value is off by at most max|x| / 65534 -- the same accuracy as
// mxfp4.cpp's two int8 levels (127 * 254 steps), float32-class. vpmaddwd multiplies the weight
// pairs by an activation pair broadcast to every lane; per row and block the int32 sum
//   S = sum(u * q) - 12 * sum(q) = sum(2 * value * q)
// is exact (|S| <= 32 * 12 * 32767 < 2^24, so its float conversion is exact too), and the block
// adds fma(S, scale * step / 2, acc) in float32 in block order. The plain C++ version does the
// same operations, so the two give the same bits, and a row's result does not depend on how
// many tokens or rows share a call (decode and prefill agree exactly).
//
// AMX (the amx level, int16 code: levels 2). A call of 8 tokens or more runs on the AMX-BF16
// tiles instead. Each record (16 rows x one block) is decoded into one B tile of bf16 weights,
// 2^(s - 127) * value(code): exact, since an FP4 value has two significant bits. Each activation
// is split into two bf16 terms, hi = bf16(x) and lo = bf16(x - hi) (together 16 significant
// bits: |x - hi - lo| < 2^-17 |x|, closer than the int16 code's 1/65534 of the block
// maximum), and tdpbf16ps accumulates both terms' products in float32 in the C tile across all
// of K, in block order. The scales are in the weights, so there is no per-block float work and
// the tiles run at their full K of 32 pairs. Float32-class like the int16 code, but not its
// bits: a token's result does not depend on the other tokens of a call of 8 or more nor on its
// place in a tile, but a call of fewer tokens (decode) takes the AVX-512 int16 code. The
// activations' int16 split into a signed high and an unsigned low byte (q = 256 hi + lo) serves
// the one-token VNNI code. With levels 1 (activation_levels=1) the same tiles take the first term
// alone: bf16 activations (an error below 2^-9 of each value, within the int8 code's 1/254 of
// the block maximum), one tile product a block instead of two.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>
#include <vector>

#include "common/numeric.h"
#include "cpu/bf16_simd.h"
#include "cpu/kernels.h"
#include "gptoss/error.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace gptoss {
namespace cpu {

namespace {
// records (16 rows x one block) the AVX2 code prefetches ahead of the one it reads
constexpr int kR16PrefetchAhead = 4;  // 12 and 24 measured no faster (Zen 3)
// code -> 2 * value + 12
alignas(16) const uint8_t kU8[16] = {12, 13, 14, 15, 16, 18, 20, 24, 12, 11, 10, 9, 8, 6, 4, 0};
// accumulator lane -> row within the group: lanes 0..7 of the first accumulator, then the second
constexpr int kLaneRow[16] = {0, 1, 2, 3, 8, 9, 10, 11, 4, 5, 6, 7, 12, 13, 14, 15};

inline float scale_bits(uint8_t s) {  // 2^(s - 127) as the SIMD code makes it (s << 23)
  return bits_to_f32(uint32_t(s) << 23);
}
}  // namespace

size_t mf4_r16_bytes(int R, int nb) {
  return size_t((R + kR16 - 1) / kR16) * size_t(nb) * kR16RecordBytes;
}

void mf4_r16_pack(const uint8_t* blocks, const uint8_t* scales, int R, int nb, int g0, int g1,
                  uint8_t* out) {
  for (int g = g0; g < g1; ++g) {
    for (int b = 0; b < nb; ++b) {
      uint8_t* rec = out + (size_t(g) * nb + b) * kR16RecordBytes;
      for (int c = 0; c < 8; ++c)
        for (int L = 0; L < 2; ++L)
          for (int i = 0; i < 8; ++i) {
            const int r = g * kR16 + 8 * L + i;
            for (int k = 0; k < 2; ++k)
              rec[32 * c + 16 * L + 2 * i + k] =
                  r < R ? blocks[(size_t(r) * nb + b) * 16 + 2 * c + k] : uint8_t(0);
          }
      for (int p = 0; p < 16; ++p) {
        const int r = g * kR16 + kLaneRow[p];
        rec[256 + p] = r < R ? scales[size_t(r) * nb + b] : uint8_t(127);
      }
    }
  }
}

// ------------------------------------------------------------------------------------ Q16Act
// The step, hi, lo, xh and xl arrays carry 15 rows more than m: the AMX kernel's last tile of
// 16 tokens may read past the last token (and drops those rows' results).
size_t Q16Act::bytes(int m, int K) {
  const size_t nb = size_t(K / 32);
  return size_t(m) * nb * (32 * 2 + 4) + size_t(m + 15) * nb * (4 + 32 + 32 + 64 + 64) +
         size_t(m) * nb * (64 + 4 + 4) + 8 * 64;
}

static bool r16_panels_run(int m, int levels, bool exact);

Q16Act Q16Act::carve(void* ws, int m, int K, int levels, bool exact, bool r16) {
  GPTOSS_CHECK(levels == 1 || levels == 2, "Q16Act: levels = " << levels << ": must be 1 or 2");
  Q16Act q;
  q.nb = K / 32;
  q.levels = levels;
  q.exact = exact;
  const size_t nb = size_t(q.nb);
  uint8_t* p = static_cast<uint8_t*>(ws);
  auto align = [](uint8_t* x) {
    return reinterpret_cast<uint8_t*>((reinterpret_cast<uintptr_t>(x) + 63) & ~uintptr_t(63));
  };
  p = align(p);
  q.q = reinterpret_cast<int16_t*>(p);
  p += size_t(m) * nb * 64;
  q.corr = reinterpret_cast<int32_t*>(p);
  p += size_t(m) * nb * 4;
  q.step = reinterpret_cast<float*>(p);
  p = align(p + size_t(m + 15) * nb * 4);
  q.hi = reinterpret_cast<int8_t*>(p);
  p = align(p + size_t(m + 15) * nb * 32);
  q.lo = p;
  p = align(p + size_t(m + 15) * nb * 32);
  q.xh = reinterpret_cast<uint16_t*>(p);
  p = align(p + size_t(m + 15) * nb * 64);
  q.xl = reinterpret_cast<uint16_t*>(p);
  p = align(p + size_t(m + 15) * nb * 64);
  if (r16 && r16_panels_run(m, levels, exact)) {
    q.ms = m;
    q.qb = p;
    p = align(p + size_t(m) * nb * 64);
    q.corrb = reinterpret_cast<int32_t*>(p);
    p = align(p + size_t(m) * nb * 4);
    q.stepb = reinterpret_cast<float*>(p);
  }
  return q;
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
// The int16 code of one block (levels 2) at the AVX-512 levels: the plain code's operations in
// vectors, so the same values. amax is the same scalar maximum; the product x * inv is the
// same float multiply; clamping before the round-to-nearest-even conversion gives what rounding
// then clamping gives (also for an infinite product: a tiny block's inv overflows), and max_ps
// returns its second operand for a NaN, as std::max(-32767, NaN) does. vpermw puts the values in
// the pair order of the packed weights.
__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq"))) static void q16_block_avx512(
    const float* xb, int16_t* o, int8_t* hi, uint8_t* lo, int32_t* corr, float* step) {
  const __m512 x0 = _mm512_loadu_ps(xb), x1 = _mm512_loadu_ps(xb + 16);
  float amax = 0.f;
  {
    alignas(64) float v[32];
    _mm512_store_ps(v, _mm512_abs_ps(x0));
    _mm512_store_ps(v + 16, _mm512_abs_ps(x1));
    for (int i = 0; i < 32; ++i) amax = std::max(amax, v[i]);
  }
  const float inv = amax > 0 ? 32767.0f / amax : 0.f;
  const __m512 vi = _mm512_set1_ps(inv), lim = _mm512_set1_ps(32767.f), nlim = _mm512_set1_ps(-32767.f);
  const __m512i q0 = _mm512_cvtps_epi32(_mm512_min_ps(_mm512_max_ps(_mm512_mul_ps(x0, vi), nlim), lim));
  const __m512i q1 = _mm512_cvtps_epi32(_mm512_min_ps(_mm512_max_ps(_mm512_mul_ps(x1, vi), nlim), lim));
  const int32_t sum = _mm512_reduce_add_epi32(_mm512_add_epi32(q0, q1));
  const __m512i v16 = _mm512_inserti64x4(_mm512_castsi256_si512(_mm512_cvtepi32_epi16(q0)),
                                         _mm512_cvtepi32_epi16(q1), 1);
  const __m512i pair = _mm512_set_epi16(31, 29, 30, 28, 27, 25, 26, 24, 23, 21, 22, 20, 19, 17, 18, 16,
                                        15, 13, 14, 12, 11, 9, 10, 8, 7, 5, 6, 4, 3, 1, 2, 0);
  const __m512i ov = _mm512_permutexvar_epi16(pair, v16);
  _mm512_storeu_si512(o, ov);
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(hi), _mm512_cvtepi16_epi8(_mm512_srai_epi16(ov, 8)));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(lo),
                      _mm512_cvtepi16_epi8(_mm512_and_si512(ov, _mm512_set1_epi16(255))));
  *corr = -12 * sum;
  *step = amax / 32767.0f * 0.5f;
}
#endif

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
// x as two bf16 terms for the AMX tiles: h = bf16(x) rounded to nearest even (a NaN a quiet NaN,
// as f32_to_bf16), l = bf16(x - h) (where l is given); n a multiple of 16
__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq"))) static void bf16_terms_avx512(
    const float* x, size_t n, uint16_t* h, uint16_t* l) {
  for (size_t i = 0; i < n; i += 16) {
    const __m512 v = _mm512_loadu_ps(x + i);
    const __m512i hb = bf16_rne_avx512(v);
    const __m512i lb = bf16_rne_avx512(_mm512_sub_ps(v, _mm512_castsi512_ps(_mm512_slli_epi32(hb, 16))));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(h + i), _mm512_cvtepi32_epi16(hb));
    if (l) _mm256_storeu_si256(reinterpret_cast<__m256i*>(l + i), _mm512_cvtepi32_epi16(lb));
  }
}
#endif

static void q16_quantize_rows(const float* x, int m, int K, const Q16Act& q);

void q16_quantize(const float* x, int m, int K, const Q16Act& q) {
  GPTOSS_CHECK(K % 32 == 0 && K / 32 == q.nb,
               "q16_quantize: K = " << K << " does not match " << q.nb << " blocks");
  q16_quantize_rows(x, m, K, q);
  if (!q.ms) return;
  const size_t nb = size_t(q.nb), ms = size_t(q.ms);
  for (int t = 0; t < m; ++t)  // the block-major copies (rows t of this call: from_row keeps them)
    for (size_t b = 0; b < nb; ++b) {
      const size_t i = size_t(t) * nb + b, j = b * ms + size_t(t);
      std::memcpy(q.qb + j * 64, q.q + i * 32, 64);
      q.corrb[j] = q.corr[i];
      q.stepb[j] = q.step[i];
    }
}

static void q16_quantize_rows(const float* x, int m, int K, const Q16Act& q) {
  const int nb = q.nb;
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  if (active_isa() >= Isa::Amx && !q.exact)  // the AMX kernel's bf16 terms (levels 1: the first only)
    bf16_terms_avx512(x, size_t(m) * K, q.xh, q.levels == 2 ? q.xl : nullptr);
  if (q.levels == 2 && active_isa() >= Isa::Avx512Bw) {
    for (int t = 0; t < m; ++t)
      for (int b = 0; b < nb; ++b) {
        const size_t i = size_t(t) * nb + b;
        q16_block_avx512(x + size_t(t) * K + size_t(b) * 32, q.q + i * 32, q.hi + i * 32,
                         q.lo + i * 32, q.corr + i, q.step + i);
      }
    return;
  }
#endif
  for (int t = 0; t < m; ++t) {
    for (int b = 0; b < nb; ++b) {
      const float* xb = x + size_t(t) * K + size_t(b) * 32;
      float amax = 0.f;
      for (int i = 0; i < 32; ++i) amax = std::max(amax, std::fabs(xb[i]));
      if (q.levels == 1) {  // int8, as mxfp4.cpp's first level
        const float inv1 = amax > 0 ? 127.0f / amax : 0.f;
        int8_t v[32];
        int32_t sum = 0;
        for (int i = 0; i < 32; ++i) {
          float a = std::nearbyint(xb[i] * inv1);
          a = std::min(127.f, std::max(-127.f, a));
          v[i] = int8_t(a);
          sum += v[i];
        }
        uint8_t* o = reinterpret_cast<uint8_t*>(q.q + (size_t(t) * nb + b) * 32);
        for (int c = 0; c < 8; ++c)
          for (int j = 0; j < 2; ++j) {
            uint8_t* w = o + 4 * (2 * c + j);
            w[0] = w[2] = uint8_t(v[4 * c + j]);
            w[1] = w[3] = uint8_t(v[4 * c + j + 2]);
          }
        q.corr[size_t(t) * nb + b] = -12 * sum;
        q.step[size_t(t) * nb + b] = amax / 127.0f * 0.5f;
        continue;
      }
      const float inv = amax > 0 ? 32767.0f / amax : 0.f;
      int16_t v[32];
      int32_t sum = 0;
      for (int i = 0; i < 32; ++i) {
        float a = std::nearbyint(xb[i] * inv);
        a = std::min(32767.f, std::max(-32767.f, a));
        v[i] = int16_t(a);
        sum += v[i];
      }
      int16_t* o = q.q + (size_t(t) * nb + b) * 32;
      for (int c = 0; c < 8; ++c) {  // the pairs the packed weights meet (see the layout above)
        o[4 * c] = v[4 * c];
        o[4 * c + 1] = v[4 * c + 2];
        o[4 * c + 2] = v[4 * c + 1];
        o[4 * c + 3] = v[4 * c + 3];
      }
      for (int i = 0; i < 32; ++i) {  // arithmetic shift: hi in [-128, 127], lo in [0, 255]
        q.hi[(size_t(t) * nb + b) * 32 + i] = int8_t(o[i] >> 8);
        q.lo[(size_t(t) * nb + b) * 32 + i] = uint8_t(o[i] & 255);
      }
      q.corr[size_t(t) * nb + b] = -12 * sum;
      q.step[size_t(t) * nb + b] = amax / 32767.0f * 0.5f;
    }
  }
}

// ------------------------------------------------------------------------------------ plain
static void r16_group_plain(const uint8_t* pk, int nb, const Q16Act& q, int t, float* f16) {
  const int16_t* xq = q.q + size_t(t) * nb * 32;
  const int32_t* corr = q.corr + size_t(t) * nb;
  const float* step = q.step + size_t(t) * nb;
  float f[16] = {};
  for (int b = 0; b < nb; ++b) {
    const uint8_t* rec = pk + size_t(b) * kR16RecordBytes;
    const int16_t* xb = xq + size_t(b) * 32;
    const int8_t* x8 = reinterpret_cast<const int8_t*>(xb);  // levels 1: word 2c + j
    for (int p = 0; p < 16; ++p) {
      const int row = kLaneRow[p];
      const int L = row / 8, i = row % 8;
      int32_t s = corr[b];
      for (int c = 0; c < 8; ++c) {
        const uint8_t b0 = rec[32 * c + 16 * L + 2 * i], b1 = rec[32 * c + 16 * L + 2 * i + 1];
        if (q.levels == 1) {
          s += int32_t(kU8[b0 & 15]) * x8[8 * c] + int32_t(kU8[b1 & 15]) * x8[8 * c + 1];
          s += int32_t(kU8[b0 >> 4]) * x8[8 * c + 4] + int32_t(kU8[b1 >> 4]) * x8[8 * c + 5];
          continue;
        }
        s += int32_t(kU8[b0 & 15]) * xb[4 * c] + int32_t(kU8[b1 & 15]) * xb[4 * c + 1];
        s += int32_t(kU8[b0 >> 4]) * xb[4 * c + 2] + int32_t(kU8[b1 >> 4]) * xb[4 * c + 3];
      }
      const float ws = scale_bits(rec[256 + p]) * step[b];
      f[p] = std::fma(float(s), ws, f[p]);
    }
  }
  for (int p = 0; p < 16; ++p) f16[kLaneRow[p]] = f[p];
}

static void r16_rows_plain(const uint8_t* packed, int nb, int r0, int r1, const Q16Act& q, int m,
                           const float* bias, float* out, int ldo) {
  float f[16];
  for (int g = r0 / kR16; g * kR16 < r1; ++g) {
    const uint8_t* pk = packed + size_t(g) * nb * kR16RecordBytes;
    for (int t = 0; t < m; ++t) {
      r16_group_plain(pk, nb, q, t, f);
      for (int i = 0; i < kR16 && g * kR16 + i < r1; ++i) {
        const int r = g * kR16 + i;
        out[size_t(t) * ldo + r] = f[i] + (bias ? bias[r] : 0.f);
      }
    }
  }
}

// ------------------------------------------------------------------------------------ AVX2
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define GPTOSS_AVX2_FMA __attribute__((target("avx2,fma")))

// The float steps of a block, shared by the AVX2 and AVX-VNNI tiles: the exact int32 block sums
// aa (rows 0-3, 8-11) and ab (4-7, 12-15) of T tokens times the scale and the token's step into
// fa, fb, one fma per block in block order; then the lanes into row order.
template <int T>
GPTOSS_AVX2_FMA __attribute__((always_inline)) static inline void r16_block_fma_avx2(
    const uint8_t* rec, const Q16Act& q, int t0, int nb, int b, const __m256i* aa,
    const __m256i* ab, __m256* fa, __m256* fb) {
  const __m128i s8 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(rec + 256));
  const __m256 sa = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu8_epi32(s8), 23));
  const __m256 sb = _mm256_castsi256_ps(
      _mm256_slli_epi32(_mm256_cvtepu8_epi32(_mm_srli_si128(s8, 8)), 23));
  for (int t = 0; t < T; ++t) {
    const __m256 st = _mm256_set1_ps(q.step[size_t(t0 + t) * nb + b]);
    fa[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(aa[t]), _mm256_mul_ps(sa, st), fa[t]);
    fb[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(ab[t]), _mm256_mul_ps(sb, st), fb[t]);
  }
}
template <int T>
GPTOSS_AVX2_FMA __attribute__((always_inline)) static inline void r16_store_avx2(
    const __m256* fa, const __m256* fb, float* f) {
  for (int t = 0; t < T; ++t) {  // lanes (rows 0-3, 8-11 | 4-7, 12-15) -> row order
    _mm256_storeu_ps(f + 16 * t, _mm256_permute2f128_ps(fa[t], fb[t], 0x20));
    _mm256_storeu_ps(f + 16 * t + 8, _mm256_permute2f128_ps(fa[t], fb[t], 0x31));
  }
}

// One group of 16 rows against T tokens (t0 .. t0 + T): each chunk's 64 decoded weights serve
// all T tokens. f receives [T][16] floats in row order.
//
// Q8: the int8 activations (levels 1). vpmaddubsw multiplies the unsigned weight bytes of a chunk
// (lo codes: values 4c, 4c + 2 of each row; hi codes: 4c + 1, 4c + 3) by a broadcast pair of
// signed activation bytes, giving each row's two products in one 16-bit lane (16 rows in one
// register, |lane| <= 2 * 24 * 127); two chunks sum in 16 bits (|sum| <= 4 * 6096 < 2^15), and
// vpmaddwd of the interleaved sums of chunks (c, c + 1) and (c + 2, c + 3) by ones widens them to
// the rows' int32 lanes in the order of the int16 code. So the block sum is the same exact
// integer the plain code computes, and the float steps after it are the int16 code's.
template <int T, bool Q8>
GPTOSS_AVX2_FMA __attribute__((noinline)) static void r16_tile_avx2(const uint8_t* pk, int nb,
                                                                    const Q16Act& q, int t0,
                                                                    float* f) {
  const __m256i lut = _mm256_broadcastsi128_si256(_mm_load_si128(reinterpret_cast<const __m128i*>(kU8)));
  const __m256i low4 = _mm256_set1_epi8(0x0f);
  const __m256i zero = _mm256_setzero_si256();
  const __m256i ones = _mm256_set1_epi16(1);
  __m256 fa[T], fb[T];
  for (int t = 0; t < T; ++t) fa[t] = fb[t] = _mm256_setzero_ps();
  for (int b = 0; b < nb; ++b) {
    const uint8_t* rec = pk + size_t(b) * kR16RecordBytes;
    for (int o = 0; o < 320; o += 64)
      _mm_prefetch(reinterpret_cast<const char*>(rec + kR16PrefetchAhead * kR16RecordBytes + o), _MM_HINT_T0);
    __m256i aa[T], ab[T];
    for (int t = 0; t < T; ++t) aa[t] = ab[t] = _mm256_set1_epi32(q.corr[size_t(t0 + t) * nb + b]);
    if constexpr (Q8) {
      const int32_t* xw = reinterpret_cast<const int32_t*>(q.q);
      const size_t xs = size_t(nb) * 16;  // words per token
      for (int c4 = 0; c4 < 8; c4 += 4) {
        __m256i s01[T], s23[T];
        for (int cc = 0; cc < 4; ++cc) {
          const int c = c4 + cc;
          const __m256i w = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(rec + 32 * c));
          const __m256i lo = _mm256_shuffle_epi8(lut, _mm256_and_si256(w, low4));
          const __m256i hi = _mm256_shuffle_epi8(lut, _mm256_and_si256(_mm256_srli_epi16(w, 4), low4));
          for (int t = 0; t < T; ++t) {
            const int32_t* xp = xw + size_t(t0 + t) * xs + size_t(b) * 16 + 2 * c;
            const __m256i p = _mm256_add_epi16(_mm256_maddubs_epi16(lo, _mm256_set1_epi32(xp[0])),
                                               _mm256_maddubs_epi16(hi, _mm256_set1_epi32(xp[1])));
            __m256i& s = cc < 2 ? s01[t] : s23[t];
            s = (cc & 1) ? _mm256_add_epi16(s, p) : p;
          }
        }
        for (int t = 0; t < T; ++t) {
          aa[t] = _mm256_add_epi32(aa[t], _mm256_madd_epi16(_mm256_unpacklo_epi16(s01[t], s23[t]), ones));
          ab[t] = _mm256_add_epi32(ab[t], _mm256_madd_epi16(_mm256_unpackhi_epi16(s01[t], s23[t]), ones));
        }
      }
    } else {
      const size_t xs = size_t(nb) * 32;
      for (int c = 0; c < 8; ++c) {
        const __m256i w = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(rec + 32 * c));
        const __m256i lo = _mm256_shuffle_epi8(lut, _mm256_and_si256(w, low4));
        const __m256i hi = _mm256_shuffle_epi8(lut, _mm256_and_si256(_mm256_srli_epi16(w, 4), low4));
        const __m256i la = _mm256_unpacklo_epi8(lo, zero), lb = _mm256_unpackhi_epi8(lo, zero);
        const __m256i ha = _mm256_unpacklo_epi8(hi, zero), hb = _mm256_unpackhi_epi8(hi, zero);
        for (int t = 0; t < T; ++t) {
          const int16_t* xp = q.q + size_t(t0 + t) * xs + size_t(b) * 32 + 4 * c;
          int32_t pl, ph;
          std::memcpy(&pl, xp, 4);
          std::memcpy(&ph, xp + 2, 4);
          const __m256i xl = _mm256_set1_epi32(pl), xh = _mm256_set1_epi32(ph);
          aa[t] = _mm256_add_epi32(aa[t], _mm256_add_epi32(_mm256_madd_epi16(la, xl),
                                                           _mm256_madd_epi16(ha, xh)));
          ab[t] = _mm256_add_epi32(ab[t], _mm256_add_epi32(_mm256_madd_epi16(lb, xl),
                                                           _mm256_madd_epi16(hb, xh)));
        }
      }
    }
    r16_block_fma_avx2<T>(rec, q, t0, nb, b, aa, ab, fa, fb);
  }
  r16_store_avx2<T>(fa, fb, f);
}

template <bool Q8>
GPTOSS_AVX2_FMA static void r16_tile_avx2_n(int T, const uint8_t* pk, int nb, const Q16Act& q,
                                            int t0, float* f) {
  switch (T) {
    case 4: r16_tile_avx2<4, Q8>(pk, nb, q, t0, f); break;
    case 3: r16_tile_avx2<3, Q8>(pk, nb, q, t0, f); break;
    case 2: r16_tile_avx2<2, Q8>(pk, nb, q, t0, f); break;
    default: r16_tile_avx2<1, Q8>(pk, nb, q, t0, f); break;
  }
}

// With AVX-VNNI (the avx2vnni level: the VEX forms of the AVX-512 VNNI code's instructions on
// 256 bits, one group of 16 rows a register): the int16 code's vpmaddwd and add in one vpdpwssd;
// one token of it through the activations' byte split (q = 256 * hi + lo: 2 unpacks and 4
// vpdpbusd a chunk, the AVX-512 one-token code); and the int8 code (levels 1) with each row's
// four u of a chunk in one 32-bit lane against the four activation bytes from byte 2 of the
// block's word 2c on (one vpdpbusd for two chunks' worth of vpmaddubsw, add and vpmaddwd). The
// accumulators' lanes are the AVX2 code's (unpacks within 128-bit lanes) and the integers the
// same, so the float steps after them give the same bits.
#define GPTOSS_AVX2_VNNI __attribute__((target("avx2,fma,avxvnni")))
template <int T, bool Q8>
GPTOSS_AVX2_VNNI static void r16_tile_avxvnni(const uint8_t* pk, int nb, const Q16Act& q, int t0,
                                              float* f) {
  const __m256i lut = _mm256_broadcastsi128_si256(_mm_load_si128(reinterpret_cast<const __m128i*>(kU8)));
  const __m256i low4 = _mm256_set1_epi8(0x0f);
  const __m256i zero = _mm256_setzero_si256();
  const uint8_t* xq = reinterpret_cast<const uint8_t*>(q.q);
  const size_t xs = size_t(nb) * 64;  // activation bytes per token
  __m256 fa[T], fb[T];
  for (int t = 0; t < T; ++t) fa[t] = fb[t] = _mm256_setzero_ps();
  for (int b = 0; b < nb; ++b) {
    const uint8_t* rec = pk + size_t(b) * kR16RecordBytes;
    for (int o = 0; o < 320; o += 64)
      _mm_prefetch(reinterpret_cast<const char*>(rec + kR16PrefetchAhead * kR16RecordBytes + o), _MM_HINT_T0);
    __m256i aa[T], ab[T];
    if constexpr (!Q8 && T == 1) {  // one token: the byte split
      __m256i ha = zero, hb = zero, la = zero, lb = zero;
      const int8_t* xh = q.hi + (size_t(t0) * nb + b) * 32;
      const uint8_t* xl = q.lo + (size_t(t0) * nb + b) * 32;
      for (int c = 0; c < 8; ++c) {
        const __m256i w = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(rec + 32 * c));
        const __m256i lo = _mm256_shuffle_epi8(lut, _mm256_and_si256(w, low4));
        const __m256i hi = _mm256_shuffle_epi8(lut, _mm256_and_si256(_mm256_srli_epi16(w, 4), low4));
        const __m256i pa = _mm256_unpacklo_epi16(lo, hi), pb = _mm256_unpackhi_epi16(lo, hi);
        int32_t h4, l4;
        std::memcpy(&h4, xh + 4 * c, 4);
        std::memcpy(&l4, xl + 4 * c, 4);
        const __m256i H = _mm256_set1_epi32(h4), L = _mm256_set1_epi32(l4);
        ha = _mm256_dpbusd_avx_epi32(ha, pa, H);
        hb = _mm256_dpbusd_avx_epi32(hb, pb, H);
        la = _mm256_dpbusd_avx_epi32(la, L, pa);
        lb = _mm256_dpbusd_avx_epi32(lb, L, pb);
      }
      const __m256i corr = _mm256_set1_epi32(q.corr[size_t(t0) * nb + b]);
      aa[0] = _mm256_add_epi32(corr, _mm256_add_epi32(_mm256_slli_epi32(ha, 8), la));
      ab[0] = _mm256_add_epi32(corr, _mm256_add_epi32(_mm256_slli_epi32(hb, 8), lb));
    } else {
      for (int t = 0; t < T; ++t) aa[t] = ab[t] = _mm256_set1_epi32(q.corr[size_t(t0 + t) * nb + b]);
      for (int c = 0; c < 8; ++c) {
        const __m256i w = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(rec + 32 * c));
        const __m256i lo = _mm256_shuffle_epi8(lut, _mm256_and_si256(w, low4));
        const __m256i hi = _mm256_shuffle_epi8(lut, _mm256_and_si256(_mm256_srli_epi16(w, 4), low4));
        if constexpr (Q8) {
          const __m256i pa = _mm256_unpacklo_epi16(lo, hi), pb = _mm256_unpackhi_epi16(lo, hi);
          for (int t = 0; t < T; ++t) {
            int32_t x4;
            std::memcpy(&x4, xq + size_t(t0 + t) * xs + size_t(b) * 64 + 8 * c + 2, 4);
            const __m256i x = _mm256_set1_epi32(x4);
            aa[t] = _mm256_dpbusd_avx_epi32(aa[t], pa, x);
            ab[t] = _mm256_dpbusd_avx_epi32(ab[t], pb, x);
          }
        } else {
          const __m256i la = _mm256_unpacklo_epi8(lo, zero), lb = _mm256_unpackhi_epi8(lo, zero);
          const __m256i ha = _mm256_unpacklo_epi8(hi, zero), hb = _mm256_unpackhi_epi8(hi, zero);
          for (int t = 0; t < T; ++t) {
            const uint8_t* xp = xq + size_t(t0 + t) * xs + size_t(b) * 64 + 8 * c;
            int32_t pl, ph;
            std::memcpy(&pl, xp, 4);
            std::memcpy(&ph, xp + 4, 4);
            const __m256i xl = _mm256_set1_epi32(pl), xh = _mm256_set1_epi32(ph);
            aa[t] = _mm256_dpwssd_avx_epi32(_mm256_dpwssd_avx_epi32(aa[t], la, xl), ha, xh);
            ab[t] = _mm256_dpwssd_avx_epi32(_mm256_dpwssd_avx_epi32(ab[t], lb, xl), hb, xh);
          }
        }
      }
    }
    r16_block_fma_avx2<T>(rec, q, t0, nb, b, aa, ab, fa, fb);
  }
  r16_store_avx2<T>(fa, fb, f);
}

template <bool Q8>
GPTOSS_AVX2_VNNI static void r16_tile_avxvnni_n(int T, const uint8_t* pk, int nb, const Q16Act& q,
                                                int t0, float* f) {
  switch (T) {
    case 4: r16_tile_avxvnni<4, Q8>(pk, nb, q, t0, f); break;
    case 3: r16_tile_avxvnni<3, Q8>(pk, nb, q, t0, f); break;
    case 2: r16_tile_avxvnni<2, Q8>(pk, nb, q, t0, f); break;
    default: r16_tile_avxvnni<1, Q8>(pk, nb, q, t0, f); break;
  }
}

// f(std::integral_constant<int, n>{}) for 1 <= n <= N: a tile of n tokens as a compile-time size
template <int N, class F>
inline void with_tokens(int n, F&& f) {
  if constexpr (N > 1) {
    if (n < N) return with_tokens<N - 1>(n, f);
  }
  f(std::integral_constant<int, N>{});
}

// More tokens than one tile (prefill), int16 code without AVX-VNNI: as the AVX-512 VNNI panels
// below (r16_pair_panels): the codes of kPanelBlocks2 blocks decoded once into an L1-resident
// buffer (la, lb, ha, hb of each chunk) that every tile of T2 tokens then reads, the activations
// from the quantizer's block-major copies, the float accumulators in memory between blocks. The
// block sums are the same integers (int32 addition in another order) and each lane sees the same
// fma(S, scale * step, f) in block order, so the bits are r16_tile_avx2's. The vpmaddwd + vpaddd
// pairs are asm: with 16 registers GCC spilled the tile's accumulators to the stack every chunk
// (the 8 block sums, 4 decoded chunks and 2 broadcasts fit exactly when it does not).
#define GPTOSS_MADD_ACC(acc, w, x, tmp)                                        \
  __asm__("vpmaddwd %[xv], %[wv], %[t]\n\tvpaddd %[t], %[a], %[a]"           \
          : [a] "+x"(acc), [t] "=&x"(tmp)                                      \
          : [wv] "x"(w), [xv] "x"(x))
constexpr int kPanelBlocks2 = 16;  // 16 KB of decoded codes
constexpr int kPanelTokens2 = 128;
constexpr int kT2 = 4;

GPTOSS_AVX2_FMA static void r16_panel_decode_avx2(const uint8_t* pk, int b0, int nbp, __m256i* wd,
                                                  __m256* sc) {
  const __m256i lut = _mm256_broadcastsi128_si256(_mm_load_si128(reinterpret_cast<const __m128i*>(kU8)));
  const __m256i low4 = _mm256_set1_epi8(0x0f);
  const __m256i zero = _mm256_setzero_si256();
  for (int i = 0; i < nbp; ++i) {
    const uint8_t* rec = pk + size_t(b0 + i) * kR16RecordBytes;
    for (int o = 0; o < 320; o += 64)
      _mm_prefetch(reinterpret_cast<const char*>(rec + kR16PrefetchAhead * kR16RecordBytes + o), _MM_HINT_T0);
    for (int c = 0; c < 8; ++c) {
      const __m256i w = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(rec + 32 * c));
      const __m256i lo = _mm256_shuffle_epi8(lut, _mm256_and_si256(w, low4));
      const __m256i hi = _mm256_shuffle_epi8(lut, _mm256_and_si256(_mm256_srli_epi16(w, 4), low4));
      __m256i* d = wd + (8 * i + c) * 4;
      _mm256_store_si256(d, _mm256_unpacklo_epi8(lo, zero));
      _mm256_store_si256(d + 1, _mm256_unpackhi_epi8(lo, zero));
      _mm256_store_si256(d + 2, _mm256_unpacklo_epi8(hi, zero));
      _mm256_store_si256(d + 3, _mm256_unpackhi_epi8(hi, zero));
    }
    // the scales in the block sums' lanes: bytes 0-7 (rows 0-3, 8-11) and 8-15 (4-7, 12-15)
    const __m128i s8 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(rec + 256));
    sc[2 * i] = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu8_epi32(s8), 23));
    sc[2 * i + 1] = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu8_epi32(_mm_srli_si128(s8, 8)), 23));
  }
}

// T tokens from t0 over a decoded panel; f: [T][16] floats (fa lanes, then fb lanes)
template <int T>
GPTOSS_AVX2_FMA __attribute__((noinline)) static void r16_panel_tile_avx2(
    const __m256i* wd, const __m256* sc, int b0, int nbp, const Q16Act& q, int t0, float* f) {
  const size_t bs = size_t(q.ms);
  const uint8_t* xb = q.qb + (size_t(b0) * bs + size_t(t0)) * 64;
  const int32_t* cr = q.corrb + size_t(b0) * bs + size_t(t0);
  const float* sp = q.stepb + size_t(b0) * bs + size_t(t0);
  for (int i = 0; i < nbp; ++i, xb += bs * 64, cr += bs, sp += bs) {
    __asm__ volatile("" ::: "memory");  // f is memory (see r16_panel_tile)
    __m256i aa[T], ab[T];
    for (int t = 0; t < T; ++t) aa[t] = ab[t] = _mm256_set1_epi32(cr[t]);
    for (int c = 0; c < 8; ++c) {
      const __m256i* d = wd + (8 * i + c) * 4;
      const __m256i la = _mm256_load_si256(d), lb = _mm256_load_si256(d + 1);
      const __m256i ha = _mm256_load_si256(d + 2), hb = _mm256_load_si256(d + 3);
      for (int t = 0; t < T; ++t) {
        int32_t pl, ph;
        std::memcpy(&pl, xb + 64 * t + 8 * c, 4);
        std::memcpy(&ph, xb + 64 * t + 8 * c + 4, 4);
        const __m256i xl = _mm256_set1_epi32(pl), xh = _mm256_set1_epi32(ph);
        __m256i tmp;
        GPTOSS_MADD_ACC(aa[t], la, xl, tmp);
        GPTOSS_MADD_ACC(aa[t], ha, xh, tmp);
        GPTOSS_MADD_ACC(ab[t], lb, xl, tmp);
        GPTOSS_MADD_ACC(ab[t], hb, xh, tmp);
      }
    }
    const __m256 sa = sc[2 * i], sb = sc[2 * i + 1];
    for (int t = 0; t < T; ++t) {
      const __m256 st = _mm256_set1_ps(sp[t]);
      float* ft = f + 16 * t;
      _mm256_store_ps(ft, _mm256_fmadd_ps(_mm256_cvtepi32_ps(aa[t]), _mm256_mul_ps(sa, st),
                                          _mm256_load_ps(ft)));
      _mm256_store_ps(ft + 8, _mm256_fmadd_ps(_mm256_cvtepi32_ps(ab[t]), _mm256_mul_ps(sb, st),
                                              _mm256_load_ps(ft + 8)));
    }
  }
}

// group g (pk) against tokens [0, m) through decoded panels, plus the bias, into out (rows of it)
GPTOSS_AVX2_FMA __attribute__((noinline)) static void r16_group_panels_avx2(
    const uint8_t* pk, int nb, const Q16Act& q, int m, const float* bias, int rows, float* out,
    size_t ldo) {
  alignas(32) __m256i wd[kPanelBlocks2 * 8 * 4];
  alignas(32) __m256 sc[kPanelBlocks2 * 2];
  alignas(32) float f[kPanelTokens2 * 16];
  for (int ts = 0; ts < m; ts += kPanelTokens2) {
    const int mt = std::min(kPanelTokens2, m - ts);
    std::memset(f, 0, sizeof(float) * 16 * size_t(mt));
    for (int b0 = 0; b0 < nb; b0 += kPanelBlocks2) {
      const int nbp = std::min(kPanelBlocks2, nb - b0);
      r16_panel_decode_avx2(pk, b0, nbp, wd, sc);
      for (int t = 0; t < mt;) {
        const int T = std::min(kT2, mt - t);
        with_tokens<kT2>(T, [&](auto n) {
          r16_panel_tile_avx2<decltype(n)::value>(wd, sc, b0, nbp, q, ts + t, f + 16 * t);
        });
        t += T;
      }
    }
    for (int j = 0; j < mt; ++j) {  // lanes (rows 0-3, 8-11 | 4-7, 12-15) -> row order
      const __m256 fa = _mm256_load_ps(f + 16 * j), fb = _mm256_load_ps(f + 16 * j + 8);
      alignas(32) float r[16];
      _mm256_store_ps(r, _mm256_permute2f128_ps(fa, fb, 0x20));
      _mm256_store_ps(r + 8, _mm256_permute2f128_ps(fa, fb, 0x31));
      float* o = out + size_t(ts + j) * ldo;
      for (int i = 0; i < rows; ++i) o[i] = r[i] + (bias ? bias[i] : 0.f);
    }
  }
}

GPTOSS_AVX2_FMA static void r16_rows_avx2(const uint8_t* packed, int nb, int r0, int r1,
                                          const Q16Act& q, int m, const float* bias, float* out,
                                          int ldo) {
  constexpr int TM = 4;  // tokens a tile (both codes; 1-3 measured no faster for the int8 one)
  const bool vnni = active_isa() == Isa::Avx2Vnni;
  if (!vnni && q.levels == 2 && m > 2 * TM && q.ms) {  // prefill: the decoded panels
    for (int g = r0 / kR16; g * kR16 < r1; ++g)
      r16_group_panels_avx2(packed + size_t(g) * nb * kR16RecordBytes, nb, q, m,
                            bias ? bias + size_t(g) * kR16 : nullptr,
                            std::min(kR16, r1 - g * kR16), out + size_t(g) * kR16, size_t(ldo));
    return;
  }
  alignas(32) float f[TM * 16];
  for (int g = r0 / kR16; g * kR16 < r1; ++g) {
    const uint8_t* pk = packed + size_t(g) * nb * kR16RecordBytes;
    const int rows = std::min(kR16, r1 - g * kR16);
    for (int t = 0; t < m;) {
      const int T = std::min(TM, m - t);
      if (vnni) {
        if (q.levels == 1)
          r16_tile_avxvnni_n<true>(T, pk, nb, q, t, f);
        else
          r16_tile_avxvnni_n<false>(T, pk, nb, q, t, f);
      } else if (q.levels == 1) {
        r16_tile_avx2_n<true>(T, pk, nb, q, t, f);
      } else {
        r16_tile_avx2_n<false>(T, pk, nb, q, t, f);
      }
      for (int j = 0; j < T; ++j) {
        float* o = out + size_t(t + j) * ldo + size_t(g) * kR16;
        const float* fj = f + 16 * j;
        if (rows == kR16) {
          __m256 v0 = _mm256_load_ps(fj), v1 = _mm256_load_ps(fj + 8);
          if (bias) {
            v0 = _mm256_add_ps(v0, _mm256_loadu_ps(bias + size_t(g) * kR16));
            v1 = _mm256_add_ps(v1, _mm256_loadu_ps(bias + size_t(g) * kR16 + 8));
          }
          _mm256_storeu_ps(o, v0);
          _mm256_storeu_ps(o + 8, v1);
        } else {
          for (int i = 0; i < rows; ++i) o[i] = fj[i] + (bias ? bias[size_t(g) * kR16 + i] : 0.f);
        }
      }
      t += T;
    }
  }
}
#endif

// ------------------------------------------------------------------------------------ AVX-512
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
// Two groups at once: one 512-bit register holds chunk c of groups g and g + 1 (the AVX2 code's
// 256 bits each), so each broadcast activation pair serves 32 rows and the decode of the codes
// runs at twice the width. The block sums and the float steps are the AVX2 code's, lane for lane.
#define GPTOSS_AVX512_R16 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")))

// The steps the AVX-512 tiles share: prefetch, the codes of chunk c of both records as the
// unsigned bytes u (lo: the low nibbles, hi: the high ones), and the float steps of a block.
GPTOSS_AVX512_R16 __attribute__((always_inline)) static inline void r16_prefetch2(
    const uint8_t* rec0, const uint8_t* rec1) {
  for (int o = 0; o < 320; o += 64) {
    _mm_prefetch(reinterpret_cast<const char*>(rec0 + kR16PrefetchAhead * kR16RecordBytes + o), _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(rec1 + kR16PrefetchAhead * kR16RecordBytes + o), _MM_HINT_T0);
  }
}
GPTOSS_AVX512_R16 __attribute__((always_inline)) static inline void r16_codes2(
    const uint8_t* rec0, const uint8_t* rec1, int c, __m512i lut, __m512i& lo, __m512i& hi) {
  const __m512i low4 = _mm512_set1_epi8(0x0f);
  const __m512i w = _mm512_inserti64x4(
      _mm512_castsi256_si512(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(rec0 + 32 * c))),
      _mm256_loadu_si256(reinterpret_cast<const __m256i*>(rec1 + 32 * c)), 1);
  lo = _mm512_shuffle_epi8(lut, _mm512_and_si512(w, low4));
  hi = _mm512_shuffle_epi8(lut, _mm512_and_si512(_mm512_srli_epi16(w, 4), low4));
}
// the two records' 16 scales each as floats, in accumulator-lane order (once per block)
GPTOSS_AVX512_R16 __attribute__((always_inline)) static inline void r16_scales2(
    const uint8_t* rec0, const uint8_t* rec1, __m512& s0, __m512& s1) {
  s0 = _mm512_castsi512_ps(_mm512_slli_epi32(
      _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(rec0 + 256))), 23));
  s1 = _mm512_castsi512_ps(_mm512_slli_epi32(
      _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(rec1 + 256))), 23));
}
// f += S * (scale * step) for both groups, S the block sums in lanes
// [g: rows 0-3 | g: 8-11 | g+1: 0-3 | g+1: 8-11] (aa) and [4-7 | 12-15 | ...] (ab)
GPTOSS_AVX512_R16 __attribute__((always_inline)) static inline void r16_block_fma2(
    __m512 s0, __m512 s1, __m512i aa, __m512i ab, float step, __m512& f0, __m512& f1) {
  const __m512 st = _mm512_set1_ps(step);
  // each group's 16 rows in accumulator-lane order (kLaneRow), as its scales
  const __m512i S0 = _mm512_shuffle_i64x2(aa, ab, 0x44);
  const __m512i S1 = _mm512_shuffle_i64x2(aa, ab, 0xEE);
  f0 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(S0), _mm512_mul_ps(s0, st), f0);
  f1 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(S1), _mm512_mul_ps(s1, st), f1);
}

template <int T>
GPTOSS_AVX512_R16 static void r16_tile2_avx512(const uint8_t* pk0, const uint8_t* pk1, int nb,
                                               const Q16Act& q, int t0, __m512* f0, __m512* f1) {
  const __m512i lut =
      _mm512_broadcast_i32x4(_mm_load_si128(reinterpret_cast<const __m128i*>(kU8)));
  const __m512i zero = _mm512_setzero_si512();
  const size_t xs = size_t(nb) * 32;
  for (int t = 0; t < T; ++t) f0[t] = f1[t] = _mm512_setzero_ps();
  for (int b = 0; b < nb; ++b) {
    const uint8_t* rec0 = pk0 + size_t(b) * kR16RecordBytes;
    const uint8_t* rec1 = pk1 + size_t(b) * kR16RecordBytes;
    r16_prefetch2(rec0, rec1);
    __m512i aa[T], ab[T];
    for (int t = 0; t < T; ++t) aa[t] = ab[t] = _mm512_set1_epi32(q.corr[size_t(t0 + t) * nb + b]);
    for (int c = 0; c < 8; ++c) {
      __m512i lo, hi;
      r16_codes2(rec0, rec1, c, lut, lo, hi);
      const __m512i la = _mm512_unpacklo_epi8(lo, zero), lb = _mm512_unpackhi_epi8(lo, zero);
      const __m512i ha = _mm512_unpacklo_epi8(hi, zero), hb = _mm512_unpackhi_epi8(hi, zero);
      for (int t = 0; t < T; ++t) {
        const int16_t* xp = q.q + size_t(t0 + t) * xs + size_t(b) * 32 + 4 * c;
        int32_t pl, ph;
        std::memcpy(&pl, xp, 4);
        std::memcpy(&ph, xp + 2, 4);
        const __m512i xl = _mm512_set1_epi32(pl), xh = _mm512_set1_epi32(ph);
        aa[t] = _mm512_add_epi32(aa[t], _mm512_add_epi32(_mm512_madd_epi16(la, xl),
                                                         _mm512_madd_epi16(ha, xh)));
        ab[t] = _mm512_add_epi32(ab[t], _mm512_add_epi32(_mm512_madd_epi16(lb, xl),
                                                         _mm512_madd_epi16(hb, xh)));
      }
    }
    __m512 s0, s1;
    r16_scales2(rec0, rec1, s0, s1);
    for (int t = 0; t < T; ++t)
      r16_block_fma2(s0, s1, aa[t], ab[t], q.step[size_t(t0 + t) * nb + b], f0[t], f1[t]);
  }
}

// acc += the dot products of w with the 32-bit word at p broadcast (vpdpbusd: w unsigned bytes,
// the word's four signed; vpdpwssd: int16 pairs), the broadcast folded into the instruction. In
// asm so that the accumulator stays in its register: the intrinsics' separate result made GCC
// copy every accumulator twice around each instruction (2026-12-04, r16_panel_tile<8, true>).
#define GPTOSS_DP_BCAST(op, acc, w, p)                                          \
  __asm__(op " %[x]%{1to16%}, %[wv], %[a]"                                      \
          : [a] "+v"(acc)                                                       \
          : [wv] "v"(w), [x] "m"(*reinterpret_cast<const int32_t*>(p)))

// With VNNI (the avx512 level and up): vpdpwssd does the int16 code's vpmaddwd and add in one,
// the same integers. And the int8 activations (levels 1) get a tile of their own: unpacking the
// lo and hi code bytes by 16 bits puts each row's four u of chunk c in one 32-bit lane, in the
// order (4c, 4c + 2, 4c + 1, 4c + 3); the four activation bytes from byte 2 of the block's word
// 2c on are that order (q16_quantize's words), so one vpdpbusd adds the row's four products
// exactly, for both groups' 32 rows at once.
//
// One token (decode) of the int16 code takes the activations' byte split instead (q = 256 * hi +
// lo, as the AMX kernel does): with the rows' four u of a chunk in one 32-bit lane, as above,
// vpdpbusd(u, hi) and vpdpbusd(lo, u) (u fits a signed byte) give the two exact sums, and
// 256 * S_hi + S_lo is the block sum S: 2 unpacks and 4 vpdpbusd a chunk where the int16 lanes
// take 4 unpacks and 4 vpdpwssd, at one token most of the work. The same integers again.
#define GPTOSS_AVX512_VNNI \
  __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma")))
GPTOSS_AVX512_VNNI static void r16_tile2_vnni_1tok(const uint8_t* pk0, const uint8_t* pk1, int nb,
                                                   const Q16Act& q, int t0, __m512* f0,
                                                   __m512* f1) {
  const __m512i lut =
      _mm512_broadcast_i32x4(_mm_load_si128(reinterpret_cast<const __m128i*>(kU8)));
  const int8_t* xh = q.hi + size_t(t0) * nb * 32;
  const uint8_t* xl = q.lo + size_t(t0) * nb * 32;
  *f0 = *f1 = _mm512_setzero_ps();
  for (int b = 0; b < nb; ++b) {
    const uint8_t* rec0 = pk0 + size_t(b) * kR16RecordBytes;
    const uint8_t* rec1 = pk1 + size_t(b) * kR16RecordBytes;
    r16_prefetch2(rec0, rec1);
    __m512i ha = _mm512_setzero_si512(), hb = ha, la = ha, lb = ha;
    for (int c = 0; c < 8; ++c) {
      __m512i lo, hi;
      r16_codes2(rec0, rec1, c, lut, lo, hi);
      const __m512i pa = _mm512_unpacklo_epi16(lo, hi), pb = _mm512_unpackhi_epi16(lo, hi);
      int32_t h4, l4;
      std::memcpy(&h4, xh + size_t(b) * 32 + 4 * c, 4);
      std::memcpy(&l4, xl + size_t(b) * 32 + 4 * c, 4);
      const __m512i H = _mm512_set1_epi32(h4), L = _mm512_set1_epi32(l4);
      ha = _mm512_dpbusd_epi32(ha, pa, H);
      hb = _mm512_dpbusd_epi32(hb, pb, H);
      la = _mm512_dpbusd_epi32(la, L, pa);
      lb = _mm512_dpbusd_epi32(lb, L, pb);
    }
    const __m512i corr = _mm512_set1_epi32(q.corr[size_t(t0) * nb + b]);
    const __m512i aa = _mm512_add_epi32(corr, _mm512_add_epi32(_mm512_slli_epi32(ha, 8), la));
    const __m512i ab = _mm512_add_epi32(corr, _mm512_add_epi32(_mm512_slli_epi32(hb, 8), lb));
    __m512 s0, s1;
    r16_scales2(rec0, rec1, s0, s1);
    r16_block_fma2(s0, s1, aa, ab, q.step[size_t(t0) * nb + b], *f0, *f1);
  }
}

template <int T, bool Q8>
GPTOSS_AVX512_VNNI static void r16_tile2_vnni(const uint8_t* pk0, const uint8_t* pk1, int nb,
                                              const Q16Act& q, int t0, __m512* f0, __m512* f1) {
  const __m512i lut =
      _mm512_broadcast_i32x4(_mm_load_si128(reinterpret_cast<const __m128i*>(kU8)));
  const __m512i zero = _mm512_setzero_si512();
  const size_t xs = size_t(nb) * 64;  // bytes per token
  const uint8_t* xq = reinterpret_cast<const uint8_t*>(q.q);
  for (int t = 0; t < T; ++t) f0[t] = f1[t] = _mm512_setzero_ps();
  for (int b = 0; b < nb; ++b) {
    const uint8_t* rec0 = pk0 + size_t(b) * kR16RecordBytes;
    const uint8_t* rec1 = pk1 + size_t(b) * kR16RecordBytes;
    r16_prefetch2(rec0, rec1);
    __m512i aa[T], ab[T];
    for (int t = 0; t < T; ++t) aa[t] = ab[t] = _mm512_set1_epi32(q.corr[size_t(t0 + t) * nb + b]);
    for (int c = 0; c < 8; ++c) {
      __m512i lo, hi;
      r16_codes2(rec0, rec1, c, lut, lo, hi);
      if constexpr (Q8) {
        const __m512i pa = _mm512_unpacklo_epi16(lo, hi), pb = _mm512_unpackhi_epi16(lo, hi);
        for (int t = 0; t < T; ++t) {
          const uint8_t* xp = xq + size_t(t0 + t) * xs + size_t(b) * 64 + 8 * c + 2;
          GPTOSS_DP_BCAST("vpdpbusd", aa[t], pa, xp);
          GPTOSS_DP_BCAST("vpdpbusd", ab[t], pb, xp);
        }
      } else {
        const __m512i la = _mm512_unpacklo_epi8(lo, zero), lb = _mm512_unpackhi_epi8(lo, zero);
        const __m512i ha = _mm512_unpacklo_epi8(hi, zero), hb = _mm512_unpackhi_epi8(hi, zero);
        for (int t = 0; t < T; ++t) {
          const uint8_t* xp = xq + size_t(t0 + t) * xs + size_t(b) * 64 + 8 * c;
          GPTOSS_DP_BCAST("vpdpwssd", aa[t], la, xp);
          GPTOSS_DP_BCAST("vpdpwssd", aa[t], ha, xp + 4);
          GPTOSS_DP_BCAST("vpdpwssd", ab[t], lb, xp);
          GPTOSS_DP_BCAST("vpdpwssd", ab[t], hb, xp + 4);
        }
      }
    }
    __m512 s0, s1;
    r16_scales2(rec0, rec1, s0, s1);
    for (int t = 0; t < T; ++t)
      r16_block_fma2(s0, s1, aa[t], ab[t], q.step[size_t(t0 + t) * nb + b], f0[t], f1[t]);
  }
}

// More tokens than one tile (prefill) with VNNI: the codes of a panel of kPanelBlocks blocks
// are decoded once into an L1-resident buffer (what the tile above computes per chunk: la, lb,
// ha, hb of the int16 code, pa, pb of the int8 one) and every tile of tokens then runs over
// it, where the tile above decodes them again for each tile. The block sums are the same
// integers. The float accumulators stay in the block sums' lanes (aa: rows 0-3, 8-11 of both
// groups, ab: 4-7, 12-15), with the scales put in those lanes once per block instead of the
// sums moved to the scales' lanes once per block and token; each (row, token) sees the same
// fma(S, scale * step, f) in block order, so the bits are the tile's. They wait in memory
// between blocks (one load and store per block and token against 64 or 128 dot products), so
// the registers hold the 16 block sums, the decoded chunk and the activations without spills.
constexpr int kPanelBlocks = 8;   // 16 KB of decoded int16 codes (8 KB int8)
constexpr int kPanelTokens = 128;  // tokens whose float accumulators wait at once (16 KB)

template <bool Q8>
GPTOSS_AVX512_VNNI static void r16_panel_decode(const uint8_t* pk0, const uint8_t* pk1, int b0,
                                                int nbp, __m512i* wd, __m512* sc) {
  const __m512i lut =
      _mm512_broadcast_i32x4(_mm_load_si128(reinterpret_cast<const __m128i*>(kU8)));
  const __m512i zero = _mm512_setzero_si512();
  for (int i = 0; i < nbp; ++i) {
    const uint8_t* rec0 = pk0 + size_t(b0 + i) * kR16RecordBytes;
    const uint8_t* rec1 = pk1 + size_t(b0 + i) * kR16RecordBytes;
    r16_prefetch2(rec0, rec1);
    for (int c = 0; c < 8; ++c) {
      __m512i lo, hi;
      r16_codes2(rec0, rec1, c, lut, lo, hi);
      if constexpr (Q8) {
        _mm512_store_si512(wd + (8 * i + c) * 2, _mm512_unpacklo_epi16(lo, hi));
        _mm512_store_si512(wd + (8 * i + c) * 2 + 1, _mm512_unpackhi_epi16(lo, hi));
      } else {
        _mm512_store_si512(wd + (8 * i + c) * 4, _mm512_unpacklo_epi8(lo, zero));
        _mm512_store_si512(wd + (8 * i + c) * 4 + 1, _mm512_unpackhi_epi8(lo, zero));
        _mm512_store_si512(wd + (8 * i + c) * 4 + 2, _mm512_unpacklo_epi8(hi, zero));
        _mm512_store_si512(wd + (8 * i + c) * 4 + 3, _mm512_unpackhi_epi8(hi, zero));
      }
    }
    __m512 s0, s1;
    r16_scales2(rec0, rec1, s0, s1);  // kLaneRow order per group -> the lanes of aa and ab
    sc[2 * i] = _mm512_shuffle_f32x4(s0, s1, 0x44);
    sc[2 * i + 1] = _mm512_shuffle_f32x4(s0, s1, 0xEE);
  }
}

// T tokens from t0 over a decoded panel (blocks b0 .. b0 + nbp); f: [T][2][16] floats in the
// lanes of aa, ab
template <int T, bool Q8>
GPTOSS_AVX512_VNNI __attribute__((noinline)) static void r16_panel_tile(
    const __m512i* wd, const __m512* sc, int b0, int nbp, const Q16Act& q, int t0, float* f) {
  const size_t bs = size_t(q.ms);  // tokens a block of the block-major copies
  const uint8_t* xb = q.qb + (size_t(b0) * bs + size_t(t0)) * 64;
  const int32_t* cr = q.corrb + size_t(b0) * bs + size_t(t0);
  const float* sp = q.stepb + size_t(b0) * bs + size_t(t0);
  for (int i = 0; i < nbp; ++i, xb += bs * 64, cr += bs, sp += bs) {
    // f is memory: keep the compiler from holding its 2T vectors in registers across blocks
    __asm__ volatile("" ::: "memory");
    __m512i aa[T], ab[T];
    for (int t = 0; t < T; ++t) aa[t] = ab[t] = _mm512_set1_epi32(cr[t]);
    for (int c = 0; c < 8; ++c) {
      if constexpr (Q8) {
        const __m512i pa = _mm512_load_si512(wd + (8 * i + c) * 2);
        const __m512i pb = _mm512_load_si512(wd + (8 * i + c) * 2 + 1);
        for (int t = 0; t < T; ++t) {
          GPTOSS_DP_BCAST("vpdpbusd", aa[t], pa, xb + 64 * t + 8 * c + 2);
          GPTOSS_DP_BCAST("vpdpbusd", ab[t], pb, xb + 64 * t + 8 * c + 2);
        }
      } else {
        const __m512i la = _mm512_load_si512(wd + (8 * i + c) * 4);
        const __m512i lb = _mm512_load_si512(wd + (8 * i + c) * 4 + 1);
        const __m512i ha = _mm512_load_si512(wd + (8 * i + c) * 4 + 2);
        const __m512i hb = _mm512_load_si512(wd + (8 * i + c) * 4 + 3);
        for (int t = 0; t < T; ++t) {
          const uint8_t* xp = xb + 64 * t + 8 * c;
          GPTOSS_DP_BCAST("vpdpwssd", aa[t], la, xp);
          GPTOSS_DP_BCAST("vpdpwssd", aa[t], ha, xp + 4);
          GPTOSS_DP_BCAST("vpdpwssd", ab[t], lb, xp);
          GPTOSS_DP_BCAST("vpdpwssd", ab[t], hb, xp + 4);
        }
      }
    }
    const __m512 sa = sc[2 * i], sb = sc[2 * i + 1];
    for (int t = 0; t < T; ++t) {
      const __m512 st = _mm512_set1_ps(sp[t]);
      float* ft = f + 32 * t;
      _mm512_store_ps(ft, _mm512_fmadd_ps(_mm512_cvtepi32_ps(aa[t]), _mm512_mul_ps(sa, st),
                                          _mm512_load_ps(ft)));
      _mm512_store_ps(ft + 16, _mm512_fmadd_ps(_mm512_cvtepi32_ps(ab[t]), _mm512_mul_ps(sb, st),
                                               _mm512_load_ps(ft + 16)));
    }
  }
}

// Groups g, g + 1 (pk0, pk1) against tokens [0, m) through decoded panels, plus the bias (b0v,
// b1v), into out (the rows of the second group that exist: mask m1).
template <bool Q8>
GPTOSS_AVX512_VNNI __attribute__((noinline)) static void r16_pair_panels(
    const uint8_t* pk0, const uint8_t* pk1, int nb, const Q16Act& q, int m, __m512 b0v,
    __m512 b1v, __mmask16 m1, float* out, size_t ldo) {
  constexpr int kTM = 8;
  alignas(64) __m512i wd[kPanelBlocks * 8 * (Q8 ? 2 : 4)];
  alignas(64) __m512 sc[kPanelBlocks * 2];
  alignas(64) float f[kPanelTokens * 32];
  const __m512i to_rows = _mm512_setr_epi32(0, 1, 2, 3, 8, 9, 10, 11, 4, 5, 6, 7, 12, 13, 14, 15);
  for (int ts = 0; ts < m; ts += kPanelTokens) {
    const int mt = std::min(kPanelTokens, m - ts);
    std::memset(f, 0, sizeof(float) * 32 * size_t(mt));
    for (int b0 = 0; b0 < nb; b0 += kPanelBlocks) {
      const int nbp = std::min(kPanelBlocks, nb - b0);
      r16_panel_decode<Q8>(pk0, pk1, b0, nbp, wd, sc);
      for (int t = 0; t < mt;) {
        const int T = std::min(kTM, mt - t);
        with_tokens<kTM>(T, [&](auto n) {
          r16_panel_tile<decltype(n)::value, Q8>(wd, sc, b0, nbp, q, ts + t, f + 32 * t);
        });
        t += T;
      }
    }
    for (int j = 0; j < mt; ++j) {
      const __m512 fa = _mm512_load_ps(f + 32 * j), fb = _mm512_load_ps(f + 32 * j + 16);
      float* o = out + size_t(ts + j) * ldo;
      _mm512_storeu_ps(o, _mm512_add_ps(
          _mm512_permutexvar_ps(to_rows, _mm512_shuffle_f32x4(fa, fb, 0x44)), b0v));
      _mm512_mask_storeu_ps(o + kR16, m1, _mm512_add_ps(
          _mm512_permutexvar_ps(to_rows, _mm512_shuffle_f32x4(fa, fb, 0xEE)), b1v));
    }
  }
}

// Which AVX-512 tile: 0 the int16 code without VNNI, 1 with (one token: its byte split), 2 the
// int8 code (VNNI).
template <int Code, int T>
GPTOSS_AVX512_R16 static void r16_tile2(const uint8_t* pk0, const uint8_t* pk1, int nb,
                                        const Q16Act& q, int t0, __m512* f0, __m512* f1) {
  if constexpr (Code == 0)
    r16_tile2_avx512<T>(pk0, pk1, nb, q, t0, f0, f1);
  else if constexpr (Code == 1 && T == 1)
    r16_tile2_vnni_1tok(pk0, pk1, nb, q, t0, f0, f1);
  else
    r16_tile2_vnni<T, Code == 2>(pk0, pk1, nb, q, t0, f0, f1);
}

template <int Code>
GPTOSS_AVX512_R16 static void r16_rows_avx512_code(const uint8_t* packed, int nb, int r0, int r1,
                                                   const Q16Act& q, int m, const float* bias,
                                                   float* out, int ldo) {
  // tokens a tile: 8 for the VNNI codes (their fewer temporaries leave the registers for 16
  // accumulators), 4 without VNNI
  constexpr int kTM = Code == 0 ? 4 : 8;
  const __m512i to_rows = _mm512_setr_epi32(0, 1, 2, 3, 8, 9, 10, 11, 4, 5, 6, 7, 12, 13, 14, 15);
  const int gend = (r1 + kR16 - 1) / kR16;
  int g = r0 / kR16;
  for (; g + 2 <= gend; g += 2) {
    const uint8_t* pk0 = packed + size_t(g) * nb * kR16RecordBytes;
    const uint8_t* pk1 = pk0 + size_t(nb) * kR16RecordBytes;
    const int rows1 = std::min(kR16, r1 - (g + 1) * kR16);
    const __mmask16 m1 = __mmask16((1u << rows1) - 1u);
    const __m512 b0 = bias ? _mm512_loadu_ps(bias + size_t(g) * kR16) : _mm512_setzero_ps();
    const __m512 b1 = bias ? _mm512_maskz_loadu_ps(m1, bias + size_t(g + 1) * kR16) : _mm512_setzero_ps();
    if constexpr (Code != 0) {
      if (m > kTM && q.ms) {
        r16_pair_panels<Code == 2>(pk0, pk1, nb, q, m, b0, b1, m1, out + size_t(g) * kR16,
                                   size_t(ldo));
        continue;
      }
    }
    __m512 f0[kTM], f1[kTM];
    for (int t = 0; t < m;) {
      const int T = std::min(kTM, m - t);
      switch (T) {
        case 8: r16_tile2<Code, kTM>(pk0, pk1, nb, q, t, f0, f1); break;
        case 7: r16_tile2<Code, kTM == 8 ? 7 : 1>(pk0, pk1, nb, q, t, f0, f1); break;
        case 6: r16_tile2<Code, kTM == 8 ? 6 : 1>(pk0, pk1, nb, q, t, f0, f1); break;
        case 5: r16_tile2<Code, kTM == 8 ? 5 : 1>(pk0, pk1, nb, q, t, f0, f1); break;
        case 4: r16_tile2<Code, 4>(pk0, pk1, nb, q, t, f0, f1); break;
        case 3: r16_tile2<Code, 3>(pk0, pk1, nb, q, t, f0, f1); break;
        case 2: r16_tile2<Code, 2>(pk0, pk1, nb, q, t, f0, f1); break;
        default: r16_tile2<Code, 1>(pk0, pk1, nb, q, t, f0, f1); break;
      }
      for (int j = 0; j < T; ++j) {
        float* o = out + size_t(t + j) * ldo + size_t(g) * kR16;
        _mm512_storeu_ps(o, _mm512_add_ps(_mm512_permutexvar_ps(to_rows, f0[j]), b0));
        _mm512_mask_storeu_ps(o + kR16, m1, _mm512_add_ps(_mm512_permutexvar_ps(to_rows, f1[j]), b1));
      }
      t += T;
    }
  }
  if (g < gend) r16_rows_avx2(packed, nb, g * kR16, r1, q, m, bias, out, ldo);  // an odd last group
}

// The AVX-512 code for the active level and the activations' code (int8 activations without
// VNNI take the AVX2 code).
static void r16_rows_avx512(const uint8_t* packed, int nb, int r0, int r1, const Q16Act& q,
                            int m, const float* bias, float* out, int ldo) {
  if (active_isa() >= Isa::Avx512) {
    if (q.levels == 1)
      r16_rows_avx512_code<2>(packed, nb, r0, r1, q, m, bias, out, ldo);
    else
      r16_rows_avx512_code<1>(packed, nb, r0, r1, q, m, bias, out, ldo);
  } else if (q.levels == 1) {
    r16_rows_avx2(packed, nb, r0, r1, q, m, bias, out, ldo);
  } else {
    r16_rows_avx512_code<0>(packed, nb, r0, r1, q, m, bias, out, ldo);
  }
}
#endif

// ------------------------------------------------------------------------------------ AMX
#if defined(__x86_64__) && defined(__GNUC__) && (defined(__clang__) || __GNUC__ >= 11)
#define GPTOSS_HAVE_AMX 1
#define GPTOSS_AMX \
  __attribute__((target("amx-tile,amx-bf16,avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")))

namespace {
// A call with this many tokens or more runs all of them on the AMX tiles (a last partial tile
// included), fewer take the AVX-512 code (bench/bench_cpu_kernels.py: below it the decode of the
// weights into bf16 tiles costs more than the tiles save).
constexpr int kAmxMinTokens = 8;

// the decoded B tiles of one band (up to 2 groups x nb blocks x 1 KiB), per thread
thread_local std::vector<uint16_t> amx_btiles;
}  // namespace

// One B tile row from 16 rows' codes (the low 4 bits of lo_idx, hi_idx) and scales sc.
GPTOSS_AMX __attribute__((always_inline)) static inline void r16_bf16_row(
    __m512i lo_idx, __m512i hi_idx, __m512 lut, __m512 sc, uint16_t* o) {
  // vpermps reads the low 4 bits of each index: the code
  const __m512i l = _mm512_castps_si512(_mm512_mul_ps(_mm512_permutexvar_ps(lo_idx, lut), sc));
  const __m512i h = _mm512_castps_si512(_mm512_mul_ps(_mm512_permutexvar_ps(hi_idx, lut), sc));
  // (h & 0xffff0000) | (l >> 16)
  _mm512_store_si512(o, _mm512_ternarylogic_epi32(h, _mm512_srli_epi32(l, 16),
                                                  _mm512_set1_epi32(int(0xffff0000u)), 0xE4));
}

// One record (16 rows x one 32-block) -> the AMX-BF16 B tile: 16 rows j (byte j of the block:
// values 2j, 2j + 1) of 16 pairs, pair n = (w[n][2j], w[n][2j + 1]) of weight row n of the
// group, each value 2^(s - 127) * value(code) in float32 (exact: two significant bits) and cut
// to its bf16 upper half (exact too). Record chunk c's 16-bit word n holds bytes 2c, 2c + 1 of
// row n, so one zero-extension gives every row's two bytes, the bf16 rows 2c and 2c + 1.
GPTOSS_AMX static void r16_bf16_tile(const uint8_t* rec, uint16_t* bt) {
  const __m512 lut = _mm512_setr_ps(0.f, .5f, 1.f, 1.5f, 2.f, 3.f, 4.f, 6.f, -0.f, -.5f, -1.f,
                                    -1.5f, -2.f, -3.f, -4.f, -6.f);
  // the record's scales are in accumulator-lane order (kLaneRow, its own inverse): to rows
  const __m512i to_rows = _mm512_setr_epi32(0, 1, 2, 3, 8, 9, 10, 11, 4, 5, 6, 7, 12, 13, 14, 15);
  const __m128i s8 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(rec + 256));
  const __m512 sc = _mm512_castsi512_ps(
      _mm512_permutexvar_epi32(to_rows, _mm512_slli_epi32(_mm512_cvtepu8_epi32(s8), 23)));
  for (int c = 0; c < 8; ++c) {
    const __m512i d =
        _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(rec + 32 * c)));
    r16_bf16_row(d, _mm512_srli_epi32(d, 4), lut, sc, bt + 64 * c);
    r16_bf16_row(_mm512_srli_epi32(d, 8), _mm512_srli_epi32(d, 12), lut, sc, bt + 64 * c + 32);
  }
}

// NT token tiles (16 tokens each, from t0) against NG groups of 16 rows (B tiles decoded in
// bt: group g, block b at bt + (g * nb + b) * 512): C tile 2 t + g accumulates over all of K,
// the TERMS activation terms (levels 2: hi and lo; levels 1: hi), in the same order for every
// token.
template <int NG, int NT, int TERMS>
GPTOSS_AMX static void r16_amx_block(const uint16_t* bt, int nb, const uint16_t* xh,
                                     const uint16_t* xl, size_t ldx, float* cbuf) {
  _tile_zero(0);
  if (NG > 1) _tile_zero(1);
  if (NT > 1) _tile_zero(2);
  if (NG > 1 && NT > 1) _tile_zero(3);
  const uint16_t* ah1 = xh + 16 * ldx;
  const uint16_t* al1 = xl + 16 * ldx;
  const size_t lda = ldx * 2;
  for (int b = 0; b < nb; ++b) {
    const size_t k = size_t(b) * 32;
    _tile_loadd(4, bt + size_t(b) * 512, 64);
    if (NG > 1) _tile_loadd(5, bt + size_t(nb + b) * 512, 64);
    // the hi terms of both token tiles, then the lo terms: a C tile's two products of a block
    // are NG * NT products apart
    _tile_loadd(6, xh + k, lda);
    if (NT > 1) _tile_loadd(7, ah1 + k, lda);
    _tile_dpbf16ps(0, 6, 4);
    if (NG > 1) _tile_dpbf16ps(1, 6, 5);
    if (NT > 1) _tile_dpbf16ps(2, 7, 4);
    if (NG > 1 && NT > 1) _tile_dpbf16ps(3, 7, 5);
    if (TERMS == 1) continue;
    _tile_loadd(6, xl + k, lda);
    if (NT > 1) _tile_loadd(7, al1 + k, lda);
    _tile_dpbf16ps(0, 6, 4);
    if (NG > 1) _tile_dpbf16ps(1, 6, 5);
    if (NT > 1) _tile_dpbf16ps(2, 7, 4);
    if (NG > 1 && NT > 1) _tile_dpbf16ps(3, 7, 5);
  }
  _tile_stored(0, cbuf, 64);
  if (NG > 1) _tile_stored(1, cbuf + 256, 64);
  if (NT > 1) _tile_stored(2, cbuf + 512, 64);
  if (NG > 1 && NT > 1) _tile_stored(3, cbuf + 768, 64);
}

// Rows [r0, r1) against the m tokens of q on the AMX-BF16 tiles, two groups of rows and two
// tiles of tokens at a time. The last token tile may be partial: its A tiles then read up to 15
// rows past m (inside the workspace: Q16Act::bytes pads it), whose results are never stored.
GPTOSS_AMX static void r16_rows_amx(const uint8_t* packed, int nb, int r0, int r1,
                                    const Q16Act& q, int m, const float* bias, float* out,
                                    int ldo) {
  AmxTileConfig cfg;
  for (int i = 0; i < 8; ++i) cfg.rows[i] = 16, cfg.colsb[i] = 64;
  _tile_loadconfig(&cfg);
  std::vector<uint16_t>& buf = amx_btiles;
  if (buf.size() < size_t(2) * nb * 512 + 32) buf.resize(size_t(2) * nb * 512 + 32);
  uint16_t* const btp = reinterpret_cast<uint16_t*>(
      (reinterpret_cast<uintptr_t>(buf.data()) + 63) & ~uintptr_t(63));
  alignas(64) float cbuf[4 * 256];
  const size_t ldx = size_t(nb) * 32;
  for (int g0 = r0 / kR16; g0 * kR16 < r1; g0 += 2) {
    const int ng = std::min(2, (r1 - g0 * kR16 + kR16 - 1) / kR16);
    for (int g = 0; g < ng; ++g)
      for (int b = 0; b < nb; ++b)
        r16_bf16_tile(packed + (size_t(g0 + g) * nb + b) * kR16RecordBytes,
                      btp + (size_t(g) * nb + b) * 512);
    for (int t0 = 0; t0 < m; t0 += 32) {
      const int nt = m - t0 > 16 ? 2 : 1;
      const uint16_t* xh = q.xh + size_t(t0) * ldx;
      const uint16_t* xl = q.xl + size_t(t0) * ldx;
      if (q.levels == 1) {
        if (ng == 2 && nt == 2) r16_amx_block<2, 2, 1>(btp, nb, xh, xl, ldx, cbuf);
        else if (ng == 2) r16_amx_block<2, 1, 1>(btp, nb, xh, xl, ldx, cbuf);
        else if (nt == 2) r16_amx_block<1, 2, 1>(btp, nb, xh, xl, ldx, cbuf);
        else r16_amx_block<1, 1, 1>(btp, nb, xh, xl, ldx, cbuf);
      } else {
        if (ng == 2 && nt == 2) r16_amx_block<2, 2, 2>(btp, nb, xh, xl, ldx, cbuf);
        else if (ng == 2) r16_amx_block<2, 1, 2>(btp, nb, xh, xl, ldx, cbuf);
        else if (nt == 2) r16_amx_block<1, 2, 2>(btp, nb, xh, xl, ldx, cbuf);
        else r16_amx_block<1, 1, 2>(btp, nb, xh, xl, ldx, cbuf);
      }
      for (int g = 0; g < ng; ++g) {
        const int row0 = (g0 + g) * kR16, rows = std::min(kR16, r1 - row0);
        const __mmask16 rmask = __mmask16((1u << rows) - 1u);
        const __m512 bv = bias ? _mm512_maskz_loadu_ps(rmask, bias + row0) : _mm512_setzero_ps();
        for (int t = 0; t < std::min(32, m - t0); ++t) {
          const float* c = cbuf + 512 * (t / 16) + 256 * g + 16 * (t % 16);
          _mm512_mask_storeu_ps(out + size_t(t0 + t) * ldo + row0, rmask,
                                _mm512_add_ps(_mm512_load_ps(c), bv));
        }
      }
    }
  }
  _tile_release();
}
#endif

void mf4w_r16_gemm_rows(const uint8_t* packed, int nb, int r0, int r1, const Q16Act& q, int m,
                        const float* bias, float* out, int ldo) {
  GPTOSS_CHECK(r0 % kR16 == 0 && r0 <= r1, "mf4w_r16_gemm_rows: rows [" << r0 << ", " << r1
                                                                        << ") do not start a group");
  GPTOSS_CHECK(nb == q.nb, "mf4w_r16_gemm_rows: " << nb << " weight blocks per row, activations "
                                                  << q.nb);
#if defined(GPTOSS_HAVE_AMX)
  if (active_isa() >= Isa::Amx && m >= kAmxMinTokens && !q.exact) {
    r16_rows_amx(packed, nb, r0, r1, q, m, bias, out, ldo);
    return;
  }
#endif
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  if (active_isa() >= Isa::Avx512Bw) {
    r16_rows_avx512(packed, nb, r0, r1, q, m, bias, out, ldo);
    return;
  }
  if (active_isa() >= Isa::Avx2) {
    r16_rows_avx2(packed, nb, r0, r1, q, m, bias, out, ldo);
    return;
  }
#endif
  r16_rows_plain(packed, nb, r0, r1, q, m, bias, out, ldo);
}

// Whether mf4w_r16_gemm_rows takes the decoded panels (which read Q16Act's block-major copies)
// for a call of m tokens: the AVX2 ones for the int16 code (also an AVX-512 call's odd last
// group), the AVX-512 VNNI ones for both codes, and at the amx level only the exact code (the
// AMX tiles take the others).
static bool r16_panels_run(int m, int levels, bool exact) {
  if (m <= 8) return false;
  switch (active_isa()) {
    case Isa::Amx:
#if defined(GPTOSS_HAVE_AMX)
      return exact;
#else
      (void)exact;
      return true;
#endif
    case Isa::Avx512Bf16:
    case Isa::Avx512: return true;
    case Isa::Avx512Bw:
    case Isa::Avx2: return levels == 2;
    default: return false;
  }
}

}  // namespace cpu
}  // namespace gptoss
