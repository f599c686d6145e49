// Prefill GEMM on tensor cores: out [n, R] = bf16(x) [n, K] . W^T (W bf16 [R, K]) + bias, f32
// accumulation, through mma.sync m16n8k16 (bf16 in, f32 out) and ldmatrix (cuda/mma.cuh).
//
// Tile: a block of 8 warps (2 x 4) computes 64 tokens x 128 weight rows; each warp a 32 x 32
// sub-tile = 2 (m16) x 4 (n8) mma tiles, 32 f32 accumulators a thread. Short prompts use a
// 32 x 128 tile (2 x 4 warps of 16 x 32) for n <= 32 and a 16 x 128 tile (1 x 4 warps) for
// n <= 16. K advances 32 at a time (two k16 steps) through two shared-memory stages:
//   - W tile [128 rows][32 k] bf16 by cp.async (16 bytes a copy, zero-filled past row R), issued
//     one stage ahead so the copy of stage k+1 overlaps the mma of stage k;
//   - x tile [BM tokens][32 k]: float4 loads of stage k+1 issued before the mma of stage k, then
//     rounded to bf16 (nearest even, as f32_to_bf16) and stored after it (zeros past token n).
// Rows are padded to 40 bf16 (80 bytes) so the 8 row addresses of every ldmatrix hit 8 distinct
// 16-byte bank groups. mma roles: A = x (row-major, tokens x k), B = W (each n column of B is one
// W row, k contiguous), so both operands come straight from row-major tiles by non-transposed
// ldmatrix. One __syncthreads per k step. Epilogue: bias added, stores guarded by n and R.
// Trade-off: 64 x 128 favours the long prefill GEMMs (QKV 5120, experts, unembedding 201088
// rows); at most 30 KB of shared memory and ~100 registers a thread keep two blocks per SM.
// Two stages, not three or four, keep the code simple at some cost in latency hiding.
// K must be a multiple of 32 (all model shapes are).
#include <cstdint>

#include "common/numeric.h"
#include "cuda/kernels.h"
#include "cuda/mma.cuh"
#include "cuda/runtime.cuh"

namespace gptoss {
namespace cuda {

namespace {

constexpr int kBN = 128;   // weight rows per block (4 warps of 32 across)
constexpr int kBK = 32;    // k per stage
constexpr int kPad = 8;    // bf16 of padding per smem row

// Tiles hold bf16 pairs (k, k + 1) as 32-bit words: row r of a stage is (kBK + kPad) / 2 words.
constexpr int kRowWords = (kBK + kPad) / 2;
template <int kBM>
struct GemmSmem {
  uint32_t w[2][kBN][kRowWords];  // [stage][weight row][k / 2]
  uint32_t x[2][kBM][kRowWords];  // [stage][token][k / 2]
};

// kWarpsM x 4 warps; each warp kMI m16 tiles (tokens) x 4 n8 tiles (weight rows).
// kBM = kWarpsM * kMI * 16 tokens a block: 64 (2 x 2), 32 (2 x 1) or 16 (1 x 1, 128 threads),
// so a short prompt does not pay for a 64-token tile.
template <int kWarpsM, int kMI>
__global__ void __launch_bounds__(kWarpsM * 128)
    f32_bf16w_gemm_kernel(const float* __restrict__ x,     // [n, K], 16-byte aligned
                          int n, int K,
                          const uint16_t* __restrict__ W,  // [R, ldw], 16-byte aligned rows
                          size_t ldw, int R,
                          const float* __restrict__ bias,  // [R] or null
                          float* __restrict__ out,         // [n, ldo]
                          int ldo) {
  constexpr int kThreads = kWarpsM * 128;
  constexpr int kBM = kWarpsM * kMI * 16;
  constexpr int kWI = kBN * 4 / kThreads;  // 16-byte W copies a thread per stage
  constexpr int kXI = kBM * 8 / kThreads;  // float4 x loads a thread per stage
  static_assert(kWI >= 1 && kXI >= 1, "tile too small for the block");
  using Smem = GemmSmem<kBM>;
  GPTOSS_DYNAMIC_SMEM(Smem, sm);
  const int tid = int(threadIdx.x), lane = tid & 31, warp = tid >> 5;
  const int wm = warp >> 2, wn = warp & 3;  // warp's (kMI * 16) x 32 sub-tile
  const int n0 = int(blockIdx.x) * kBN, m0 = int(blockIdx.y) * kBM;
  const int KT = K / kBK;

  // Stage loaders. W: 128 rows x 4 chunks of 16 B = 512 cp.async.
  auto load_w = [&](int kt, int buf) {
#pragma unroll
    for (int i = 0; i < kWI; ++i) {
      const int q = tid + kThreads * i, row = q >> 2, cc = q & 3;
      const bool ok = n0 + row < R;
      const uint16_t* src = ok ? W + size_t(n0 + row) * ldw + size_t(kt) * kBK + 8 * cc : W;
      cp_async_16(&sm->w[buf][row][4 * cc], src, ok ? 16 : 0);
    }
    cp_async_commit();
  };
  // x: kBM rows x 8 float4, held in registers until stored.
  float4 xr[kXI];
  auto fetch_x = [&](int kt) {
#pragma unroll
    for (int i = 0; i < kXI; ++i) {
      const int q = tid + kThreads * i, row = q >> 3, c4 = q & 7;
      if (m0 + row < n)
        xr[i] = *reinterpret_cast<const float4*>(x + size_t(m0 + row) * size_t(K) +
                                                 size_t(kt) * kBK + 4 * c4);
      else
        xr[i] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    }
  };
  auto store_x = [&](int buf) {
#pragma unroll
    for (int i = 0; i < kXI; ++i) {
      const int q = tid + kThreads * i, row = q >> 3, c4 = q & 7;
      sm->x[buf][row][2 * c4] = pack_bf16x2(xr[i].x, xr[i].y);
      sm->x[buf][row][2 * c4 + 1] = pack_bf16x2(xr[i].z, xr[i].w);
    }
  };

  float acc[kMI][4][4];
#pragma unroll
  for (int mi = 0; mi < kMI; ++mi)
#pragma unroll
    for (int nj = 0; nj < 4; ++nj)
#pragma unroll
      for (int i = 0; i < 4; ++i) acc[mi][nj][i] = 0.0f;

  load_w(0, 0);
  fetch_x(0);
  store_x(0);

  for (int kt = 0; kt < KT; ++kt) {
    const int buf = kt & 1;
    cp_async_wait<0>();
    __syncthreads();  // stage kt visible to all; every warp done with stage kt - 1
    const bool more = kt + 1 < KT;
    if (more) {
      load_w(kt + 1, buf ^ 1);
      fetch_x(kt + 1);
    }
#pragma unroll
    for (int ks = 0; ks < kBK / 16; ++ks) {
      uint32_t a[kMI][4], b[4][2];
#pragma unroll
      for (int mi = 0; mi < kMI; ++mi) {
        const int row = wm * kMI * 16 + mi * 16 + (lane & 7) + 8 * ((lane >> 3) & 1);
        ldmatrix_x4(a[mi], &sm->x[buf][row][ks * 8 + 4 * (lane >> 4)]);
      }
#pragma unroll
      for (int p = 0; p < 2; ++p) {
        const int m = lane >> 3;
        const int row = wn * 32 + (2 * p + (m >> 1)) * 8 + (lane & 7);
        uint32_t q[4];
        ldmatrix_x4(q, &sm->w[buf][row][ks * 8 + 4 * (m & 1)]);
        b[2 * p][0] = q[0];
        b[2 * p][1] = q[1];
        b[2 * p + 1][0] = q[2];
        b[2 * p + 1][1] = q[3];
      }
#pragma unroll
      for (int mi = 0; mi < kMI; ++mi)
#pragma unroll
        for (int nj = 0; nj < 4; ++nj) mma_bf16_16816(acc[mi][nj], a[mi], b[nj]);
    }
    if (more) store_x(buf ^ 1);
  }

  // Epilogue: d[i] of tile (mi, nj) is token g + 8 (i >> 1), weight row 2t + (i & 1).
  const int g = lane >> 2, t = lane & 3;
#pragma unroll
  for (int mi = 0; mi < kMI; ++mi)
#pragma unroll
    for (int nj = 0; nj < 4; ++nj)
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int tok = m0 + wm * kMI * 16 + mi * 16 + g + 8 * (i >> 1);
        const int r = n0 + wn * 32 + nj * 8 + 2 * t + (i & 1);
        if (tok < n && r < R)
          out[size_t(tok) * size_t(ldo) + size_t(r)] = acc[mi][nj][i] + (bias ? bias[r] : 0.0f);
      }
}

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

template <int kWarpsM, int kMI>
void launch_gemm(const float* x, int n, int K, const uint16_t* W, size_t ldw, int R,
                 const float* bias, float* out, int ldo, Stream s) {
  constexpr int kBM = kWarpsM * kMI * 16;
  const dim3 grid(ceil_div(size_t(R), kBN), ceil_div(size_t(n), kBM));
  GPTOSS_LAUNCH((f32_bf16w_gemm_kernel<kWarpsM, kMI>), grid, kWarpsM * 128,
                sizeof(GemmSmem<kBM>), s, x, n, K, W, ldw, R, bias, out, ldo);
}

}  // namespace

void f32_bf16w_gemm(const float* x, int n, int K, const uint16_t* W, size_t ldw, int R,
                    const float* bias, float* out, int ldo, Stream s) {
  GPTOSS_CHECK(n >= 0 && R >= 0, "f32_bf16w_gemm: need n >= 0 and R >= 0");
  GPTOSS_CHECK(K >= 32 && K % 32 == 0, "f32_bf16w_gemm: K must be a positive multiple of 32, got "
                                           << K);
  GPTOSS_CHECK(ldw >= size_t(K) && ldw % 8 == 0 && aligned16(W),
               "f32_bf16w_gemm: W rows must be 16-byte aligned with ldw >= K");
  GPTOSS_CHECK(aligned16(x), "f32_bf16w_gemm: x must be 16-byte aligned");
  GPTOSS_CHECK(ldo >= R, "f32_bf16w_gemm: ldo must be >= R");
  if (n == 0 || R == 0) return;
  if (n <= 16)
    launch_gemm<1, 1>(x, n, K, W, ldw, R, bias, out, ldo, s);
  else if (n <= 32)
    launch_gemm<2, 1>(x, n, K, W, ldw, R, bias, out, ldo, s);
  else
    launch_gemm<2, 2>(x, n, K, W, ldw, R, bias, out, ldo, s);
}

}  // namespace cuda
}  // namespace gptoss
