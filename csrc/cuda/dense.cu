// Dense kernels of the decode path: the embedding gather, the fused residual add + RMSNorm, and
// the bf16-weight GEMV for up to 8 activation rows.
//
// embed_bf16: one block per token; 16-byte loads of 8 bf16, two float4 stores (scalar when H is
//   not a multiple of 8 or the pointers are not 16-byte aligned).
// f32_add_rmsnorm: one block per row. Each thread owns a fixed strided set of float4s, adds the
//   residual in place and accumulates its sum of squares; a fixed butterfly per warp and one
//   warp over the warp partials finish it, so the order (and the result) never changes.
// f32_bf16w_gemv: a block of 8 warps computes consecutive output rows, two rows per group of
//   kLanes lanes: kLanes = 32 for K > 512 (16 rows a block), 4 for the short rows of the tiny
//   models (128 rows a block), so a lane always has several chunks to load. Lane l of a group
//   walks the 16-byte weight chunks l, l + kLanes, ... of both rows, and each 16-byte load
//   (8 bf16) is multiplied against the same 8 columns of all N activation rows (x through L1,
//   reused for both weight rows from registers): the weights are read exactly once for the N
//   rows. The kLanes partials of every (row, token) go through shared memory once per block and
//   are summed in lane order by one thread each (deterministic; no per-row warp shuffles), bias
//   added, then stored. Any K: the K % 8 tail is a scalar step.
//   Trade-off: 16 rows a block gives 180 blocks for R = 2880 and 12568 for the 201088-row
//   unembedding (spread over all SMs); two rows per group halve the x traffic through L1 at
//   N = 8 while keeping under ~100 registers a thread.
#include <cstdint>

#include "common/numeric.h"
#include "cuda/kernels.h"
#include "cuda/runtime.cuh"

namespace gptoss {
namespace cuda {

namespace {

__device__ __forceinline__ float bf16_lo(uint32_t w) { return bits_to_f32(w << 16); }
__device__ __forceinline__ float bf16_hi(uint32_t w) { return bits_to_f32(w & 0xffff0000u); }

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// ------------------------------------------------------------------------------------ embed
template <bool kVec>
__global__ void embed_bf16_kernel(const uint16_t* __restrict__ emb,    // [V, H]
                                  const int32_t* __restrict__ tokens,  // [n]
                                  int H, float* __restrict__ x) {      // [n, H]
  const size_t t = blockIdx.x;
  const uint16_t* e = emb + size_t(tokens[t]) * size_t(H);
  float* o = x + t * size_t(H);
  if (kVec) {
    const uint4* e8 = reinterpret_cast<const uint4*>(e);
    float4* o4 = reinterpret_cast<float4*>(o);
    for (int c = int(threadIdx.x); c < H / 8; c += int(blockDim.x)) {
      const uint4 q = e8[c];
      o4[2 * c] = make_float4(bf16_lo(q.x), bf16_hi(q.x), bf16_lo(q.y), bf16_hi(q.y));
      o4[2 * c + 1] = make_float4(bf16_lo(q.z), bf16_hi(q.z), bf16_lo(q.w), bf16_hi(q.w));
    }
  } else {
    for (int i = int(threadIdx.x); i < H; i += int(blockDim.x)) o[i] = bf16_to_f32(e[i]);
  }
}

// ------------------------------------------------------------------------------------ RMSNorm
struct RmsSmem {
  float part[32];
  float scale;
};

template <bool kVec>
__global__ void f32_add_rmsnorm_kernel(float* __restrict__ x,        // [n, H], updated
                                       const float* __restrict__ y,  // [n, H] or null
                                       const float* __restrict__ w,  // [H]
                                       int H, float eps, float* __restrict__ out) {  // [n, H]
  GPTOSS_DYNAMIC_SMEM(RmsSmem, sm);
  const int tid = int(threadIdx.x), lane = tid & 31, warp = tid >> 5;
  const size_t off = size_t(blockIdx.x) * size_t(H);
  float* xr = x + off;
  const float* yr = y ? y + off : nullptr;
  float* orow = out + off;
  float ss = 0.0f;
  if (kVec) {
    float4* x4 = reinterpret_cast<float4*>(xr);
    const float4* y4 = reinterpret_cast<const float4*>(yr);
    for (int c = tid; c < H / 4; c += int(blockDim.x)) {
      float4 v = x4[c];
      if (y4) {
        const float4 a = y4[c];
        v.x += a.x;
        v.y += a.y;
        v.z += a.z;
        v.w += a.w;
        x4[c] = v;
      }
      ss += v.x * v.x + v.y * v.y + v.z * v.z + v.w * v.w;
    }
  } else {
    for (int i = tid; i < H; i += int(blockDim.x)) {
      float v = xr[i];
      if (yr) {
        v += yr[i];
        xr[i] = v;
      }
      ss += v * v;
    }
  }
  ss = warp_sum(ss);
  if (lane == 0) sm->part[warp] = ss;
  __syncthreads();
  if (warp == 0) {
    float v = lane < int(blockDim.x >> 5) ? sm->part[lane] : 0.0f;
    v = warp_sum(v);
    if (lane == 0) sm->scale = 1.0f / sqrtf(v / float(H) + eps);
  }
  __syncthreads();
  const float r = sm->scale;
  if (kVec) {
    const float4* x4 = reinterpret_cast<const float4*>(xr);
    const float4* w4 = reinterpret_cast<const float4*>(w);
    float4* o4 = reinterpret_cast<float4*>(orow);
    for (int c = tid; c < H / 4; c += int(blockDim.x)) {
      const float4 v = x4[c], g = w4[c];
      o4[c] = make_float4(v.x * r * g.x, v.y * r * g.y, v.z * r * g.z, v.w * r * g.w);
    }
  } else {
    for (int i = tid; i < H; i += int(blockDim.x)) orow[i] = xr[i] * r * w[i];
  }
}

// ------------------------------------------------------------------------------------ GEMV
constexpr int kGemvWarps = 8;
constexpr int kGemvRowsPerGroup = 2;  // weight rows a lane group walks together (w_a, w_b)

// kLanes lanes (a group) share a pair of rows: 32 for long rows, 4 for short ones (K <= 512, the
// tiny models), so a lane always has several 16-byte chunks to load.
template <int N, int kLanes>
struct GemvSmem {
  static constexpr int kRows = kGemvWarps * (32 / kLanes) * kGemvRowsPerGroup;  // per block
  float part[kRows * N][kLanes + 1];  // [row * N + token][lane in group], padded
};

template <int N, int kLanes, bool kVecX>
__global__ void __launch_bounds__(kGemvWarps * 32, 2)
    f32_bf16w_gemv_kernel(const float* __restrict__ x,     // [N, K]
                          int K,
                          const uint16_t* __restrict__ W,  // [R, ldw], 16-byte aligned rows
                          size_t ldw, int R,
                          const float* __restrict__ bias,  // [R] or null
                          float* __restrict__ out,         // [N, ldo]
                          int ldo) {
  using Smem = GemvSmem<N, kLanes>;
  GPTOSS_DYNAMIC_SMEM(Smem, sm);
  const int tid = int(threadIdx.x);
  const int group = tid / kLanes, gl = tid % kLanes;  // lane group, lane within it
  const int row0 = int(blockIdx.x) * Smem::kRows + group * kGemvRowsPerGroup;
  // rows past R read row R - 1 (a copy, never stored)
  const uint16_t* w_a = W + size_t(row0 < R ? row0 : R - 1) * ldw;
  const uint16_t* w_b = W + size_t(row0 + 1 < R ? row0 + 1 : R - 1) * ldw;
  const uint4* w4_a = reinterpret_cast<const uint4*>(w_a);
  const uint4* w4_b = reinterpret_cast<const uint4*>(w_b);
  float acc[kGemvRowsPerGroup][N];
#pragma unroll
  for (int rr = 0; rr < kGemvRowsPerGroup; ++rr)
#pragma unroll
    for (int t = 0; t < N; ++t) acc[rr][t] = 0.0f;

  const int chunks = K / 8;
#pragma unroll 2
  for (int c = gl; c < chunks; c += kLanes) {
    const uint4 q[kGemvRowsPerGroup] = {w4_a[c], w4_b[c]};
#pragma unroll
    for (int t = 0; t < N; ++t) {
      float xv[8];
      const float* xp = x + size_t(t) * size_t(K) + 8 * c;
      if (kVecX) {
        const float4 a = reinterpret_cast<const float4*>(xp)[0];
        const float4 b = reinterpret_cast<const float4*>(xp)[1];
        xv[0] = a.x, xv[1] = a.y, xv[2] = a.z, xv[3] = a.w;
        xv[4] = b.x, xv[5] = b.y, xv[6] = b.z, xv[7] = b.w;
      } else {
#pragma unroll
        for (int j = 0; j < 8; ++j) xv[j] = xp[j];
      }
#pragma unroll
      for (int rr = 0; rr < kGemvRowsPerGroup; ++rr) {
        float s = acc[rr][t];
        s += bf16_lo(q[rr].x) * xv[0];
        s += bf16_hi(q[rr].x) * xv[1];
        s += bf16_lo(q[rr].y) * xv[2];
        s += bf16_hi(q[rr].y) * xv[3];
        s += bf16_lo(q[rr].z) * xv[4];
        s += bf16_hi(q[rr].z) * xv[5];
        s += bf16_lo(q[rr].w) * xv[6];
        s += bf16_hi(q[rr].w) * xv[7];
        acc[rr][t] = s;
      }
    }
  }
  // K % 8 tail (fewer than 8 elements): one element per lane of the group
#pragma unroll
  for (int j = 0; j < (7 + kLanes - 1) / kLanes; ++j) {
    const int k = chunks * 8 + gl + j * kLanes;
    if (k >= K) break;
#pragma unroll
    for (int rr = 0; rr < kGemvRowsPerGroup; ++rr) {
      const float wv = bf16_to_f32((rr == 0 ? w_a : w_b)[k]);
#pragma unroll
      for (int t = 0; t < N; ++t) acc[rr][t] += wv * x[size_t(t) * size_t(K) + k];
    }
  }

#pragma unroll
  for (int rr = 0; rr < kGemvRowsPerGroup; ++rr)
#pragma unroll
    for (int t = 0; t < N; ++t)
      sm->part[(group * kGemvRowsPerGroup + rr) * N + t][gl] = acc[rr][t];
  __syncthreads();
  for (int o = tid; o < Smem::kRows * N; o += int(blockDim.x)) {
    const int rl = o % Smem::kRows, t = o / Smem::kRows;
    const float* p = sm->part[rl * N + t];
    float s = 0.0f;
#pragma unroll
    for (int l = 0; l < kLanes; ++l) s += p[l];
    const int r = int(blockIdx.x) * Smem::kRows + rl;
    if (r < R) out[size_t(t) * size_t(ldo) + size_t(r)] = s + (bias ? bias[r] : 0.0f);
  }
}

template <int N, int kLanes>
void launch_gemv_lanes(const float* x, int K, const uint16_t* W, size_t ldw, int R,
                       const float* bias, float* out, int ldo, Stream s) {
  using Smem = GemvSmem<N, kLanes>;
  const unsigned grid = ceil_div(size_t(R), Smem::kRows);
  if (K % 4 == 0 && aligned16(x))
    GPTOSS_LAUNCH((f32_bf16w_gemv_kernel<N, kLanes, true>), grid, kGemvWarps * 32, sizeof(Smem),
                  s, x, K, W, ldw, R, bias, out, ldo);
  else
    GPTOSS_LAUNCH((f32_bf16w_gemv_kernel<N, kLanes, false>), grid, kGemvWarps * 32, sizeof(Smem),
                  s, x, K, W, ldw, R, bias, out, ldo);
}

template <int N>
void launch_gemv(const float* x, int K, const uint16_t* W, size_t ldw, int R, const float* bias,
                 float* out, int ldo, Stream s) {
  if (K <= 512)
    launch_gemv_lanes<N, 4>(x, K, W, ldw, R, bias, out, ldo, s);
  else
    launch_gemv_lanes<N, 32>(x, K, W, ldw, R, bias, out, ldo, s);
}

}  // namespace

void embed_bf16(const uint16_t* emb, const int32_t* tokens, int n, int H, float* x, Stream s) {
  GPTOSS_CHECK(n >= 0 && H >= 1, "embed_bf16: need n >= 0 and H >= 1");
  if (n == 0) return;
  const bool vec = H % 8 == 0 && aligned16(emb) && aligned16(x);
  const int threads = H >= 1024 ? 128 : 32;
  if (vec)
    GPTOSS_LAUNCH(embed_bf16_kernel<true>, n, threads, 0, s, emb, tokens, H, x);
  else
    GPTOSS_LAUNCH(embed_bf16_kernel<false>, n, threads, 0, s, emb, tokens, H, x);
}

void f32_add_rmsnorm(float* x, const float* y, const float* w, int n, int H, float eps,
                     float* out, Stream s) {
  GPTOSS_CHECK(n >= 0 && H >= 1, "f32_add_rmsnorm: need n >= 0 and H >= 1");
  if (n == 0) return;
  int threads = 32;
  while (threads < 256 && threads * 8 < H) threads *= 2;
  const bool vec = H % 4 == 0 && aligned16(x) && aligned16(w) && aligned16(out) &&
                   (y == nullptr || aligned16(y));
  if (vec)
    GPTOSS_LAUNCH(f32_add_rmsnorm_kernel<true>, n, threads, sizeof(RmsSmem), s, x, y, w, H, eps,
                  out);
  else
    GPTOSS_LAUNCH(f32_add_rmsnorm_kernel<false>, n, threads, sizeof(RmsSmem), s, x, y, w, H, eps,
                  out);
}

void f32_bf16w_gemv(const float* x, int n, int K, const uint16_t* W, size_t ldw, int R,
                    const float* bias, float* out, int ldo, Stream s) {
  GPTOSS_CHECK(n >= 0 && n <= 8, "f32_bf16w_gemv: n must be in [0, 8], got " << n);
  GPTOSS_CHECK(K >= 1 && R >= 0 && ldw >= size_t(K) && ldo >= R,
               "f32_bf16w_gemv: bad sizes K=" << K << " R=" << R << " ldw=" << ldw
                                              << " ldo=" << ldo);
  GPTOSS_CHECK(ldw % 8 == 0 && aligned16(W), "f32_bf16w_gemv: W rows must be 16-byte aligned");
  if (n == 0 || R == 0) return;
  switch (n) {
    case 1: launch_gemv<1>(x, K, W, ldw, R, bias, out, ldo, s); break;
    case 2: launch_gemv<2>(x, K, W, ldw, R, bias, out, ldo, s); break;
    case 3: launch_gemv<3>(x, K, W, ldw, R, bias, out, ldo, s); break;
    case 4: launch_gemv<4>(x, K, W, ldw, R, bias, out, ldo, s); break;
    case 5: launch_gemv<5>(x, K, W, ldw, R, bias, out, ldo, s); break;
    case 6: launch_gemv<6>(x, K, W, ldw, R, bias, out, ldo, s); break;
    case 7: launch_gemv<7>(x, K, W, ldw, R, bias, out, ldo, s); break;
    default: launch_gemv<8>(x, K, W, ldw, R, bias, out, ldo, s); break;
  }
}

}  // namespace cuda
}  // namespace gptoss
