// The gpt-oss mixture of experts on MXFP4 weights (backends/numpy.py _moe_block, mxfp4_dequantize):
//   y[t] = sum_j w[t, j] * (W2[e] @ swiglu(W1[e] @ x[t] + b1[e]) + b2[e]),  e = experts[t, j],
// the k slots summed in order j = 0..k-1 as acc = fmaf(w_j, v_j, acc) on both paths, so results
// repeat bit for bit and no float atomics are used. Weights are decoded in registers only.
//
// Two paths; mf4w_moe picks by n (kGemvMaxTokens = 8: the decode batches):
//
// GEMV (n <= 8), float32 throughout, two launches:
//   f32_mf4w_moe_gemv_swiglu   grid (n*k assignments, 2I / 16 row groups), 4 warps a block, each
//                              warp 4 W1 rows (two gate/linear pairs) of one assignment's expert.
//                              A lane takes whole 32-value MXFP4 blocks: one 16-byte load of codes,
//                              one scale byte, the 32 x values it multiplies (reused by the 4 rows),
//                              a per-block partial sum scaled once. Warp sums, bias and the clamped
//                              SwiGLU -> act f32 [n*k, I] in the workspace. The assignment index is
//                              blockIdx.x (fastest), so blocks of tokens that share an expert read
//                              the same rows at about the same time and meet in L2.
//   f32_mf4w_moe_gemv_combine  grid (n, H / 8), each warp 2 W2 rows of one token, looping over the
//                              k slots in order: dot + b2, times the routing weight, summed -> y.
//   Codes decode with a subnormal trick: the f32 with bits (sign << 31 | magnitude << 22) is the
//   E2M1 value times 2^-126 (the 0.5 code lands on the subnormal 2^-127), so one shift/mask
//   and one multiply by 2^126 give the exact value (needs denormals, i.e. no -ftz, nvcc's default).
//
// Grouped GEMM (n > 8), tensor cores (mma.sync m16n8k16 bf16 -> f32), five launches:
//   bf16_from_f32_rows         x -> bf16 [n, H] (the rounding the tensor cores need, done once)
//   moe_sort_by_expert         one warp: counts per expert, offsets, a stable permutation of the
//                              n*k assignment ids by expert (ballot-matched ranks, no atomics) and
//                              the tile list (expert, first sorted row) of 64-row token tiles.
//                              Grids after it are sized from the host bound
//                              floor(n*k / 64) + min(E, n*k) on the tile count; blocks past the
//                              real count (read on the device) return at once. No host sync.
//   bf16_mf4w_moe_gemm<SwiGLU> tile = 128 W1 rows x 64 tokens of one expert, K = H in steps of 64
//                              through a 3-stage cp.async pipeline (codes 16 B at a time, token rows
//                              gathered through the permutation); 4 warps, each 32 rows x 64
//                              tokens. Weights are the MMA's A operand (M = output rows, so
//                              experts with few tokens waste only N = 8 granules, and n8 tiles past
//                              the expert's tokens are skipped), tokens the B operand. A lane reads
//                              one 32-bit word of codes per row (8 values) and decodes it straight
//                              into A fragments: the reduction index inside each 32-block is
//                              permuted identically for A and B (lane t's k-pairs are values
//                              8t .. 8t+7), which makes the B fragment one 16-byte shared load.
//                              W1 rows are placed in shared memory gate rows 0..7 / linear rows
//                              8..15 of each 16-row group, so a lane holds gate and linear of the
//                              same feature and the clamped SwiGLU is applied in registers;
//                              act bf16 [n*k, I] in sorted order.
//   bf16_mf4w_moe_gemm<Scatter> the same for W2 (K = I), + b2, rows written f32 to the slot
//                              buffer [n*k, H] at their assignment id.
//   f32_moe_combine            y[t] = sum_j w[t, j] * slot[t*k + j], in order.
//   MXFP4 -> bf16 is exact (backends/numpy.py mxfp4_dequantize), so the only roundings beyond f32 are x and the SwiGLU output
//   to bf16.
//
// Trade-offs. The threshold: the GEMV path reads an expert's rows once per assignment (tokens
// sharing an expert meet in L2) and stays float32, which suits decode batches; past 8 tokens the
// GEMM reads each expert once per 64 of its tokens and the FMAs move to the tensor cores. The
// GEMV decodes each code with ~5 integer/float instructions for one FMA at batch 1, so on a
// fast-HBM part it may be issue-bound rather than bandwidth-bound: the next step there is a
// register lookup table (prmt) to bf16/int8 values. The GEMM's tile grid is sized for the worst
// case, so most of its blocks return at once when n is small. The slot buffer costs n*k*H*4 bytes
// of traffic but keeps the combine deterministic and the GEMM epilogue free of atomics.
// Preconditions (checked by the bindings, not on the device): expert ids in [0, E).
#include <algorithm>

#include "common/numeric.h"
#include "cuda/kernels.h"
#include "cuda/mma.cuh"
#include "cuda/runtime.cuh"

namespace gptoss {
namespace cuda {

namespace {

constexpr int kGemvMaxTokens = 8;  // n <= this: the GEMV path
constexpr int kGemvWarps = 4;
constexpr int kGemv1Rows = 4;  // W1 rows per warp (two gate/linear pairs)
constexpr int kGemv2Rows = 2;  // W2 rows per warp

constexpr int kMaxExperts = 256;  // the sort keeps one counter per expert in shared memory

constexpr int kBM = 128;          // weight rows per GEMM block (MMA M): 4 warps x 32
constexpr int kBT = 64;           // sorted token rows per GEMM block (MMA N)
constexpr int kBK = 64;           // reduction per pipeline stage: two MXFP4 blocks
constexpr int kStages = 3;
constexpr int kGemmThreads = 128;
constexpr int kWStride = 48;      // bytes per weight row in shared memory (32 + 16: conflict-free)
constexpr int kAStride = 96;      // bf16 per token row in shared memory (64 + 32: conflict-free)

// ------------------------------------------------------------------------------ MXFP4 decode
// E2M1 code (low 4 bits of c) -> its value, exact: see the file-top comment.
#if defined(__USE_FAST_MATH__)
#error "moe.cu decodes MXFP4 through float32 subnormals: build without --use_fast_math / -ftz"
#endif
__device__ __forceinline__ float fp4_value(uint32_t c) {
  return bits_to_f32(((c & 8u) << 28) | ((c & 7u) << 22)) * 0x1p126f;
}

// Byte b of word: two codes (low nibble first) -> bf16x2 of code * scale. The product is exact
// in bf16 (two significant bits), so truncating the f32 bits is the rounding.
__device__ __forceinline__ uint32_t dq_bf16x2(uint32_t word, int b, float scale) {
  const uint32_t c = word >> (8 * b);
  const uint32_t lo = f32_to_bits(fp4_value(c) * scale);
  const uint32_t hi = f32_to_bits(fp4_value(c >> 4) * scale);
  return (lo >> 16) | (hi & 0xffff0000u);
}

__device__ __forceinline__ uint32_t word_of(const uint4& q, int i) {
  return i == 0 ? q.x : i == 1 ? q.y : i == 2 ? q.z : q.w;
}

// ------------------------------------------------------------------------------ GEMV path
// acc[r] (this lane's share) += W[r, :] . v for R consecutive rows; wq: the R rows' codes
// [R, nb] 16 B each (row stride nb), wsc [R, nb] scales, v [nb * 32] f32 (16-byte aligned).
template <int R>
__device__ __forceinline__ void mf4_rows_dot(const uint4* __restrict__ wq,
                                             const uint8_t* __restrict__ wsc, int nb,
                                             const float* __restrict__ v, int lane,
                                             float (&acc)[R]) {
  const float4* v4 = reinterpret_cast<const float4*>(v);
  for (int b = lane; b < nb; b += 32) {
    uint4 q[R];
    float s[R], part[R];
#pragma unroll
    for (int r = 0; r < R; ++r) {
      q[r] = wq[size_t(r) * nb + b];
      s[r] = e8m0_to_f32(wsc[size_t(r) * nb + b]);
      part[r] = 0.f;
    }
#pragma unroll
    for (int w = 0; w < 4; ++w) {
      const float4 x0 = v4[b * 8 + 2 * w], x1 = v4[b * 8 + 2 * w + 1];
      const float xs[8] = {x0.x, x0.y, x0.z, x0.w, x1.x, x1.y, x1.z, x1.w};
#pragma unroll
      for (int r = 0; r < R; ++r) {
        const uint32_t word = word_of(q[r], w);
#pragma unroll
        for (int i = 0; i < 8; ++i) part[r] = fmaf(fp4_value(word >> (4 * i)), xs[i], part[r]);
      }
    }
#pragma unroll
    for (int r = 0; r < R; ++r) acc[r] = fmaf(part[r], s[r], acc[r]);
  }
}

template <int R>
__global__ void __launch_bounds__(kGemvWarps * 32)
    f32_mf4w_moe_gemv_swiglu(const float* __restrict__ x,            // [n, H]
                             int H, int I, int k,
                             const int32_t* __restrict__ experts,    // [n * k]
                             const uint8_t* __restrict__ w1_blocks,  // [E, 2I, H/32, 16]
                             const uint8_t* __restrict__ w1_scales,  // [E, 2I, H/32]
                             const float* __restrict__ b1,           // [E, 2I]
                             float alpha, float limit,
                             float* __restrict__ act) {              // [n * k, I]
  static_assert(R % 2 == 0, "rows come in gate/linear pairs");
  const int a = int(blockIdx.x), tok = a / k, lane = int(threadIdx.x) % 32;
  const int row0 = (int(blockIdx.y) * kGemvWarps + int(threadIdx.x) / 32) * R;
  if (row0 >= 2 * I) return;  // whole warp
  const int e = experts[a], nb = H / 32;
  const size_t first = size_t(e) * 2 * I + row0;
  float acc[R] = {};
  mf4_rows_dot<R>(reinterpret_cast<const uint4*>(w1_blocks) + first * nb, w1_scales + first * nb,
                  nb, x + size_t(tok) * H, lane, acc);
#pragma unroll
  for (int r = 0; r < R; ++r) acc[r] = warp_sum(acc[r]);
#pragma unroll
  for (int p = 0; p < R / 2; ++p) {
    if (lane == p) {
      const float gate = acc[2 * p] + b1[first + 2 * p];
      const float lin = acc[2 * p + 1] + b1[first + 2 * p + 1];
      act[size_t(a) * I + row0 / 2 + p] = swiglu_clamped(gate, lin, alpha, limit);
    }
  }
}

template <int R>
__global__ void __launch_bounds__(kGemvWarps * 32)
    f32_mf4w_moe_gemv_combine(const float* __restrict__ act,          // [n * k, I]
                              int H, int I, int k,
                              const int32_t* __restrict__ experts,    // [n * k]
                              const float* __restrict__ weights,      // [n * k]
                              const uint8_t* __restrict__ w2_blocks,  // [E, H, I/32, 16]
                              const uint8_t* __restrict__ w2_scales,  // [E, H, I/32]
                              const float* __restrict__ b2,           // [E, H]
                              float* __restrict__ y) {                // [n, H]
  const int tok = int(blockIdx.x), lane = int(threadIdx.x) % 32;
  const int row0 = (int(blockIdx.y) * kGemvWarps + int(threadIdx.x) / 32) * R;
  if (row0 >= H) return;  // whole warp
  const int nb = I / 32;
  float out[R] = {};
  for (int j = 0; j < k; ++j) {
    const int a = tok * k + j, e = experts[a];
    const float wt = weights[a];
    const size_t first = size_t(e) * H + row0;
    float acc[R] = {};
    mf4_rows_dot<R>(reinterpret_cast<const uint4*>(w2_blocks) + first * nb,
                    w2_scales + first * nb, nb, act + size_t(a) * I, lane, acc);
#pragma unroll
    for (int r = 0; r < R; ++r) out[r] = fmaf(wt, warp_sum(acc[r]) + b2[first + r], out[r]);
  }
#pragma unroll
  for (int r = 0; r < R; ++r)
    if (lane == r) y[size_t(tok) * H + row0 + r] = out[r];
}

// ------------------------------------------------------------------------------ grouping
struct SortSmem {
  int count[kMaxExperts];
  int cursor[kMaxExperts];
};

// The lanes whose (valid) key equals this lane's: ballots on the key's bits (E <= 256).
__device__ __forceinline__ unsigned match_key(int key, bool valid, int nbits) {
  unsigned m = __ballot_sync(0xffffffffu, valid);
  for (int b = 0; b < nbits; ++b) {
    const bool bit = (key >> b) & 1;
    const unsigned bal = __ballot_sync(0xffffffffu, valid && bit);
    m &= bit ? bal : ~bal;
  }
  return m;
}

// One warp. Exclusive scans over the E experts: lane l owns experts [l * per, (l + 1) * per).
__global__ void __launch_bounds__(32)
    moe_sort_by_expert(const int32_t* __restrict__ experts,  // [A] expert of each assignment
                       int A, int E, int nbits,
                       int32_t* __restrict__ offsets,        // [E + 1] first sorted row of e
                       int32_t* __restrict__ perm,           // [A] assignment id of sorted row
                       int2* __restrict__ tiles,             // [<= A / kBT + min(E, A)]
                       int32_t* __restrict__ ntiles) {       // [1]
  GPTOSS_DYNAMIC_SMEM(SortSmem, sm);
  const int lane = int(threadIdx.x);
  for (int e = lane; e < E; e += 32) sm->count[e] = 0;
  __syncwarp();
  for (int base = 0; base < A; base += 32) {
    const int a = base + lane;
    const int e = a < A ? experts[a] : -1;
    const bool valid = e >= 0 && e < E;
    const unsigned peers = match_key(e, valid, nbits);
    if (valid && 31 - __clz(peers) == lane) sm->count[e] += __popc(peers);
    __syncwarp();
  }
  // offsets (rows) and tile offsets, scanned together
  const int per = (E + 31) / 32, e0 = min(E, lane * per), e1 = min(E, e0 + per);
  int rows = 0, tl = 0;
  for (int e = e0; e < e1; ++e) {
    rows += sm->count[e];
    tl += (sm->count[e] + kBT - 1) / kBT;
  }
  int rows_incl = rows, tl_incl = tl;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const int r = __shfl_up_sync(0xffffffffu, rows_incl, o);
    const int q = __shfl_up_sync(0xffffffffu, tl_incl, o);
    if (lane >= o) {
      rows_incl += r;
      tl_incl += q;
    }
  }
  int row = rows_incl - rows, tile = tl_incl - tl;
  for (int e = e0; e < e1; ++e) {
    const int c = sm->count[e];
    offsets[e] = row;
    sm->cursor[e] = row;
    for (int i = 0; i < c; i += kBT) tiles[tile++] = make_int2(e, row + i);
    row += c;
  }
  if (lane == 31) {
    offsets[E] = rows_incl;
    *ntiles = tl_incl;
  }
  __syncwarp();
  // stable placement: rank among equal keys of this chunk, chunks in order
  for (int base = 0; base < A; base += 32) {
    const int a = base + lane;
    const int e = a < A ? experts[a] : -1;
    const bool valid = e >= 0 && e < E;
    const unsigned peers = match_key(e, valid, nbits);
    int pos = 0;
    if (valid) pos = sm->cursor[e] + __popc(peers & ((1u << lane) - 1u));
    __syncwarp();
    if (valid) {
      perm[pos] = a;
      if (31 - __clz(peers) == lane) sm->cursor[e] += __popc(peers);
    }
    __syncwarp();
  }
}

__global__ void __launch_bounds__(256)
    bf16_from_f32_rows(const float4* __restrict__ x,  // [count] (4 floats each)
                       size_t count,
                       uint2* __restrict__ out) {      // [count] (4 bf16 each)
  const size_t i = size_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= count) return;
  const float4 q = x[i];
  out[i] = make_uint2(pack_bf16x2(q.x, q.y), pack_bf16x2(q.z, q.w));
}

// ------------------------------------------------------------------------------ grouped GEMM
enum class Epilogue { SwiGLU, Scatter };

struct GemmStage {
  uint32_t w[kBM * kWStride / 4];  // codes of kBM rows x kBK values (2 blocks of 16 B), padded
  uint4 act[kBT * kAStride / 8];   // bf16 of kBT tokens x kBK values, padded
  uint8_t sc[kBM * 2];          // the two scale bytes of each row
};
struct GemmSmem {
  GemmStage st[kStages];
};

// Shared-memory row of local weight row lr. W1: within each group of 16, gate rows (even) go
// to 0..7 and linear rows (odd) to 8..15, so MMA rows g and g + 8 are one feature's pair.
template <Epilogue EPI>
__device__ __forceinline__ int w_slot(int lr) {
  if constexpr (EPI == Epilogue::SwiGLU) return (lr & ~15) | ((lr & 1) << 3) | ((lr & 15) >> 1);
  return lr;
}

template <Epilogue EPI>
__global__ void __launch_bounds__(kGemmThreads)
    bf16_mf4w_moe_gemm(const uint16_t* __restrict__ act,      // SwiGLU: x bf16 [n, K] read
                                                              // through perm; Scatter: bf16
                                                              // [A, K] in sorted order
                       const int32_t* __restrict__ perm,      // [A] assignment of sorted row
                       int k,                                 // slots per token
                       const int32_t* __restrict__ offsets,   // [E + 1]
                       const int2* __restrict__ tiles,        // [ntiles] (expert, first row)
                       const int32_t* __restrict__ ntiles,    // [1]
                       const uint8_t* __restrict__ wblocks,   // [E, R, K/32, 16]
                       const uint8_t* __restrict__ wscales,   // [E, R, K/32]
                       const float* __restrict__ bias,        // [E, R]
                       int R, int K, float alpha, float limit,
                       uint16_t* __restrict__ out_act,        // SwiGLU: bf16 [A, R/2] sorted
                       float* __restrict__ out_slot) {        // Scatter: f32 [A, R] by assignment
  if (int(blockIdx.x) >= *ntiles) return;
  const int2 tile = tiles[blockIdx.x];
  const int e = tile.x, row0 = tile.y;
  const int ntok = min(offsets[e + 1], row0 + kBT) - row0;
  const int r0 = int(blockIdx.y) * kBM;
  GPTOSS_DYNAMIC_SMEM(GemmSmem, sm);
  const int tid = int(threadIdx.x), warp = tid / 32, lane = tid % 32, g = lane / 4, t = lane % 4;
  const int nbk = K / 32;
  const uint8_t* wb = wblocks + size_t(e) * R * nbk * 16;
  const uint8_t* ws = wscales + size_t(e) * R * nbk;

  // This thread's activation rows: 4 chunks of 16 B per stage (token tid / 8 + 16 i, chunk tid % 8).
  const uint16_t* asrc[4];
  bool aok[4];
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int tok = tid / 8 + 16 * i;
    aok[i] = tok < ntok;
    int src = 0;
    if (aok[i]) src = EPI == Epilogue::SwiGLU ? perm[row0 + tok] / k : row0 + tok;
    asrc[i] = act + size_t(src) * K + (tid % 8) * 8;
  }

  auto load_stage = [&](int buf, int kt) {
    GemmStage& st = sm->st[buf];
#pragma unroll
    for (int i = 0; i < 2; ++i) {  // codes: rows tid / 2 + 64 i, block tid % 2
      const int lr = tid / 2 + 64 * i, blk = kt * 2 + tid % 2;
      const bool ok = r0 + lr < R && blk < nbk;
      cp_async_16(&st.w[w_slot<EPI>(lr) * (kWStride / 4) + (tid % 2) * 4],
                  ok ? wb + (size_t(r0 + lr) * nbk + blk) * 16 : wblocks, ok ? 16 : 0);
    }
    const int kc = kt * kBK + (tid % 8) * 8;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const bool ok = aok[i] && kc < K;
      cp_async_16(&st.act[(tid / 8 + 16 * i) * (kAStride / 8) + tid % 8],
                  ok ? asrc[i] + kt * kBK : act, ok ? 16 : 0);
    }
    {  // scales: row tid (plain loads; zero where out of range)
      const int lr = tid;
      const int slot = w_slot<EPI>(lr);
#pragma unroll
      for (int b = 0; b < 2; ++b) {
        const int blk = kt * 2 + b;
        st.sc[slot * 2 + b] =
            r0 + lr < R && blk < nbk ? ws[size_t(r0 + lr) * nbk + blk] : uint8_t(0);
      }
    }
  };

  float acc[2][8][4];
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int j = 0; j < 8; ++j)
#pragma unroll
      for (int c = 0; c < 4; ++c) acc[i][j][c] = 0.f;

  const int nkt = (K + kBK - 1) / kBK;
#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < nkt) load_stage(s, s);
    cp_async_commit();
  }
  for (int kt = 0; kt < nkt; ++kt) {
    cp_async_wait<kStages - 2>();
    __syncthreads();  // stage kt landed for everyone; stage kt - 1 is free again
    const int nxt = kt + kStages - 1;
    if (nxt < nkt) load_stage(nxt % kStages, nxt);
    cp_async_commit();

    const GemmStage& st = sm->st[kt % kStages];
#pragma unroll
    for (int kb = 0; kb < 2; ++kb) {
      if (kt * 2 + kb >= nbk) break;  // K tail (uniform)
      uint32_t a[2][2][4];            // [m tile][k16 step][register]
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        const int rb = warp * 32 + i * 16 + g;
        const uint32_t wlo = st.w[rb * (kWStride / 4) + kb * 4 + t];
        const uint32_t whi = st.w[(rb + 8) * (kWStride / 4) + kb * 4 + t];
        const float slo = e8m0_to_f32(st.sc[rb * 2 + kb]);
        const float shi = e8m0_to_f32(st.sc[(rb + 8) * 2 + kb]);
        // byte b of the word holds values 8t + 2b, +1: bytes 0, 1 feed step 0, bytes 2, 3 step 1
        a[i][0][0] = dq_bf16x2(wlo, 0, slo);
        a[i][0][1] = dq_bf16x2(whi, 0, shi);
        a[i][0][2] = dq_bf16x2(wlo, 1, slo);
        a[i][0][3] = dq_bf16x2(whi, 1, shi);
        a[i][1][0] = dq_bf16x2(wlo, 2, slo);
        a[i][1][1] = dq_bf16x2(whi, 2, shi);
        a[i][1][2] = dq_bf16x2(wlo, 3, slo);
        a[i][1][3] = dq_bf16x2(whi, 3, shi);
      }
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        if (j * 8 < ntok) {  // uniform: n8 tiles past the expert's tokens are skipped
          const uint4 q = st.act[(j * 8 + g) * (kAStride / 8) + kb * 4 + t];
          const uint32_t b0[2] = {q.x, q.y}, b1[2] = {q.z, q.w};
#pragma unroll
          for (int i = 0; i < 2; ++i) {
            mma_bf16_16816(acc[i][j], a[i][0], b0);
            mma_bf16_16816(acc[i][j], a[i][1], b1);
          }
        }
      }
    }
  }
  cp_async_wait<0>();

  // epilogue: d[c] is (MMA row g + 8 (c >> 1), token 2t + (c & 1)) of tile (i, j)
#pragma unroll
  for (int i = 0; i < 2; ++i) {
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      if (j * 8 >= ntok) continue;
      if constexpr (EPI == Epilogue::SwiGLU) {
        const int I = R / 2;
        const int f = r0 / 2 + warp * 16 + i * 8 + g;  // MMA rows g, g + 8: gate, linear of f
        if (f >= I) continue;
        const float bg = bias[size_t(e) * R + 2 * f], bl = bias[size_t(e) * R + 2 * f + 1];
#pragma unroll
        for (int c = 0; c < 2; ++c) {
          const int col = j * 8 + 2 * t + c;
          if (col < ntok)
            out_act[size_t(row0 + col) * I + f] =
                f32_to_bf16(swiglu_clamped(acc[i][j][c] + bg, acc[i][j][2 + c] + bl, alpha, limit));
        }
      } else {
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const int o = r0 + warp * 32 + i * 16 + g + 8 * h;
          if (o >= R) continue;
          const float b = bias[size_t(e) * R + o];
#pragma unroll
          for (int c = 0; c < 2; ++c) {
            const int col = j * 8 + 2 * t + c;
            if (col < ntok) out_slot[size_t(perm[row0 + col]) * R + o] = acc[i][j][2 * h + c] + b;
          }
        }
      }
    }
  }
}

__global__ void __launch_bounds__(256)
    f32_moe_combine(const float4* __restrict__ slot,     // [n * k, H / 4]
                    const float* __restrict__ weights,   // [n * k]
                    int n, int H4, int k,
                    float4* __restrict__ y) {            // [n, H / 4]
  const size_t i = size_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= size_t(n) * H4) return;
  const size_t tok = i / H4, h = i % H4;
  float4 acc = make_float4(0.f, 0.f, 0.f, 0.f);
  for (int j = 0; j < k; ++j) {
    const float w = weights[tok * k + j];
    const float4 v = slot[(tok * k + j) * H4 + h];
    acc.x = fmaf(w, v.x, acc.x);
    acc.y = fmaf(w, v.y, acc.y);
    acc.z = fmaf(w, v.z, acc.z);
    acc.w = fmaf(w, v.w, acc.w);
  }
  y[i] = acc;
}

// ------------------------------------------------------------------------------ workspace
struct Workspace {
  float* act_f32 = nullptr;   // GEMV: [A, I]
  uint16_t* xb = nullptr;     // GEMM: [n, H] bf16
  uint16_t* act = nullptr;    // GEMM: [A, I] bf16, sorted rows
  float* slot = nullptr;      // GEMM: [A, H] f32, assignment rows
  int32_t* offsets = nullptr; // GEMM: [E + 1]
  int32_t* perm = nullptr;    // GEMM: [A]
  int2* tiles = nullptr;      // GEMM: [max_tiles]
  int32_t* ntiles = nullptr;  // GEMM: [1]
  size_t bytes = 0;
};

int max_tiles(int A, int E) { return A / kBT + std::min(E, A); }

Workspace carve(void* base, int n, int H, int I, int E, int k) {
  Workspace w;
  char* p = static_cast<char*>(base);
  size_t off = 0;
  auto take = [&](size_t bytes) {
    char* q = p ? p + off : nullptr;
    off += (bytes + 255) / 256 * 256;
    return q;
  };
  const size_t A = size_t(n) * k;
  if (n <= kGemvMaxTokens) {
    w.act_f32 = reinterpret_cast<float*>(take(A * I * 4));
  } else {
    w.xb = reinterpret_cast<uint16_t*>(take(size_t(n) * H * 2));
    w.act = reinterpret_cast<uint16_t*>(take(A * I * 2));
    w.slot = reinterpret_cast<float*>(take(A * H * 4));
    w.offsets = reinterpret_cast<int32_t*>(take(size_t(E + 1) * 4));
    w.perm = reinterpret_cast<int32_t*>(take(A * 4));
    w.tiles = reinterpret_cast<int2*>(take(size_t(max_tiles(int(A), E)) * 8));
    w.ntiles = reinterpret_cast<int32_t*>(take(4));
  }
  w.bytes = off;
  return w;
}

template <Epilogue EPI>
void allow_gemm_smem() {
  // > 48 KB of dynamic shared memory must be asked for, once per kernel
  static const bool done = [] {
    GPTOSS_CUDA_CHECK(cudaFuncSetAttribute(bf16_mf4w_moe_gemm<EPI>,
                                           cudaFuncAttributeMaxDynamicSharedMemorySize,
                                           int(sizeof(GemmSmem))));
    return true;
  }();
  (void)done;
}

}  // namespace

size_t moe_workspace_bytes(int n, int H, int I, int E, int k) {
  return carve(nullptr, n, H, I, E, k).bytes;
}

void mf4w_moe(const float* x, int n, int H, int I, int E, int k, const int32_t* experts,
              const float* weights, const uint8_t* w1_blocks, const uint8_t* w1_scales,
              const float* b1, const uint8_t* w2_blocks, const uint8_t* w2_scales, const float* b2,
              float alpha, float limit, void* workspace, float* y, Stream s) {
  GPTOSS_CHECK(n >= 0 && E >= 1 && k >= 1 && k <= E,
               "mf4w_moe: n = " << n << ", E = " << E << ", k = " << k);
  GPTOSS_CHECK(H > 0 && I > 0 && H % 32 == 0 && I % 32 == 0,
               "mf4w_moe: H = " << H << " and I = " << I << " must be positive multiples of 32");
  GPTOSS_CHECK(E <= kMaxExperts, "mf4w_moe: E = " << E << " above " << kMaxExperts);
  auto aligned = [](const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; };
  GPTOSS_CHECK(aligned(x) && aligned(y) && aligned(w1_blocks) && aligned(w2_blocks) &&
                   aligned(workspace),
               "mf4w_moe: x, y, the weight blocks and the workspace must be 16-byte aligned");
  if (n == 0) return;
  const Workspace w = carve(workspace, n, H, I, E, k);
  const int A = n * k;
  if (n <= kGemvMaxTokens) {
    const dim3 g1(unsigned(A), ceil_div(size_t(2) * I, kGemvWarps * kGemv1Rows));
    GPTOSS_LAUNCH(f32_mf4w_moe_gemv_swiglu<kGemv1Rows>, g1, kGemvWarps * 32, 0, s, x, H, I, k,
                  experts, w1_blocks, w1_scales, b1, alpha, limit, w.act_f32);
    const dim3 g2(unsigned(n), ceil_div(size_t(H), kGemvWarps * kGemv2Rows));
    GPTOSS_LAUNCH(f32_mf4w_moe_gemv_combine<kGemv2Rows>, g2, kGemvWarps * 32, 0, s, w.act_f32, H,
                  I, k, experts, weights, w2_blocks, w2_scales, b2, y);
    return;
  }
  const size_t x4 = size_t(n) * H / 4;
  GPTOSS_LAUNCH(bf16_from_f32_rows, ceil_div(x4, 256), 256, 0, s,
                reinterpret_cast<const float4*>(x), x4, reinterpret_cast<uint2*>(w.xb));
  int nbits = 0;
  while ((1 << nbits) < E) ++nbits;
  GPTOSS_LAUNCH(moe_sort_by_expert, 1, 32, sizeof(SortSmem), s, experts, A, E, nbits, w.offsets,
                w.perm, w.tiles, w.ntiles);
  allow_gemm_smem<Epilogue::SwiGLU>();
  allow_gemm_smem<Epilogue::Scatter>();
  const unsigned tiles = unsigned(max_tiles(A, E));
  GPTOSS_LAUNCH(bf16_mf4w_moe_gemm<Epilogue::SwiGLU>, dim3(tiles, ceil_div(size_t(2) * I, kBM)),
                kGemmThreads, sizeof(GemmSmem), s, w.xb, w.perm, k, w.offsets, w.tiles, w.ntiles,
                w1_blocks, w1_scales, b1, 2 * I, H, alpha, limit, w.act, nullptr);
  GPTOSS_LAUNCH(bf16_mf4w_moe_gemm<Epilogue::Scatter>, dim3(tiles, ceil_div(size_t(H), kBM)),
                kGemmThreads, sizeof(GemmSmem), s, w.act, w.perm, k, w.offsets, w.tiles,
                w.ntiles, w2_blocks, w2_scales, b2, H, I, alpha, limit, nullptr, w.slot);
  const size_t y4 = size_t(n) * H / 4;
  GPTOSS_LAUNCH(f32_moe_combine, ceil_div(y4, 256), 256, 0, s,
                reinterpret_cast<const float4*>(w.slot), weights, n, H / 4, k,
                reinterpret_cast<float4*>(y));
}

}  // namespace cuda
}  // namespace gptoss
