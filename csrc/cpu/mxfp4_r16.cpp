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
// AMX (the amx level). The tiles multiply bytes, so each int16 activation is split exactly into
// q = 256 * hi + lo (hi signed, lo unsigned) and the codes become the signed bytes 2 * value
// (-12..12). A block of 16 rows is decoded into one B tile (8 rows of 64 bytes: for each of the
// 16 weight rows the 4 values of one chunk, in the pair order above); A tiles hold 16 tokens' 32
// bytes of one block. tdpbssd (hi) and tdpbusd (lo) give the two exact int32 sums, and
// 256 * S_hi + S_lo is the block sum S of the code above, integer for integer; the float steps
// after it (the scale times the step, one fma per block in block order) are the AVX2 code's. So
// the AMX results are the same bits as every other level's, and a token gives the same bits in a
// tile of 16 (prefill) as alone (decode). A block's sum needs its own tile product (the scales
// differ per block), so the tiles run at K = 32 and the float work per block is AVX-512's.
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
// records (16 rows x one block) the AVX2 code prefetches ahead of the one it reads
constexpr int kR16PrefetchAhead = 4;  // 12 and 24 measured no faster (Zen 3)
// code -> 2 * value + 12
alignas(16) const uint8_t kU8[16] = {12, 13, 14, 15, 16, 18, 20, 24, 12, 11, 10, 9, 8, 6, 4, 0};
// code -> 2 * value (the AMX kernel's signed bytes)
alignas(16) const int8_t kS8[16] = {0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12};
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
// The step, hi and lo arrays carry 15 rows more than m: the AMX kernel's last tile of 16 tokens
// may read past the last token (and drops those rows' results).
size_t Q16Act::bytes(int m, int K) {
  const size_t nb = size_t(K / 32);
  return size_t(m) * nb * (32 * 2 + 4) + size_t(m + 15) * nb * (4 + 32 + 32) + 3 * 64;
}

Q16Act Q16Act::carve(void* ws, int m, int K, int levels) {
  GPTOSS_CHECK(levels == 1 || levels == 2, "Q16Act: levels = " << levels << ": must be 1 or 2");
  Q16Act q;
  q.nb = K / 32;
  q.levels = levels;
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

void q16_quantize(const float* x, int m, int K, const Q16Act& q) {
  GPTOSS_CHECK(K % 32 == 0 && K / 32 == q.nb,
               "q16_quantize: K = " << K << " does not match " << q.nb << " blocks");
  const int nb = q.nb;
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
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
GPTOSS_AVX2_FMA static void r16_tile_avx2(const uint8_t* pk, int nb, const Q16Act& q, int t0,
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
  for (int t = 0; t < T; ++t) {  // lanes (rows 0-3, 8-11 | 4-7, 12-15) -> row order
    _mm256_storeu_ps(f + 16 * t, _mm256_permute2f128_ps(fa[t], fb[t], 0x20));
    _mm256_storeu_ps(f + 16 * t + 8, _mm256_permute2f128_ps(fa[t], fb[t], 0x31));
  }
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

GPTOSS_AVX2_FMA static void r16_rows_avx2(const uint8_t* packed, int nb, int r0, int r1,
                                          const Q16Act& q, int m, const float* bias, float* out,
                                          int ldo) {
  constexpr int TM = 4;  // tokens a tile (both codes; 1-3 measured no faster for the int8 one)
  alignas(32) float f[TM * 16];
  for (int g = r0 / kR16; g * kR16 < r1; ++g) {
    const uint8_t* pk = packed + size_t(g) * nb * kR16RecordBytes;
    const int rows = std::min(kR16, r1 - g * kR16);
    for (int t = 0; t < m;) {
      const int T = std::min(TM, m - t);
      if (q.levels == 1)
        r16_tile_avx2_n<true>(T, pk, nb, q, t, f);
      else
        r16_tile_avx2_n<false>(T, pk, nb, q, t, f);
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
          int32_t x4;
          std::memcpy(&x4, xq + size_t(t0 + t) * xs + size_t(b) * 64 + 8 * c + 2, 4);
          const __m512i x = _mm512_set1_epi32(x4);
          aa[t] = _mm512_dpbusd_epi32(aa[t], pa, x);
          ab[t] = _mm512_dpbusd_epi32(ab[t], pb, x);
        }
      } else {
        const __m512i la = _mm512_unpacklo_epi8(lo, zero), lb = _mm512_unpackhi_epi8(lo, zero);
        const __m512i ha = _mm512_unpacklo_epi8(hi, zero), hb = _mm512_unpackhi_epi8(hi, zero);
        for (int t = 0; t < T; ++t) {
          const uint8_t* xp = xq + size_t(t0 + t) * xs + size_t(b) * 64 + 8 * c;
          int32_t pl, ph;
          std::memcpy(&pl, xp, 4);
          std::memcpy(&ph, xp + 4, 4);
          const __m512i xl = _mm512_set1_epi32(pl), xh = _mm512_set1_epi32(ph);
          aa[t] = _mm512_dpwssd_epi32(_mm512_dpwssd_epi32(aa[t], la, xl), ha, xh);
          ab[t] = _mm512_dpwssd_epi32(_mm512_dpwssd_epi32(ab[t], lb, xl), hb, xh);
        }
      }
    }
    __m512 s0, s1;
    r16_scales2(rec0, rec1, s0, s1);
    for (int t = 0; t < T; ++t)
      r16_block_fma2(s0, s1, aa[t], ab[t], q.step[size_t(t0 + t) * nb + b], f0[t], f1[t]);
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
  __attribute__((target("amx-tile,amx-int8,avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")))

namespace {
// Blocks per row whose decoded B tiles are kept for all token tiles of a row group (on the
// stack, 52 KiB); wider matrices decode each block where it is used.
constexpr int kAmxMaxNb = 96;
constexpr int kAmxMinTail = 9;

}  // namespace

// One record (16 rows x one 32-block) -> the B tile (8 rows of 64 bytes: chunk c's 4 values of
// each weight row, the rows in accumulator-lane order kLaneRow, as the record's scales) and the
// 16 scales as floats.
GPTOSS_AMX static void r16_b_tile(const uint8_t* rec, int8_t* bt, float* sc) {
  const __m512i lut =
      _mm512_broadcast_i32x4(_mm_load_si128(reinterpret_cast<const __m128i*>(kS8)));
  const __m512i low4 = _mm512_set1_epi8(0x0f);
  for (int c = 0; c < 8; c += 2) {  // chunks c and c + 1: 128-bit lanes [c L0, c L1, c+1 L0, c+1 L1]
    const __m512i w = _mm512_loadu_si512(rec + 32 * c);
    const __m512i lo = _mm512_shuffle_epi8(lut, _mm512_and_si512(w, low4));
    const __m512i hi = _mm512_shuffle_epi8(lut, _mm512_and_si512(_mm512_srli_epi16(w, 4), low4));
    // per weight row the 4 bytes lo(2c), lo(2c+1), hi(2c), hi(2c+1): values 4c, 4c+2, 4c+1, 4c+3
    const __m512i ul = _mm512_unpacklo_epi16(lo, hi);  // rows 0-3 | 8-11 of each chunk
    const __m512i uh = _mm512_unpackhi_epi16(lo, hi);  // rows 4-7 | 12-15
    _mm512_store_si512(bt + 64 * c, _mm512_shuffle_i64x2(ul, uh, 0x44));
    _mm512_store_si512(bt + 64 * (c + 1), _mm512_shuffle_i64x2(ul, uh, 0xEE));
  }
  const __m128i s8 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(rec + 256));
  _mm512_store_ps(sc, _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu8_epi32(s8), 23)));
}

// One block's float work: f[t] += float(256 * S_hi + S_lo) * (scale * step[t]) for 16 tokens.
GPTOSS_AMX __attribute__((always_inline)) static inline void r16_amx_post(
    const int32_t* p1, const int32_t* p2, const float* scale, const float* st, int nb, __m512* f) {
  const __m512 s = _mm512_load_ps(scale);
  for (int t = 0; t < 16; ++t) {
    const __m512i S = _mm512_add_epi32(_mm512_slli_epi32(_mm512_load_si512(p1 + 16 * t), 8),
                                       _mm512_load_si512(p2 + 16 * t));
    const __m512 ws = _mm512_mul_ps(s, _mm512_set1_ps(st[size_t(t) * nb]));
    f[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(S), ws, f[t]);
  }
}

// Rows [r0, r1) against the first mt tokens of q, in tiles of 16 tokens; the last tile may be
// partial: its A tiles then read up to 15 rows past mt (inside the workspace: Q16Act::bytes pads
// it), whose results are never stored.
GPTOSS_AMX static void r16_rows_amx(const uint8_t* packed, int nb, int r0, int r1,
                                    const Q16Act& q, int mt, const float* bias, float* out,
                                    int ldo) {
  AmxTileConfig cfg;
  cfg.rows[0] = cfg.rows[1] = 16, cfg.colsb[0] = cfg.colsb[1] = 64;  // C: the hi and lo sums
  cfg.rows[2] = cfg.rows[3] = 16, cfg.colsb[2] = cfg.colsb[3] = 32;  // A: 16 tokens' hi, lo
  cfg.rows[4] = 8, cfg.colsb[4] = 64;                                // B: one decoded record
  cfg.rows[5] = cfg.rows[6] = 16, cfg.colsb[5] = cfg.colsb[6] = 64;  // the second set
  cfg.rows[7] = 8, cfg.colsb[7] = 64;
  _tile_loadconfig(&cfg);
  const bool keep = nb <= kAmxMaxNb;
  alignas(64) int8_t bt[kAmxMaxNb * 512];
  alignas(64) float sc[kAmxMaxNb * 16];
  alignas(64) int32_t c1[512], c2[512];
  const size_t xs = size_t(nb) * 32;
  // lane -> row is its own inverse (kLaneRow), so one permute puts the lanes in row order
  const __m512i to_rows = _mm512_setr_epi32(0, 1, 2, 3, 8, 9, 10, 11, 4, 5, 6, 7, 12, 13, 14, 15);
  for (int g = r0 / kR16; g * kR16 < r1; ++g) {
    const uint8_t* pk = packed + size_t(g) * nb * kR16RecordBytes;
    const int rows = std::min(kR16, r1 - g * kR16);
    const __mmask16 rmask = __mmask16((1u << rows) - 1u);
    if (keep)
      for (int b = 0; b < nb; ++b) r16_b_tile(pk + size_t(b) * kR16RecordBytes, bt + 512 * b, sc + 16 * b);
    for (int t0 = 0; t0 < mt; t0 += 16) {
      __m512 f[16];
      for (int t = 0; t < 16; ++t) f[t] = _mm512_setzero_ps();
      const int8_t* ah = q.hi + size_t(t0) * xs;
      const uint8_t* al = q.lo + size_t(t0) * xs;
      const float* st = q.step + size_t(t0) * nb;
      // Two sets of tiles and result buffers, so the tile products of block b run while the
      // float work of block b - 1 does (tiles 0, 1, 4 / 5, 6, 7; the A tiles 2, 3 shared).
#define GPTOSS_AMX_ISSUE(T1, T2, TB, b_)                                                  \
  do {                                                                                   \
    const int bi_ = (b_);                                                                \
    int8_t* bb_ = bt + 512 * (keep ? bi_ : (bi_ & 1));                                   \
    if (!keep) r16_b_tile(pk + size_t(bi_) * kR16RecordBytes, bb_, sc + 16 * (bi_ & 1)); \
    _tile_zero(T1);                                                                      \
    _tile_zero(T2);                                                                      \
    _tile_loadd(2, ah + 32 * size_t(bi_), xs);                                           \
    _tile_loadd(3, al + 32 * size_t(bi_), xs);                                           \
    _tile_loadd(TB, bb_, 64);                                                            \
    _tile_dpbssd(T1, 2, TB);                                                             \
    _tile_dpbusd(T2, 3, TB);                                                             \
    _tile_stored(T1, c1 + 256 * (bi_ & 1), 64);                                          \
    _tile_stored(T2, c2 + 256 * (bi_ & 1), 64);                                          \
  } while (0)
#define GPTOSS_AMX_POST(b_)                                                              \
  r16_amx_post(c1 + 256 * ((b_) & 1), c2 + 256 * ((b_) & 1),                             \
               sc + 16 * (keep ? (b_) : ((b_) & 1)), st + (b_), nb, f)
      GPTOSS_AMX_ISSUE(0, 1, 4, 0);
      for (int b = 1; b < nb; ++b) {
        if (b & 1)
          GPTOSS_AMX_ISSUE(5, 6, 7, b);
        else
          GPTOSS_AMX_ISSUE(0, 1, 4, b);
        GPTOSS_AMX_POST(b - 1);
      }
      GPTOSS_AMX_POST(nb - 1);
#undef GPTOSS_AMX_ISSUE
#undef GPTOSS_AMX_POST
      const __m512 bv = bias ? _mm512_maskz_loadu_ps(rmask, bias + size_t(g) * kR16) : _mm512_setzero_ps();
      for (int t = 0; t < std::min(16, mt - t0); ++t) {
        const __m512 v = _mm512_add_ps(_mm512_permutexvar_ps(to_rows, f[t]), bv);
        _mm512_mask_storeu_ps(out + size_t(t0 + t) * ldo + size_t(g) * kR16, rmask, v);
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
  // A tile of 16 tokens costs the AMX kernel about what 8 tokens cost the AVX-512 code (measured
  // by bench/bench_cpu_kernels.py), so a last partial tile of kAmxMinTail tokens or more takes the
  // tiles too, and fewer take the AVX-512 code; either way the same bits. (int8 activations,
  // levels 1, take the AVX-512 VNNI code throughout.)
  if (active_isa() >= Isa::Amx && q.levels == 2) {
    const int rem = m % 16;
    const int mt = rem >= kAmxMinTail ? m : m - rem;
    if (mt > 0) r16_rows_amx(packed, nb, r0, r1, q, mt, bias, out, ldo);
    if (mt < m)
      r16_rows_avx512(packed, nb, r0, r1, q.from_row(mt), m - mt, bias,
                      out + size_t(mt) * ldo, ldo);
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

}  // namespace cpu
}  // namespace gptoss
