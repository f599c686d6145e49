// Attention with sinks, GQA and sliding windows over the bf16 KV cache (paged or ring layers),
// and the RoPE + KV-cache write that precedes it.
//
// Algorithm: flash attention (online softmax) on tensor cores. One warp owns 16 "query rows" of
// the mma M dimension: 16 / G query positions times the G query heads that share one kv head
// (G = 8 for gpt-oss: rows g and g + 8 of the mma tile are head g of two positions). A block
// stages key/value tiles of 64 positions for one kv head in shared memory (cp.async, 16-byte
// chunks gathered row by row through the page table or the ring, double buffered, XOR-swizzled
// so ldmatrix is conflict-free) and every warp of the block reuses them: each K/V row is read
// from memory once per block for all G heads and all the block's positions.
//   S = Q K^T: mma.m16n8k16, Q fragments in registers for the whole kernel, K via ldmatrix.
//   online softmax in registers (exp2 with the 1/sqrt(d) * log2(e) scale folded into Q), the
//   running max starting at the head's sink, row sums kept per lane and reduced once at the end.
//   O += P V: the S accumulators reused as the A fragments of P (FA2 register layout), V via
//   ldmatrix.trans.
// Precision: Q and P are split into bf16 hi + lo parts (x = hi + lo to about 2^-17 relative) and
// both parts go through the tensor cores against the exact bf16 K and V. That doubles the mma
// work but keeps the result at float32-class accuracy (relative error ~3e-6 in the tests, where
// plain bf16 Q and P give ~2e-3): decode is bound by reading the cache and does not notice,
// prefill pays it on a part of the layer that is a minority of its FLOPs below long contexts.
//
// Two launches of the same kernel template, chosen on the host from n:
//   decode (n <= kDecodeMaxRows): one warp per (row, kv head, split). Each row is treated as its
//     own sequence (a short prefill chunk is correct too: each row reads its keys itself, mostly
//     from L2). The keys are cut into `splits` contiguous ranges, the count chosen on the host
//     from max_len (bounded by the window), so the grid is fixed and graph-capturable; the ranges
//     themselves come from pos on the device, the last split taking whatever is left (a max_len
//     below the truth costs speed, not correctness). With splits > 1 each block writes an
//     unnormalised partial (acc, running max, sum) to the workspace and a combine kernel merges
//     them in split order (deterministic, no atomics). Half of the mma M rows idle (8 heads of
//     one position): the tensor cores have the throughput to spare.
//   per_row (the batch-invariant mode): the decode launch with one split for any n.
//   prefill (n > kDecodeMaxRows): 4 warps per block, a tile of 8 consecutive rows x the G heads
//     of one kv head (64 M rows), looping over the keys the tile's rows see, causal and window
//     masks per row, key tiles no row of a warp sees skipped by that warp. Rows are expected to
//     be one sequence (the engine's prefill chunks); a tile whose rows belong to several
//     sequences is processed in one pass per sequence (rows of the other sequences masked), so
//     any mix of rows is correct, only slower.
// Ring layers keep position p at ring row p % ring: every key a row sees must still be there when
// attention runs, i.e. ring >= window + (the sequence's rows in this call) - 1 (the engine keeps
// window + its chunk length).
//
// RoPE + KV write: one thread per (row, head, rotation pair), 8 heads of 32 pairs per block; the
// key and value heads of the row also store their bf16 rounding into the cache row.
#include <cmath>
#include <cstdint>

#include "common/numeric.h"
#include "cuda/kernels.h"
#include "cuda/mma.cuh"
#include "cuda/runtime.cuh"
#include "gptoss/error.h"

namespace gptoss {
namespace cuda {

namespace {

constexpr int kHeadDim = 64;           // the only head dim gpt-oss has
constexpr int kTileKeys = 64;          // keys per shared-memory tile
constexpr int kDecodeMaxRows = 64;     // n above this takes the prefill path
constexpr int kPrefillWarps = 4;
constexpr int kMinKeysPerSplit = 128;  // decode: a split covers at least two tiles
constexpr int kTargetRowSplits = 512;  // decode: n * splits aimed at (x Hkv blocks of one warp)
constexpr int kMaxSplits = 1024;
constexpr float kLog2e = 1.4426950408889634f;

__device__ __forceinline__ int imin(int a, int b) { return a < b ? a : b; }
__device__ __forceinline__ int imax(int a, int b) { return a > b ? a : b; }

// Row of the cache holding position p of the sequence in slot seq.
__device__ __forceinline__ size_t kv_row(const KVLayer& kv, int seq, int p) {
  if (kv.ring > 0) return size_t(seq) * kv.ring + size_t(p % kv.ring);
  return size_t(kv.page_table[size_t(seq) * kv.max_pages + p / kv.page]) * kv.page +
         size_t(p % kv.page);
}

// ------------------------------------------------------------------------------------ RoPE + KV
constexpr int kRopeHeadsPerBlock = 8;

// Products and sums rounded one by one (no FMA contraction), as NumPy computes the rotation, so
// the cache matches the NumPy engine bit for bit.
__device__ __forceinline__ float mul_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(a, b);
#else
  volatile float r = a * b;
  return r;
#endif
}

__global__ void __launch_bounds__(kRopeHeadsPerBlock * kHeadDim / 2)
    rope_kv_write_kernel(float* __restrict__ qkv,             // [n, (Hq + 2 Hkv) * d]
                         int Hq, int Hkv,
                         const int32_t* __restrict__ pos,      // [n]
                         const int32_t* __restrict__ row_seq,  // [n]
                         const float* __restrict__ cos_t,      // [max_pos, d / 2]
                         const float* __restrict__ sin_t,      // [max_pos, d / 2]
                         KVLayer kv) {
  constexpr int kHalf = kHeadDim / 2;
  const int t = blockIdx.y;
  const int head = blockIdx.x * kRopeHeadsPerBlock + int(threadIdx.x) / kHalf;
  const int i = int(threadIdx.x) % kHalf;
  if (head >= Hq + 2 * Hkv) return;
  float* x = qkv + size_t(t) * (Hq + 2 * Hkv) * kHeadDim + size_t(head) * kHeadDim;
  const int p = pos[t];
  float y1 = x[i], y2 = x[i + kHalf];
  if (head < Hq + Hkv) {  // query or key head: rotate
    const float c = cos_t[size_t(p) * kHalf + i], s = sin_t[size_t(p) * kHalf + i];
    const float x1 = y1, x2 = y2;
    y1 = mul_rn(x1, c) - mul_rn(x2, s);
    y2 = mul_rn(x2, c) + mul_rn(x1, s);
    x[i] = y1;
    x[i + kHalf] = y2;
  }
  if (head >= Hq) {  // key or value head: into the cache
    const bool is_k = head < Hq + Hkv;
    const int kh = is_k ? head - Hq : head - Hq - Hkv;
    uint16_t* dst = (is_k ? kv.k : kv.v) +
                    (kv_row(kv, row_seq[t], p) * Hkv + size_t(kh)) * kHeadDim;
    dst[i] = f32_to_bf16(y1);
    dst[i + kHalf] = f32_to_bf16(y2);
  }
}

// ------------------------------------------------------------------------------------ attention
struct AttentionSmem {
  // [stage][key][d] bf16; the 16-byte chunk c of key r sits at chunk c ^ (r & 7) of its row.
  uint16_t k[2][kTileKeys * kHeadDim];
  uint16_t v[2][kTileKeys * kHeadDim];
};

__device__ __forceinline__ int swizzle(int key, int chunk) {
  return key * kHeadDim + ((chunk ^ (key & 7)) << 3);
}

// x = hi + lo, both bf16 (two per register, lo column in the low half).
__device__ __forceinline__ void split_bf16x2(float a, float b, uint32_t& hi, uint32_t& lo) {
  const uint16_t ha = f32_to_bf16(a), hb = f32_to_bf16(b);
  hi = uint32_t(ha) | (uint32_t(hb) << 16);
  lo = pack_bf16x2(a - bf16_to_f32(ha), b - bf16_to_f32(hb));
}

// Keys [lo, hi] a query row sees; an empty range (lo > hi) for rows not taking part.
struct KeyRange {
  int lo, hi;
};

__device__ __forceinline__ KeyRange row_keys(int p, int window) {
  return {window > 0 && p - window + 1 > 0 ? p - window + 1 : 0, p};
}

// Grid: (row tiles, Hkv, splits); block: WARPS warps. BR rows per block (BR <= WARPS * 16 / G);
// warp w owns local rows w * (16 / G) + 0 .. 16 / G - 1, each with its G heads.
template <int G, int WARPS, int BR>
__global__ void __launch_bounds__(WARPS * 32)
    attention_kernel(const float* __restrict__ q,          // [n, ldq], head h at h * d
                     int ldq, int n,
                     const int32_t* __restrict__ pos,      // [n]
                     const int32_t* __restrict__ row_seq,  // [n]
                     KVLayer kv, int Hkv, int window,
                     const float* __restrict__ sinks,      // [Hq]
                     int keys_per_split,
                     float* __restrict__ part_acc,         // [n, Hq, splits, d] (splits > 1)
                     float* __restrict__ part_ml,          // [n, Hq, splits, 2] (splits > 1)
                     float* __restrict__ out) {            // [n, Hq * d] (splits == 1)
  static_assert(16 % G == 0, "a warp's 16 mma rows must hold whole groups of heads");
  constexpr int kSlots = 16 / G;  // positions per warp
  static_assert(BR <= WARPS * kSlots && BR <= 32, "tile rows");
  constexpr int kThreads = WARPS * 32;
  static_assert(kThreads % 8 == 0 && (kTileKeys * 8) % kThreads == 0, "tile loader");
  GPTOSS_DYNAMIC_SMEM(AttentionSmem, sm);

  const int Hq = Hkv * G;
  const int kvh = blockIdx.y;
  const int split = blockIdx.z, splits = gridDim.z;
  const int t0 = blockIdx.x * BR;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int g = lane / 4, tq = lane % 4;

  // The lane's two mma rows r = g and g + 8: local row and head within the group.
  int lrow[2], hg[2], trow[2];
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const int r = g + 8 * i;
    lrow[i] = warp * kSlots + r / G;
    hg[i] = r % G;
    trow[i] = (lrow[i] < BR && t0 + lrow[i] < n) ? t0 + lrow[i] : -1;
  }

  // Q fragments (A operand, 16 x 16 per k step), pre-scaled by 1/sqrt(d) * log2(e), hi and lo.
  constexpr float qscale = kLog2e / 8.0f;  // 1 / sqrt(64) * log2(e)
  uint32_t qhi[kHeadDim / 16][4], qlo[kHeadDim / 16][4];
#pragma unroll
  for (int kk = 0; kk < kHeadDim / 16; ++kk) {
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int i = j & 1;
      const int col = kk * 16 + 2 * tq + 8 * (j >> 1);
      float2 x2 = make_float2(0.f, 0.f);
      if (trow[i] >= 0)
        x2 = *reinterpret_cast<const float2*>(q + size_t(trow[i]) * ldq +
                                              size_t(kvh * G + hg[i]) * kHeadDim + col);
      split_bf16x2(x2.x * qscale, x2.y * qscale, qhi[kk][j], qlo[kk][j]);
    }
  }

  // Online-softmax state per mma row (log2 domain): max starts at the sink, sum at 0.
  float m[2], l[2] = {0.f, 0.f};
  float acc[kHeadDim / 8][4];
#pragma unroll
  for (int i = 0; i < 2; ++i) m[i] = sinks[kvh * G + hg[i]] * kLog2e;
#pragma unroll
  for (int nt = 0; nt < kHeadDim / 8; ++nt)
#pragma unroll
    for (int i = 0; i < 4; ++i) acc[nt][i] = 0.f;

  // One pass per sequence among the tile's rows (a single pass for a prefill chunk or a decode
  // row). Every thread computes the same block-uniform values from pos / row_seq.
  uint32_t done = 0;
  for (;;) {
    int seq = -1;
    for (int r = 0; r < BR && t0 + r < n; ++r)
      if (!(done >> r & 1u)) {
        seq = row_seq[t0 + r];
        break;
      }
    if (seq < 0) break;
    int ulo = 0x7fffffff, uhi = -1, wlo = 0x7fffffff, whi = -1;
    for (int r = 0; r < BR && t0 + r < n; ++r) {
      if ((done >> r & 1u) || row_seq[t0 + r] != seq) continue;
      done |= 1u << r;
      const KeyRange kr = row_keys(pos[t0 + r], window);
      ulo = imin(ulo, kr.lo);
      uhi = imax(uhi, kr.hi);
      if (r / kSlots == warp) {
        wlo = imin(wlo, kr.lo);
        whi = imax(whi, kr.hi);
      }
    }
    // This block's share of the keys: split `split` of [ulo, uhi], the last one up to uhi.
    const int klo = ulo + split * keys_per_split;
    const int khi = split == splits - 1 ? uhi : imin(uhi, klo + keys_per_split - 1);
    KeyRange rk[2];
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      rk[i] = {1, 0};
      if (trow[i] >= 0 && row_seq[trow[i]] == seq) rk[i] = row_keys(pos[trow[i]], window);
    }
    const int ntiles = khi >= klo ? (khi - klo + kTileKeys) / kTileKeys : 0;

    auto load_tile = [&](int stage, int kbase) {
      const int c = threadIdx.x % 8;
#pragma unroll
      for (int r = threadIdx.x / 8; r < kTileKeys; r += kThreads / 8) {
        const int j = kbase + r;
        const bool ok = j <= khi;
        const size_t off =
            ok ? (kv_row(kv, seq, j) * Hkv + size_t(kvh)) * kHeadDim + size_t(c) * 8 : 0;
        cp_async_16(&sm->k[stage][swizzle(r, c)], kv.k + off, ok ? 16 : 0);
        cp_async_16(&sm->v[stage][swizzle(r, c)], kv.v + off, ok ? 16 : 0);
      }
      cp_async_commit();
    };

    if (ntiles > 0) load_tile(0, klo);
    for (int it = 0; it < ntiles; ++it) {
      const int stage = it & 1;
      const int kbase = klo + it * kTileKeys;
      if (it + 1 < ntiles) {
        load_tile(stage ^ 1, kbase + kTileKeys);
        cp_async_wait<1>();
      } else {
        cp_async_wait<0>();
      }
      __syncthreads();

      // Warp-uniform skip of tiles none of this warp's rows see (causal prefill).
      if (wlo <= whi && kbase <= whi && kbase + kTileKeys - 1 >= wlo) {
        const uint16_t* sk = sm->k[stage];
        const uint16_t* sv = sm->v[stage];

        // S = Q K^T: 8 n-tiles of 8 keys.
        float s[kTileKeys / 8][4];
#pragma unroll
        for (int nt = 0; nt < kTileKeys / 8; ++nt)
#pragma unroll
          for (int i = 0; i < 4; ++i) s[nt][i] = 0.f;
#pragma unroll
        for (int kk = 0; kk < kHeadDim / 16; ++kk) {
#pragma unroll
          for (int np = 0; np < kTileKeys / 16; ++np) {
            // matrices: (keys +0..7 | +8..15) x (dims 16kk + 0..7 | + 8..15)
            const int mtx = lane / 8;
            const int key = np * 16 + (mtx >> 1) * 8 + lane % 8;
            uint32_t b[4];
            ldmatrix_x4(b, sk + swizzle(key, 2 * kk + (mtx & 1)));
            const uint32_t b0[2] = {b[0], b[1]}, b1[2] = {b[2], b[3]};
            mma_bf16_16816(s[2 * np], qhi[kk], b0);
            mma_bf16_16816(s[2 * np], qlo[kk], b0);
            mma_bf16_16816(s[2 * np + 1], qhi[kk], b1);
            mma_bf16_16816(s[2 * np + 1], qlo[kk], b1);
          }
        }

        // Masks and the online softmax.
        float mx[2] = {m[0], m[1]};
#pragma unroll
        for (int nt = 0; nt < kTileKeys / 8; ++nt)
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const int i = e >> 1;
            const int key = kbase + nt * 8 + 2 * tq + (e & 1);
            if (key < rk[i].lo || key > rk[i].hi || key > khi) s[nt][e] = -INFINITY;
            mx[i] = fmaxf(mx[i], s[nt][e]);
          }
        float alpha[2];
#pragma unroll
        for (int i = 0; i < 2; ++i) {
          mx[i] = fmaxf(mx[i], __shfl_xor_sync(0xffffffffu, mx[i], 1));
          mx[i] = fmaxf(mx[i], __shfl_xor_sync(0xffffffffu, mx[i], 2));
          alpha[i] = exp2f(m[i] - mx[i]);
          m[i] = mx[i];
          l[i] *= alpha[i];
        }
#pragma unroll
        for (int nt = 0; nt < kTileKeys / 8; ++nt)
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            s[nt][e] = exp2f(s[nt][e] - m[e >> 1]);
            l[e >> 1] += s[nt][e];
          }
#pragma unroll
        for (int nt = 0; nt < kHeadDim / 8; ++nt)
#pragma unroll
          for (int e = 0; e < 4; ++e) acc[nt][e] *= alpha[e >> 1];

        // O += P V: key steps of 16, P from the S accumulators.
#pragma unroll
        for (int ks = 0; ks < kTileKeys / 16; ++ks) {
          uint32_t phi[4], plo[4];
          split_bf16x2(s[2 * ks][0], s[2 * ks][1], phi[0], plo[0]);
          split_bf16x2(s[2 * ks][2], s[2 * ks][3], phi[1], plo[1]);
          split_bf16x2(s[2 * ks + 1][0], s[2 * ks + 1][1], phi[2], plo[2]);
          split_bf16x2(s[2 * ks + 1][2], s[2 * ks + 1][3], phi[3], plo[3]);
#pragma unroll
          for (int dp = 0; dp < kHeadDim / 16; ++dp) {
            // matrices: (keys 16ks + 0..7 | + 8..15) x (dims 16dp + 0..7 | + 8..15), transposed
            const int mtx = lane / 8;
            const int key = ks * 16 + (mtx & 1) * 8 + lane % 8;
            uint32_t b[4];
            ldmatrix_x4_trans(b, sv + swizzle(key, 2 * dp + (mtx >> 1)));
            const uint32_t b0[2] = {b[0], b[1]}, b1[2] = {b[2], b[3]};
            mma_bf16_16816(acc[2 * dp], phi, b0);
            mma_bf16_16816(acc[2 * dp], plo, b0);
            mma_bf16_16816(acc[2 * dp + 1], phi, b1);
            mma_bf16_16816(acc[2 * dp + 1], plo, b1);
          }
        }
      }
      __syncthreads();  // the stage is refilled by the next iteration's prefetch
    }
  }

  // Row sums across the 4 lanes of a row, then the output or the partial.
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    l[i] += __shfl_xor_sync(0xffffffffu, l[i], 1);
    l[i] += __shfl_xor_sync(0xffffffffu, l[i], 2);
  }
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    if (trow[i] < 0) continue;
    const int h = kvh * G + hg[i];
    if (splits == 1) {
      const float inv = 1.f / (l[i] + exp2f(sinks[h] * kLog2e - m[i]));
      float* o = out + size_t(trow[i]) * Hq * kHeadDim + size_t(h) * kHeadDim;
#pragma unroll
      for (int nt = 0; nt < kHeadDim / 8; ++nt) {
        float2 v2;
        v2.x = acc[nt][2 * i] * inv;
        v2.y = acc[nt][2 * i + 1] * inv;
        *reinterpret_cast<float2*>(o + nt * 8 + 2 * tq) = v2;
      }
    } else {
      const size_t ps = (size_t(trow[i]) * Hq + h) * splits + split;
      float* o = part_acc + ps * kHeadDim;
#pragma unroll
      for (int nt = 0; nt < kHeadDim / 8; ++nt) {
        float2 v2;
        v2.x = acc[nt][2 * i];
        v2.y = acc[nt][2 * i + 1];
        *reinterpret_cast<float2*>(o + nt * 8 + 2 * tq) = v2;
      }
      if (tq == 0) {
        part_ml[ps * 2] = m[i];
        part_ml[ps * 2 + 1] = l[i];
      }
    }
  }
}

// Merges the splits of each (row, head) in split order: one thread per output element.
__global__ void __launch_bounds__(256)
    attention_combine_kernel(const float* __restrict__ part_acc,  // [n, Hq, splits, d]
                             const float* __restrict__ part_ml,   // [n, Hq, splits, 2]
                             const float* __restrict__ sinks,     // [Hq]
                             int n, int Hq, int splits,
                             float* __restrict__ out) {           // [n, Hq * d]
  const size_t idx = size_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= size_t(n) * Hq * kHeadDim) return;
  const size_t rh = idx / kHeadDim;
  const int dim = int(idx % kHeadDim);
  const int h = int(rh % Hq);
  const float* ml = part_ml + rh * splits * 2;
  const float* a = part_acc + rh * splits * kHeadDim + dim;
  const float sink = sinks[h] * kLog2e;
  float mx = sink;
  for (int s = 0; s < splits; ++s) mx = fmaxf(mx, ml[2 * s]);
  float num = 0.f, den = exp2f(sink - mx);
  for (int s = 0; s < splits; ++s) {
    const float w = exp2f(ml[2 * s] - mx);
    num += w * a[size_t(s) * kHeadDim];
    den += w * ml[2 * s + 1];
  }
  out[idx] = num / den;
}

int decode_splits(int n, int max_len) {
  const int by_len = int(ceil_div(size_t(max_len > 0 ? max_len : 1), kMinKeysPerSplit));
  const int by_rows = kTargetRowSplits / n > 1 ? kTargetRowSplits / n : 1;
  int s = by_len < by_rows ? by_len : by_rows;
  return s < kMaxSplits ? s : kMaxSplits;
}

void check_kv(const KVLayer& kv, int window) {
  GPTOSS_CHECK(kv.k != nullptr && kv.v != nullptr, "attention: KV cache pointers are null");
  GPTOSS_CHECK(reinterpret_cast<uintptr_t>(kv.k) % 16 == 0 &&
                   reinterpret_cast<uintptr_t>(kv.v) % 16 == 0,
               "attention: the KV cache must be 16-byte aligned");
  if (kv.ring > 0) {
    GPTOSS_CHECK(window > 0 && kv.ring >= window,
                 "attention: a ring layer needs a window no larger than its ring (ring "
                     << kv.ring << ", window " << window << ")");
  } else {
    GPTOSS_CHECK(kv.page_table != nullptr && kv.page > 0 && kv.max_pages > 0,
                 "attention: a paged layer needs a page table, page > 0 and max_pages > 0");
  }
}

template <int G>
void launch_attention(const float* q, int ldq, int n, const int32_t* pos, const int32_t* row_seq,
                      const KVLayer& kv, int Hkv, int window, const float* sinks, int max_len,
                      void* workspace, float* out, Stream s, bool per_row) {
  const int Hq = Hkv * G;
  const size_t smem = sizeof(AttentionSmem);
  if (per_row) {
    const dim3 grid{unsigned(n), unsigned(Hkv), 1u};
    GPTOSS_LAUNCH((attention_kernel<G, 1, 1>), grid, 32, smem, s, q, ldq, n, pos, row_seq, kv,
                  Hkv, window, sinks, 1 << 30, static_cast<float*>(nullptr),
                  static_cast<float*>(nullptr), out);
  } else if (n <= kDecodeMaxRows) {
    // a windowed layer's rows see at most `window` keys whatever max_len says (the workspace,
    // sized from max_len alone, is then more than enough)
    const int keys = window > 0 && window < max_len ? window : (max_len > 0 ? max_len : 1);
    const int splits = decode_splits(n, keys);
    const int per_split = int(ceil_div(ceil_div(size_t(keys), splits), kTileKeys)) * kTileKeys;
    float* part_acc = nullptr;
    float* part_ml = nullptr;
    if (splits > 1) {
      GPTOSS_CHECK(workspace != nullptr, "attention: split-KV decode needs the workspace");
      part_acc = static_cast<float*>(workspace);
      part_ml = part_acc + size_t(n) * Hq * splits * kHeadDim;
    }
    const dim3 grid{unsigned(n), unsigned(Hkv), unsigned(splits)};
    GPTOSS_LAUNCH((attention_kernel<G, 1, 1>), grid, 32, smem, s, q, ldq, n, pos, row_seq, kv,
                  Hkv, window, sinks, per_split, part_acc, part_ml, out);
    if (splits > 1) {
      const size_t total = size_t(n) * Hq * kHeadDim;
      GPTOSS_LAUNCH(attention_combine_kernel, ceil_div(total, 256), 256, 0, s,
                    static_cast<const float*>(part_acc), static_cast<const float*>(part_ml),
                    sinks, n, Hq, splits, out);
    }
  } else {
    constexpr int kRows = kPrefillWarps * (16 / G);
    const dim3 grid{ceil_div(size_t(n), kRows), unsigned(Hkv), 1u};
    GPTOSS_LAUNCH((attention_kernel<G, kPrefillWarps, kRows>), grid, kPrefillWarps * 32, smem,
                  s, q, ldq, n, pos, row_seq, kv, Hkv, window, sinks, 1 << 30,
                  static_cast<float*>(nullptr), static_cast<float*>(nullptr), out);
  }
}

}  // namespace

void f32_rope_kv_write(float* qkv, int n, int Hq, int Hkv, int d, const int32_t* pos,
                       const int32_t* row_seq, const float* cos, const float* sin, KVLayer kv,
                       Stream s) {
  GPTOSS_CHECK(d == kHeadDim, "f32_rope_kv_write: head dim " << d << " unsupported (only 64)");
  GPTOSS_CHECK(n >= 0 && Hq > 0 && Hkv > 0, "f32_rope_kv_write: bad sizes n " << n << ", Hq "
                                                << Hq << ", Hkv " << Hkv);
  if (n == 0) return;
  GPTOSS_CHECK(qkv && pos && row_seq && cos && sin && kv.k && kv.v,
               "f32_rope_kv_write: null pointer argument");
  GPTOSS_CHECK(kv.ring > 0 || (kv.page_table != nullptr && kv.page > 0 && kv.max_pages > 0),
               "f32_rope_kv_write: a paged layer needs a page table, page > 0 and max_pages > 0");
  const dim3 grid{ceil_div(size_t(Hq + 2 * Hkv), kRopeHeadsPerBlock), unsigned(n)};
  GPTOSS_LAUNCH(rope_kv_write_kernel, grid, kRopeHeadsPerBlock * kHeadDim / 2, 0, s, qkv, Hq,
                Hkv, pos, row_seq, cos, sin, kv);
}

size_t attention_workspace_bytes(int n, int Hq, int d, int max_len) {
  if (n <= 0 || n > kDecodeMaxRows) return 0;
  const int splits = decode_splits(n, max_len);
  if (splits <= 1) return 0;
  return size_t(n) * Hq * splits * (size_t(d) + 2) * sizeof(float);
}

void f32_bf16kv_attention(const float* q, int ldq, int n, const int32_t* pos,
                          const int32_t* row_seq, KVLayer kv, int Hq, int Hkv, int d, int window,
                          const float* sinks, int max_len, void* workspace, float* out,
                          Stream s, bool per_row) {
  GPTOSS_CHECK(d == kHeadDim, "attention: head dim " << d << " unsupported (only 64)");
  GPTOSS_CHECK(n >= 0 && Hq > 0 && Hkv > 0 && Hq % Hkv == 0,
               "attention: bad sizes n " << n << ", Hq " << Hq << ", Hkv " << Hkv);
  GPTOSS_CHECK(ldq >= Hq * d, "attention: ldq " << ldq << " < Hq * d = " << Hq * d);
  GPTOSS_CHECK(window >= 0, "attention: window " << window << " < 0");
  if (n == 0) return;
  GPTOSS_CHECK(q && pos && row_seq && sinks && out, "attention: null pointer argument");
  GPTOSS_CHECK(ldq % 2 == 0 && reinterpret_cast<uintptr_t>(q) % 8 == 0 &&
                   reinterpret_cast<uintptr_t>(out) % 8 == 0,
               "attention: q, out and ldq must be 8-byte aligned");
  check_kv(kv, window);
  switch (Hq / Hkv) {
    case 8:
      launch_attention<8>(q, ldq, n, pos, row_seq, kv, Hkv, window, sinks, max_len, workspace,
                          out, s, per_row);
      break;
    default:
      GPTOSS_CHECK(false, "attention: group size Hq / Hkv = " << Hq / Hkv
                                                              << " unsupported (only 8)");
  }
}

}  // namespace cuda
}  // namespace gptoss
