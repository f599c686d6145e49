// Router top-k + softmax: logits [n, E] -> the k largest logits of each token (ties: the lower
// expert index first) and the softmax over those k logits only (backends/numpy.py route).
//
// One warp per token. The E logits are spread over the 32 lanes (E / 32 per lane, read as one
// vector load), and the k winners are found by k rounds of a warp arg-max: each lane offers its
// best not-yet-taken (value, index), a butterfly of shuffles picks the larger value and, on equal
// values, the smaller index, and the lane owning the winner marks it taken. Lane j keeps the
// j-th winner, so the softmax at the end is one more max-free warp sum (the first winner is the
// maximum). k rounds x 5 shuffle steps: nothing else in the MoE is cheaper, so no smarter
// selection is worth its code. E is a template parameter (32 or 128, the two gpt-oss routers) so
// each lane's logits live in registers.
#include "common/numeric.h"
#include "cuda/kernels.h"
#include "cuda/runtime.cuh"

namespace gptoss {
namespace cuda {

namespace {

constexpr int kRouteWarps = 4;  // tokens per block

// Per lane: logits of experts lane * PER .. lane * PER + PER - 1 (contiguous, one vector load).
template <int E>
__global__ void __launch_bounds__(kRouteWarps * 32)
    topk_softmax_f32(const float* __restrict__ logits,  // [n, E]
                            int n, int k,
                            int32_t* __restrict__ experts,     // [n, k]
                            float* __restrict__ weights) {     // [n, k]
  static_assert(E == 32 || E == 128, "router width");
  constexpr int PER = E / 32;
  const int lane = int(threadIdx.x) % 32;
  const int t = int(blockIdx.x) * kRouteWarps + int(threadIdx.x) / 32;
  if (t >= n) return;  // the whole warp leaves together

  float v[PER];
  const float* row = logits + size_t(t) * E + lane * PER;
  if constexpr (PER == 4) {
    const float4 q = *reinterpret_cast<const float4*>(row);
    v[0] = q.x;
    v[1] = q.y;
    v[2] = q.z;
    v[3] = q.w;
  } else {
    v[0] = row[0];
  }
  unsigned taken = 0;  // bit i: this lane's logit i already chosen

  float my_v = 0.f;  // lane j < k: the j-th winner
  int my_e = 0;
  for (int j = 0; j < k; ++j) {
    // this lane's best untaken logit (lower index first on ties: strict '>')
    float bv = -INFINITY;
    int be = E;  // "none": loses every tie
#pragma unroll
    for (int i = 0; i < PER; ++i) {
      if (!(taken >> i & 1u) && (v[i] > bv || be == E)) {
        bv = v[i];
        be = lane * PER + i;
      }
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
      const float ov = __shfl_xor_sync(0xffffffffu, bv, o);
      const int oe = __shfl_xor_sync(0xffffffffu, be, o);
      if (ov > bv || (ov == bv && oe < be)) {
        bv = ov;
        be = oe;
      }
    }
    if (be / PER == lane) taken |= 1u << (be % PER);
    if (lane == j) {
      my_v = bv;
      my_e = be;
    }
  }
  // softmax over the k winners; the first is the largest
  const float mx = __shfl_sync(0xffffffffu, my_v, 0);
  const float p = lane < k ? expf(my_v - mx) : 0.f;
  const float sum = warp_sum(p);
  if (lane < k) {
    experts[size_t(t) * k + lane] = my_e;
    weights[size_t(t) * k + lane] = p / sum;
  }
}

}  // namespace

void f32_topk_softmax(const float* logits, int n, int E, int k, int32_t* experts, float* weights,
                      Stream s) {
  GPTOSS_CHECK(n >= 0, "f32_topk_softmax: n = " << n);
  GPTOSS_CHECK(k >= 1 && k <= 32 && k <= E, "f32_topk_softmax: k = " << k << " with E = " << E);
  if (n == 0) return;
  const unsigned grid = ceil_div(size_t(n), kRouteWarps);
  switch (E) {
    case 32:
      GPTOSS_LAUNCH(topk_softmax_f32<32>, grid, kRouteWarps * 32, 0, s, logits, n, k,
                    experts, weights);
      break;
    case 128:
      GPTOSS_CHECK(reinterpret_cast<uintptr_t>(logits) % 16 == 0,
                   "f32_topk_softmax: logits must be 16-byte aligned");
      GPTOSS_LAUNCH(topk_softmax_f32<128>, grid, kRouteWarps * 32, 0, s, logits, n, k,
                    experts, weights);
      break;
    default:
      GPTOSS_CHECK(false, "f32_topk_softmax: E = " << E << " (only 32 and 128 are compiled)");
  }
}

}  // namespace cuda
}  // namespace gptoss
