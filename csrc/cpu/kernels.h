// CPU kernels (layer 1): raw pointers and sizes in, no allocation, no Python. Each kernel family
// has a plain C++ version (the reference, used everywhere) and SIMD versions chosen at run time
// (cpu_features.h); cpu::force_isa() pins one for tests. Shapes are given next to each pointer;
// all matrices are row-major.
#pragma once
#include <cstddef>
#include <cstdint>

#include "cpu/cpu_features.h"

namespace gptoss {
namespace cpu {

// ------------------------------------------------------------------------------------ MXFP4
// MXFP4 -> float32. blocks [rows, nb, 16] u8, scales [rows, nb] u8 -> out [rows, nb * 32].
void f32_mf4_dequant(const uint8_t* blocks, const uint8_t* scales, size_t rows, size_t nb,
                     float* out);

// Activations quantized for the MXFP4 integer dot product, in two int8 levels per 32-block:
// x ~= step * (254 * q1 + q2), step = max|x| / 127 / 254, so the error is below
// max|x| / 64516 per element (about 2^-16 relative: float32-class for this use). Values are
// stored de-interleaved the way MXFP4 bytes hold them (even values, then odd values, 16 each per
// block), with per-lane correction sums for the unsigned-weight trick, padded to whole groups of
// 4 blocks (64 bytes).
struct Q8Act {
  int nb = 0;        // 32-blocks per row (K / 32)
  int nbp = 0;       // nb rounded up to a multiple of 4
  int8_t* e1 = nullptr;   // [m, nbp * 16] level-1 codes of the even values
  int8_t* o1 = nullptr;   // [m, nbp * 16] level-1 codes of the odd values
  int8_t* e2 = nullptr;   // [m, nbp * 16] level 2, even
  int8_t* o2 = nullptr;   // [m, nbp * 16] level 2, odd
  int32_t* c1 = nullptr;  // [m, nbp * 4] -12 * (sum of the 8 level-1 codes of each 32-bit lane)
  int32_t* c2 = nullptr;  // [m, nbp * 4] the same for level 2
  float* step = nullptr;   // [m, nbp * 4] step / 2 of each block, repeated for its 4 lanes
  float* step1 = nullptr;  // [m, nbp * 4] the same for one level: max|x| / 127 / 2
  static size_t bytes(int m, int K);             // workspace needed for m rows of K values
  static Q8Act carve(void* workspace, int m, int K);
};

// Quantize m rows of x [m, K] (K % 32 == 0) into q.
void q8_quantize(const float* x, int m, int K, const Q8Act& q);

// out[t, r] = sum_k W[r, k] * x[t, k] (+ bias[r]) for the MXFP4 matrix W given by
// blocks [R, nb, 16] and scales [R, nb], for rows r in [r0, r1) and the m quantized rows of q.
// out has row stride ldo. levels = 2 uses both activation levels (error ~2^-16 of the block
// maximum, float32-class); levels = 1 only the first (error up to 1/254 of the block maximum,
// about half the arithmetic). Single-threaded: callers split rows over threads.
void mf4w_q8_gemm_rows(const uint8_t* blocks, const uint8_t* scales, int r0, int r1,
                       const Q8Act& q, int m, const float* bias, float* out, int ldo,
                       int levels = 2);

// MXFP4 repacked for AVX2-class processors (mxfp4_r16.cpp has the layout and the arithmetic):
// 16 rows of each 32-block stored together with their scales, against int16 activations. The
// results are the same bits at every SIMD level and for any grouping of rows and tokens.
constexpr int kR16 = 16;                    // rows per group
constexpr size_t kR16RecordBytes = 272;     // one group's 32-block: 256 code bytes + 16 scales
size_t mf4_r16_bytes(int R, int nb);        // packed size of an [R, nb] MXFP4 matrix
// Packs the row groups [g0, g1) of blocks [R, nb, 16] / scales [R, nb] into out (the whole
// packed matrix; only those groups' records are written).
void mf4_r16_pack(const uint8_t* blocks, const uint8_t* scales, int R, int nb, int g0, int g1,
                  uint8_t* out);

// Activations in int16 per 32-block: x ~= 2 * step * q, |error| <= max|x_block| / 65534.
// levels = 1 (activation_levels 1): int8 per block instead, x ~= 2 * step * q8 with
// step = max|x| / 127 / 2, |error| <= max|x_block| / 254 (mxfp4_r16.cpp: the int8 kernels).
struct Q16Act {
  int nb = 0;
  int levels = 2;
  // the exact integer code for any number of tokens (batch_invariant): at the amx level no
  // AMX-BF16 tiles, whose results differ from it in the last bits
  bool exact = false;
  // levels 2: [m, nb, 32] in the pair order of the packed weights. levels 1: the same memory as
  // [m, nb, 16] 32-bit words, word 2c + j of a block the int8 pair (q8[4c + j], q8[4c + j + 2])
  // twice (the pair one vpmaddubsw lane meets, ready for a 32-bit broadcast)
  int16_t* q = nullptr;
  int32_t* corr = nullptr;   // [m, nb] -12 * sum(q) of each block (the unsigned-weight trick)
  float* step = nullptr;     // [m, nb] max|x| / 32767 / 2 (levels 1: max|x| / 127 / 2)
  // q split into bytes for the one-token VNNI kernel, q = 256 * hi + lo exactly: [m, nb * 32]
  // each, the values in the pair order of q
  int8_t* hi = nullptr;
  uint8_t* lo = nullptr;
  // at the amx level only, unless exact (q16_quantize fills them there): x as two bf16 terms,
  // xh = bf16(x), xl = bf16(x - xh) (levels 1: xh alone), [m, nb * 32] each in K order (the
  // AMX-BF16 tiles' A rows)
  uint16_t* xh = nullptr;
  uint16_t* xl = nullptr;
  // Where mf4w_r16_gemm_rows's prefill panels run (carve with r16, more than 8 tokens), the
  // same q, corr and step again block-major: qb [nb][ms][64 bytes], corrb and stepb [nb][ms], so
  // the tokens of a tile are one pointer and constant offsets apart (ms = 0: not made)
  int ms = 0;
  uint8_t* qb = nullptr;
  int32_t* corrb = nullptr;
  float* stepb = nullptr;
  static size_t bytes(int m, int K);
  // r16: the activations of mf4w_r16_gemm_rows (then the block-major copies where it reads them)
  static Q16Act carve(void* workspace, int m, int K, int levels = 2, bool exact = false,
                      bool r16 = false);
  // the same workspace from token row `off` on
  Q16Act from_row(int off) const {
    Q16Act r = *this;
    const size_t n = size_t(nb) * size_t(off);
    r.q += n * 32;
    r.corr += n;
    r.step += n;
    r.hi += n * 32;
    r.lo += n * 32;
    r.xh += n * 32;
    r.xl += n * 32;
    if (r.ms) {
      r.qb += size_t(off) * 64;
      r.corrb += off;
      r.stepb += off;
    }
    return r;
  }
};
void q16_quantize(const float* x, int m, int K, const Q16Act& q);

// out[t, r] = sum_k W[r, k] * x[t, k] (+ bias[r]) for rows [r0, r1) (r0 a multiple of kR16) of
// the packed matrix with nb blocks per row, and the m rows of q. Single-threaded. At the amx
// level, unless q.exact, 8 tokens or more go through the AMX-BF16 tiles (float32-class, not the
// integer code's bits; mxfp4_r16.cpp says why), fewer through the AVX-512 code.
void mf4w_r16_gemm_rows(const uint8_t* packed, int nb, int r0, int r1, const Q16Act& q, int m,
                        const float* bias, float* out, int ldo);

// ------------------------------------------------------------------------------------ int8 dense
// The dense products with int8 weights (Options::dense_weights "int8"; dense_q8.cpp has the
// quantization, the layout and the arithmetic): 16 rows of each 32-block of codes stored
// together with their float32 scales, against int16 activations (Q16Act, levels 2). The same
// bits at every SIMD level and for any grouping of rows and tokens.
constexpr size_t kQ8R16RecordBytes = 576;  // one group's 32-block: 512 code bytes + 16 scales
size_t q8_r16_bytes(int R, int nb);        // packed size of an [R, nb * 32] matrix
// Quantizes the row groups [g0, g1) of the bf16 matrix W [R, K] (row stride ldw elements,
// K % 32 == 0) into out (the whole packed matrix; only those groups' records are written).
void q8_r16_pack(const uint16_t* W, size_t ldw, int R, int K, int g0, int g1, uint8_t* out);
// out[t, r] = sum_k W8[r, k] * x[t, k] (+ bias[r]) for rows [r0, r1) (r0 a multiple of kR16) of
// the packed matrix with nb blocks per row and the m rows of q (levels 2). Single-threaded.
void q8w_r16_gemm_rows(const uint8_t* packed, int nb, int r0, int r1, const Q16Act& q, int m,
                       const float* bias, float* out, int ldo);

// ------------------------------------------------------------------------------------ bf16
// out[t, r] = sum_k W[r, k] * x[t, k] (+ bias[r]), W bf16 [R, K] with row stride ldw elements,
// x [m, K] f32, rows r in [r0, r1). Single-threaded; callers split rows over threads.
// xpair: x in pair order for the SIMD kernels, in each run of 16 (AVX2) or 32 (AVX-512) values
// the even then the odd ones (the tail past the last whole run in place), prepared by
// bf16_pair_order. bf16_wants_pair_order(): whether the active level reads xpair (callers
// arrange x once per product, not per band of rows).
// levels: the activation levels (activation_levels): with 1 at the avx512bf16 level x is taken
// as bf16 (prepared by bf16_pair_order with the same levels) on vdpbf16ps.
void bf16w_gemm_rows(const uint16_t* W, size_t ldw, int r0, int r1, const float* x,
                     const float* xpair, int m, int K, const float* bias, float* out, int ldo,
                     int levels = 2);
// At the amx level the prepared x is the AMX kernel's (gemm_bf16.cpp): two bf16 terms per value
// in tile order, bf16_pair_order_floats(m, K) floats of it; with levels 1 at the avx512bf16
// level bf16(x) in K order.
bool bf16_wants_pair_order();
size_t bf16_pair_order_floats(int m, int K, int levels = 2);
void bf16_pair_order(const float* x, int m, int K, float* out, int levels = 2);

// ------------------------------------------------------------------------------------ small ops
// out [n, H] = x * rsqrt(mean(x^2) + eps) * w
void rmsnorm(const float* x, const float* w, int n, int H, float eps, float* out);
// In place YaRN RoPE (half-split) on x [n, heads, d] with row stride ld (floats) per token;
// cos/sin [n, d/2] already scaled by the concentration.
void rope(float* x, int n, int heads, int d, int ld, const float* cos, const float* sin);
// Router: logits [n, E] -> the k largest (ties: lower index) and the softmax over those k.
void topk_softmax(const float* logits, int n, int E, int k, int32_t* experts, float* weights);
// u [m, 2I] (gate on even, linear on odd columns) -> a [m, I], the clamped SwiGLU.
void swiglu(const float* u, int m, int I, float alpha, float limit, float* a);

// Attention of n queries against caches, with sinks, GQA and an optional window.
// q [n, Hq, d] (row stride ldq floats); query t reads the cache kv[t] (one view per query, so a
// batch may mix sequences), whose k(pos, h)/v(pos, h) give the d values of kv head h at position
// pos: float32, or bf16 bits (uint16_t, Options::kv_dtype "bf16"; widened exactly to float32, so
// the result is float32 attention over the rounded keys and values, as backends/numpy.py's
// NumpyEngine(kv_dtype="bf16") computes). Query t sits at absolute position qpos[t] and sees
// positions max(0, qpos - window + 1) .. qpos (window <= 0: all). sinks [Hq]. out [n, Hq, d].
template <class T>
struct KVViewT {
  // paged cache: page p holds positions [p * page, (p+1) * page), ring layers use slot pos % ring
  // of page 0. Within a page (or the ring), position pos and kv head h sit at
  // (pos % page) * pos_stride + h * head_stride elements: position-major (pos_stride = Hkv * d,
  // head_stride = d; gptoss.ops.attention's arrays) or head-major (pos_stride = d, head_stride =
  // page * d; the CPU backend's cache, so one head's keys stream contiguously).
  T* const* k_pages = nullptr;
  T* const* v_pages = nullptr;
  int page = 0;          // positions per page (paged layers)
  int ring = 0;          // > 0: a ring of this many slots in page 0 (sliding layers)
  int pos_stride = 0;    // elements from one position to the next
  int head_stride = 0;   // elements from one kv head to the next
  const T* k(int pos, int h) const { return at(k_pages, pos, h); }
  const T* v(int pos, int h) const { return at(v_pages, pos, h); }

 private:
  const T* at(T* const* pages, int pos, int h) const {
    return ring ? pages[0] + size_t(pos % ring) * pos_stride + size_t(h) * head_stride
                : pages[pos / page] + size_t(pos % page) * pos_stride + size_t(h) * head_stride;
  }
};
using KVView = KVViewT<float>;
using KVViewBf16 = KVViewT<uint16_t>;
void attention(const float* q, int n, int ldq, const int32_t* qpos, const KVView* kv, int Hq,
               int Hkv, int d, int window, const float* sinks, float* out);
void attention(const float* q, int n, int ldq, const int32_t* qpos, const KVViewBf16* kv, int Hq,
               int Hkv, int d, int window, const float* sinks, float* out);

// Measured read bandwidth of this machine in GB/s: all threads stream a buffer of `bytes`
// (transparent huge pages where the kernel gives them), the best of `repeats` passes.
double read_bandwidth_gbs(size_t bytes, int repeats);

}  // namespace cpu
}  // namespace gptoss
