// The dense products in int8 (Options::dense_weights "int8"): QKV, the output projection, the
// router and the unembedding quantized once at load, per row and 32-block, into int8 codes with a
// float32 scale, and multiplied against the int16 activations of Q16Act (mxfp4_r16.cpp).
//
// Quantization (backends/numpy.py's quantize_dense_int8 is the executable spec): for row r and
// block b of 32 values w (bf16 widened to float32), scale = max|w| / 127 (0 for an all-zero
// block) and code = clamp(rint(w / scale), -127, 127) in float32 arithmetic; the weight stands
// for code * scale (an error up to scale / 2 = max|w| / 254 per value).
//
// Packed layout ("q8r16"): groups of 16 rows (the last padded with zero codes and scale 0), each
// group nb records of kQ8R16RecordBytes, record b:
//   bytes [32j, 32j + 32), j = 0..15: byte 2i + e holds the code of row i at block position
//     kQ16Pos[2j + e], the value that Q16Act's pair j of the block meets (q16_quantize's order)
//   bytes [512, 576): the 16 rows' float32 scales, row order
// so a sign-extended 16-byte half is 8 rows' pairs, one vpmaddwd against the broadcast activation
// pair gives those rows' two products in their own int32 lanes, and the lanes are rows in order.
//
// Arithmetic. Per row, token and block the integer sum S = sum(code * q) is exact (|S| <= 32 *
// 127 * 32767 < 2^31); the row adds fma(float(S), scale * 2 step, acc) in float32 in block order
// (x ~= 2 step q, Q16Act), then the bias. Every level does these operations in this order, so the
// results are the same bits at every SIMD level and for any grouping of rows and tokens (the
// engine's decode, prefill and batches agree exactly).
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
// Q16Act's order within a block: position p of its int16 codes holds value kQ16Pos[p]
constexpr int kQ16Pos[32] = {0,  2,  1,  3,  4,  6,  5,  7,  8,  10, 9,  11, 12, 14, 13, 15,
                             16, 18, 17, 19, 20, 22, 21, 23, 24, 26, 25, 27, 28, 30, 29, 31};
constexpr int kCodeBytes = 512;
}  // namespace

size_t q8_r16_bytes(int R, int nb) {
  return size_t((R + kR16 - 1) / kR16) * size_t(nb) * kQ8R16RecordBytes;
}

void q8_r16_pack(const uint16_t* W, size_t ldw, int R, int K, int g0, int g1, uint8_t* out) {
  GPTOSS_CHECK(K % 32 == 0 && K > 0, "q8_r16_pack: K = " << K << " is not a multiple of 32");
  const int nb = K / 32;
  for (int g = g0; g < g1; ++g) {
    uint8_t* grp = out + size_t(g) * nb * kQ8R16RecordBytes;
    for (int b = 0; b < nb; ++b) {
      uint8_t* rec = grp + size_t(b) * kQ8R16RecordBytes;
      float scales[kR16] = {};
      int8_t codes[kR16][32] = {};
      for (int i = 0; i < kR16; ++i) {
        const int r = g * kR16 + i;
        if (r >= R) continue;
        float w[32], amax = 0.f;
        for (int k = 0; k < 32; ++k) {
          w[k] = bf16_to_f32(W[size_t(r) * ldw + size_t(b) * 32 + k]);
          amax = std::max(amax, std::fabs(w[k]));
        }
        const float scale = amax / 127.0f;
        scales[i] = scale;
        for (int k = 0; k < 32; ++k) {
          const float c = scale > 0.f ? std::nearbyint(w[k] / scale) : 0.f;
          codes[i][k] = int8_t(std::min(127.f, std::max(-127.f, c)));
        }
      }
      for (int j = 0; j < 16; ++j)
        for (int i = 0; i < kR16; ++i)
          for (int e = 0; e < 2; ++e)
            rec[32 * j + 2 * i + e] = uint8_t(codes[i][kQ16Pos[2 * j + e]]);
      std::memcpy(rec + kCodeBytes, scales, sizeof scales);
    }
  }
}

// ------------------------------------------------------------------------------------ plain
static void q8_rows_plain(const uint8_t* packed, int nb, int r0, int r1, const Q16Act& q, int m,
                          const float* bias, float* out, int ldo) {
  for (int g = r0 / kR16; g * kR16 < r1; ++g) {
    const uint8_t* grp = packed + size_t(g) * nb * kQ8R16RecordBytes;
    for (int t = 0; t < m; ++t) {
      float acc[kR16] = {};
      for (int b = 0; b < nb; ++b) {
        const uint8_t* rec = grp + size_t(b) * kQ8R16RecordBytes;
        const int16_t* x = q.q + (size_t(t) * nb + b) * 32;
        int32_t S[kR16] = {};
        for (int j = 0; j < 16; ++j)
          for (int i = 0; i < kR16; ++i)
            S[i] += int32_t(int8_t(rec[32 * j + 2 * i])) * x[2 * j] +
                    int32_t(int8_t(rec[32 * j + 2 * i + 1])) * x[2 * j + 1];
        float sc[kR16];
        std::memcpy(sc, rec + kCodeBytes, sizeof sc);
        const float s2 = 2.0f * q.step[size_t(t) * nb + b];
        for (int i = 0; i < kR16; ++i) acc[i] = std::fma(float(S[i]), sc[i] * s2, acc[i]);
      }
      for (int i = 0; i < kR16 && g * kR16 + i < r1; ++i) {
        const int r = g * kR16 + i;
        out[size_t(t) * ldo + r] = acc[i] + (bias ? bias[r] : 0.f);
      }
    }
  }
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
// records ahead that the SIMD code prefetches (a decode step streams the groups once)
constexpr int kQ8PrefetchAhead = 2;  // 6 measured no faster (Zen 3)

// ------------------------------------------------------------------------------------ AVX2
// One group against T tokens: per pair j, the two sign-extended halves (rows 0-7, 8-15) serve all
// T tokens. VNNI: vpdpwssd does the vpmaddwd and the add in one (the avx2vnni level).
#define GPTOSS_Q8_AVX2 __attribute__((target("avx2,fma")))
#define GPTOSS_Q8_AVX2VNNI __attribute__((target("avx2,fma,avxvnni")))

// (one body for both levels: GCC inlines an intrinsic only into a function of its target)
#define GPTOSS_Q8_TILE_AVX2(NAME, ATTR, ACC)                                                    \
  template <int T>                                                                            \
  ATTR static void NAME(const uint8_t* grp, int nb, const Q16Act& q, int t0, float* f) {      \
    __m256 fa[T], fb[T];                                                                      \
    for (int t = 0; t < T; ++t) fa[t] = fb[t] = _mm256_setzero_ps();                          \
    const size_t xs = size_t(nb) * 32;                                                        \
    for (int b = 0; b < nb; ++b) {                                                            \
      const uint8_t* rec = grp + size_t(b) * kQ8R16RecordBytes;                               \
      for (int o = 0; o < int(kQ8R16RecordBytes); o += 64)                                    \
        _mm_prefetch(reinterpret_cast<const char*>(rec + kQ8PrefetchAhead * kQ8R16RecordBytes + o), \
                     _MM_HINT_T0);                                                            \
      __m256i sa[T], sb[T];                                                                   \
      for (int t = 0; t < T; ++t) sa[t] = sb[t] = _mm256_setzero_si256();                     \
      for (int j = 0; j < 16; ++j) {                                                          \
        const __m256i w0 =                                                                    \
            _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(rec + 32 * j))); \
        const __m256i w1 = _mm256_cvtepi8_epi16(                                              \
            _mm_loadu_si128(reinterpret_cast<const __m128i*>(rec + 32 * j + 16)));            \
        for (int t = 0; t < T; ++t) {                                                         \
          int32_t pr;                                                                         \
          std::memcpy(&pr, q.q + size_t(t0 + t) * xs + size_t(b) * 32 + 2 * j, 4);            \
          const __m256i x = _mm256_set1_epi32(pr);                                            \
          sa[t] = ACC(sa[t], w0, x);                                                          \
          sb[t] = ACC(sb[t], w1, x);                                                          \
        }                                                                                     \
      }                                                                                       \
      const __m256 c0 = _mm256_loadu_ps(reinterpret_cast<const float*>(rec + kCodeBytes));    \
      const __m256 c1 = _mm256_loadu_ps(reinterpret_cast<const float*>(rec + kCodeBytes) + 8); \
      for (int t = 0; t < T; ++t) {                                                           \
        const __m256 s2 = _mm256_set1_ps(2.0f * q.step[size_t(t0 + t) * nb + b]);             \
        fa[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sa[t]), _mm256_mul_ps(c0, s2), fa[t]);     \
        fb[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sb[t]), _mm256_mul_ps(c1, s2), fb[t]);     \
      }                                                                                       \
    }                                                                                         \
    for (int t = 0; t < T; ++t) {                                                             \
      _mm256_storeu_ps(f + 16 * t, fa[t]);                                                    \
      _mm256_storeu_ps(f + 16 * t + 8, fb[t]);                                                \
    }                                                                                         \
  }
#define GPTOSS_Q8_MADD_ADD_256(acc, w, x) _mm256_add_epi32(acc, _mm256_madd_epi16(w, x))
GPTOSS_Q8_TILE_AVX2(q8_tile_avx2, GPTOSS_Q8_AVX2, GPTOSS_Q8_MADD_ADD_256)
GPTOSS_Q8_TILE_AVX2(q8_tile_avxvnni, GPTOSS_Q8_AVX2VNNI, _mm256_dpwssd_avx_epi32)

// ------------------------------------------------------------------------------------ AVX-512
// The 32 bytes of pair j sign-extended to one register: the 16 rows' lanes in order.
#define GPTOSS_Q8_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")))
#define GPTOSS_Q8_AVX512VNNI \
  __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma")))

#define GPTOSS_Q8_TILE_AVX512(NAME, ATTR, ACC)                                                  \
  template <int T>                                                                            \
  ATTR static void NAME(const uint8_t* grp, int nb, const Q16Act& q, int t0, float* f) {      \
    __m512 fa[T];                                                                             \
    for (int t = 0; t < T; ++t) fa[t] = _mm512_setzero_ps();                                  \
    const size_t xs = size_t(nb) * 32;                                                        \
    for (int b = 0; b < nb; ++b) {                                                            \
      const uint8_t* rec = grp + size_t(b) * kQ8R16RecordBytes;                               \
      for (int o = 0; o < int(kQ8R16RecordBytes); o += 64)                                    \
        _mm_prefetch(reinterpret_cast<const char*>(rec + kQ8PrefetchAhead * kQ8R16RecordBytes + o), \
                     _MM_HINT_T0);                                                            \
      __m512i sa[T];                                                                          \
      for (int t = 0; t < T; ++t) sa[t] = _mm512_setzero_si512();                             \
      for (int j = 0; j < 16; ++j) {                                                          \
        const __m512i w = _mm512_cvtepi8_epi16(                                               \
            _mm256_loadu_si256(reinterpret_cast<const __m256i*>(rec + 32 * j)));              \
        for (int t = 0; t < T; ++t) {                                                         \
          int32_t pr;                                                                         \
          std::memcpy(&pr, q.q + size_t(t0 + t) * xs + size_t(b) * 32 + 2 * j, 4);            \
          sa[t] = ACC(sa[t], w, _mm512_set1_epi32(pr));                                       \
        }                                                                                     \
      }                                                                                       \
      const __m512 c = _mm512_loadu_ps(reinterpret_cast<const float*>(rec + kCodeBytes));     \
      for (int t = 0; t < T; ++t) {                                                           \
        const __m512 s2 = _mm512_set1_ps(2.0f * q.step[size_t(t0 + t) * nb + b]);             \
        fa[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sa[t]), _mm512_mul_ps(c, s2), fa[t]);      \
      }                                                                                       \
    }                                                                                         \
    for (int t = 0; t < T; ++t) _mm512_storeu_ps(f + 16 * t, fa[t]);                          \
  }
#define GPTOSS_Q8_MADD_ADD_512(acc, w, x) _mm512_add_epi32(acc, _mm512_madd_epi16(w, x))
GPTOSS_Q8_TILE_AVX512(q8_tile_avx512, GPTOSS_Q8_AVX512, GPTOSS_Q8_MADD_ADD_512)
GPTOSS_Q8_TILE_AVX512(q8_tile_avx512vnni, GPTOSS_Q8_AVX512VNNI, _mm512_dpwssd_epi32)

using Q8Tile = void (*)(const uint8_t*, int, const Q16Act&, int, float*);

// each level's tiles for 1..6 tokens (a level of fewer repeats its widest)
const Q8Tile kAvx2Tiles[6] = {&q8_tile_avx2<1>, &q8_tile_avx2<2>, &q8_tile_avx2<3>,
                              &q8_tile_avx2<3>, &q8_tile_avx2<3>, &q8_tile_avx2<3>};
const Q8Tile kAvxVnniTiles[6] = {&q8_tile_avxvnni<1>, &q8_tile_avxvnni<2>, &q8_tile_avxvnni<3>,
                                 &q8_tile_avxvnni<3>, &q8_tile_avxvnni<3>, &q8_tile_avxvnni<3>};
const Q8Tile kAvx512Tiles[6] = {&q8_tile_avx512<1>, &q8_tile_avx512<2>, &q8_tile_avx512<3>,
                                &q8_tile_avx512<4>, &q8_tile_avx512<5>, &q8_tile_avx512<6>};
const Q8Tile kAvx512VnniTiles[6] = {&q8_tile_avx512vnni<1>, &q8_tile_avx512vnni<2>,
                                    &q8_tile_avx512vnni<3>, &q8_tile_avx512vnni<4>,
                                    &q8_tile_avx512vnni<5>, &q8_tile_avx512vnni<6>};

// Rows [r0, r1) against m tokens, up to TM tokens a tile (the weights of a group re-read per tile).
static void q8_rows_simd(const Q8Tile* fns, int TM, const uint8_t* packed, int nb, int r0, int r1,
                         const Q16Act& q, int m, const float* bias, float* out, int ldo) {
  alignas(64) float f[6 * kR16];
  for (int g = r0 / kR16; g * kR16 < r1; ++g) {
    const uint8_t* grp = packed + size_t(g) * nb * kQ8R16RecordBytes;
    const int rows = std::min(kR16, r1 - g * kR16);
    for (int t = 0; t < m;) {
      const int T = std::min(TM, m - t);
      fns[T - 1](grp, nb, q, t, f);
      for (int j = 0; j < T; ++j) {
        float* o = out + size_t(t + j) * ldo + size_t(g) * kR16;
        for (int i = 0; i < rows; ++i) o[i] = f[16 * j + i] + (bias ? bias[size_t(g) * kR16 + i] : 0.f);
      }
      t += T;
    }
  }
}
#endif

}  // namespace cpu
}  // namespace gptoss

namespace gptoss {
namespace cpu {

void q8w_r16_gemm_rows(const uint8_t* packed, int nb, int r0, int r1, const Q16Act& q, int m,
                       const float* bias, float* out, int ldo) {
  GPTOSS_CHECK(r0 % kR16 == 0 && r0 <= r1, "q8w_r16_gemm_rows: rows [" << r0 << ", " << r1
                                                                       << ") do not start a group");
  GPTOSS_CHECK(nb == q.nb && q.levels == 2,
               "q8w_r16_gemm_rows: needs int16 activations (levels 2) of " << nb << " blocks");
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  const Isa isa = active_isa();
  if (isa >= Isa::Avx512) return q8_rows_simd(kAvx512VnniTiles, 6, packed, nb, r0, r1, q, m, bias, out, ldo);
  if (isa >= Isa::Avx512Bw) return q8_rows_simd(kAvx512Tiles, 6, packed, nb, r0, r1, q, m, bias, out, ldo);
  if (isa == Isa::Avx2Vnni) return q8_rows_simd(kAvxVnniTiles, 3, packed, nb, r0, r1, q, m, bias, out, ldo);
  if (isa >= Isa::Avx2) return q8_rows_simd(kAvx2Tiles, 3, packed, nb, r0, r1, q, m, bias, out, ldo);
#endif
  q8_rows_plain(packed, nb, r0, r1, q, m, bias, out, ldo);
}

}  // namespace cpu
}  // namespace gptoss
