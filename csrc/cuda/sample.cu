// Token sampling on the device: one block per row of logits, exact top-k / top-p by radix
// selection, then Gumbel-max over the kept tokens. The result equals, token for token, the host
// reference (common/sample_ref.h, which states the definition) and gptoss.sampling.sample_gumbel:
// all three use the same integer RNG (common/rng.h) and the same unfused float32 arithmetic and
// integer probability masses (common/sample_math.h), and every decision is an integer or an
// exactly rounded comparison, never a float sum whose order could differ.
//
// Algorithm (per row, all passes stream the row from global memory / L2):
//   1. block max of key(l_i, i) = logit order with the lowest index on ties: the greedy token,
//      and z_max for the weights. Temperature <= 0: done.
//   2. top_k: radix select of the k-th largest 64-bit key, 8 bits a pass from the top, each pass
//      a 256-bin count histogram (shared-memory integer atomics) of the keys that share the
//      digits chosen so far; one warp scans the bins from the top and picks the digit where the
//      count crosses k. Stops as soon as the chosen bin is taken whole (usually 2-4 passes).
//   3. top_p < 1: the exact integer mass of the candidates (block sum), thr = top_p * mass in
//      double, then the same radix select over 256-bin weight histograms for the key of the
//      element where the running mass (in key order) first reaches thr.
//   4. Gumbel-max: block max of key(z_i + g(seed, counter, i), i) over the kept tokens.
// Thread mapping: blockDim = 32..1024 (about V / 16, a power of two) threads stride over the
// row; the grid is n blocks, fixed by n and V, no host synchronisation: graph-capturable.
// Trade-off: one block per row keeps every reduction in one block with a fixed order and no
// workspace, at the cost of up to ~20 passes over the row in one SM (a 201088-logit row is
// 0.8 MB, L2-resident after the first pass): tens of microseconds per row, small next to a
// decode step. A multi-block histogram would be faster for n = 1 but needs more launches.
#include <cstdint>

#include "common/rng.h"
#include "common/sample_math.h"
#include "common/sample_ref.h"
#include "cuda/kernels.h"
#include "cuda/runtime.cuh"

namespace gptoss {
namespace cuda {

namespace {

constexpr unsigned kFull = 0xffffffffu;

struct SampleSmem {
  unsigned int count[256];          // radix bins: keys
  unsigned long long mass[256];     // radix bins: weights
  unsigned long long warp_part[32]; // block reductions: one per warp
  unsigned long long result[3];     // broadcast from the scanning warp / the reduction
};

__device__ __forceinline__ unsigned long long shfl_xor_u64(unsigned long long v, int o) {
  const unsigned lo = __shfl_xor_sync(kFull, unsigned(v), o);
  const unsigned hi = __shfl_xor_sync(kFull, unsigned(v >> 32), o);
  return (static_cast<unsigned long long>(hi) << 32) | lo;
}

__device__ __forceinline__ unsigned long long shfl_up_u64(unsigned long long v, int o) {
  const unsigned lo = __shfl_up_sync(kFull, unsigned(v), o);
  const unsigned hi = __shfl_up_sync(kFull, unsigned(v >> 32), o);
  return (static_cast<unsigned long long>(hi) << 32) | lo;
}

__device__ __forceinline__ int lowest_lane(unsigned mask) {
#if defined(__CUDA_ARCH__)
  return __ffs(int(mask)) - 1;
#else
  return mask ? __builtin_ctz(mask) : -1;
#endif
}

__device__ __forceinline__ unsigned long long umax64(unsigned long long a, unsigned long long b) {
  return a > b ? a : b;
}

// Block-wide max (kMax) or sum of a u64: a fixed butterfly per warp, then warp 0 over the warp
// results in lane order. Integer arithmetic: the result does not depend on the order anyway.
template <bool kMax>
__device__ unsigned long long block_reduce_u64(unsigned long long v, SampleSmem* sm) {
  const int lane = int(threadIdx.x) & 31, warp = int(threadIdx.x) >> 5;
  const int nwarps = int(blockDim.x) >> 5;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const unsigned long long u = shfl_xor_u64(v, o);
    v = kMax ? umax64(v, u) : v + u;
  }
  if (lane == 0) sm->warp_part[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = lane < nwarps ? sm->warp_part[lane] : 0ull;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
      const unsigned long long u = shfl_xor_u64(v, o);
      v = kMax ? umax64(v, u) : v + u;
    }
    if (lane == 0) sm->result[0] = v;
  }
  __syncthreads();
  return sm->result[0];
}

__device__ __forceinline__ uint64_t weight_of(float logit, float T, float zmax) {
  return sample_weight(fp_sub(fp_div(logit, T), zmax));
}

// Radix selection over the 64-bit keys of the candidates (key >= floor_key) of one row.
// kMass = false: the key of the k-th largest candidate (need = k).
// kMass = true:  the key of the candidate where the running weight, in descending key order,
//                first reaches thr (0 < thr <= the candidates' total weight).
// Returns a threshold t with {candidates with key >= t} = exactly the selected prefix.
template <bool kMass>
__device__ uint64_t radix_select(const float* __restrict__ l,  // [V]
                                 int V, uint64_t floor_key, unsigned long long need, double thr,
                                 float T, float zmax, SampleSmem* sm) {
  const int tid = int(threadIdx.x), lane = tid & 31, warp = tid >> 5;
  uint64_t prefix = 0;
  unsigned long long rem = need;  // count mode: how many still to take; mass mode: mass above
  for (int shift = 56; shift >= 0; shift -= 8) {
    for (int b = tid; b < 256; b += int(blockDim.x)) {
      sm->count[b] = 0u;
      if (kMass) sm->mass[b] = 0ull;
    }
    __syncthreads();
    const uint64_t hi_mask = shift == 56 ? 0ull : (~0ull << (shift + 8));
    for (int i = tid; i < V; i += int(blockDim.x)) {
      const float x = l[i];
      const uint64_t key = sample_key(x, uint32_t(i));
      if (key < floor_key || (key & hi_mask) != prefix) continue;
      const int d = int((key >> shift) & 255u);
      atomicAdd(&sm->count[d], 1u);
      if (kMass) {
        const unsigned long long w = weight_of(x, T, zmax);
        if (w) atomicAdd(&sm->mass[d], w);
      }
    }
    __syncthreads();
    if (warp == 0) {
      // lane owns bins 255 - 8 lane - j, j = 0..7 (lane 0 the highest digits)
      unsigned long long c_own = 0, m_own = 0;
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        c_own += sm->count[255 - 8 * lane - j];
        if (kMass) m_own += sm->mass[255 - 8 * lane - j];
      }
      unsigned long long c_inc = c_own, m_inc = m_own;
#pragma unroll
      for (int o = 1; o < 32; o <<= 1) {
        const unsigned long long c = shfl_up_u64(c_inc, o);
        const unsigned long long m = kMass ? shfl_up_u64(m_inc, o) : 0ull;
        if (lane >= o) {
          c_inc += c;
          m_inc += m;
        }
      }
      const bool hit = kMass ? double(rem + m_inc) >= thr : c_inc >= rem;
      int L = lowest_lane(__ballot_sync(kFull, hit));
      if (L < 0) L = 31;  // unreachable for valid inputs; keeps the indices in range
      if (lane == L) {
        unsigned long long c_run = c_inc - c_own, m_run = m_inc - m_own;
        int d = 255 - 8 * lane - 7;
        unsigned long long c_before = c_run, m_before = m_run;
        for (int j = 0; j < 8; ++j) {
          const int b = 255 - 8 * lane - j;
          c_before = c_run;
          m_before = m_run;
          c_run += sm->count[b];
          if (kMass) m_run += sm->mass[b];
          if (kMass ? double(rem + m_run) >= thr : c_run >= rem) {
            d = b;
            break;
          }
        }
        const uint64_t new_prefix = prefix | (uint64_t(d) << shift);
        unsigned long long new_rem;
        bool done;
        if (kMass) {
          new_rem = rem + m_before;
          done = sm->count[d] <= 1u || shift == 0;
        } else {
          new_rem = rem - c_before;
          done = sm->count[d] <= new_rem || shift == 0;
        }
        sm->result[0] = new_prefix;
        sm->result[1] = new_rem;
        sm->result[2] = done ? 1ull : 0ull;
      }
    }
    __syncthreads();
    prefix = sm->result[0];
    rem = sm->result[1];
    const bool done = sm->result[2] != 0ull;
    __syncthreads();  // result[] and the bins are rewritten by the next pass
    if (done) break;
  }
  return prefix;
}

constexpr int kSampleMaxThreads = 1024;

// __launch_bounds__: a 1024-thread block must fit in 64 registers a thread
__global__ void __launch_bounds__(kSampleMaxThreads)
    sample_tokens_kernel(const float* __restrict__ logits,          // [n, V]
                         int V,
                         const SampleParams* __restrict__ params,  // [n]
                         int32_t* __restrict__ tokens) {           // [n]
  GPTOSS_DYNAMIC_SMEM(SampleSmem, sm);
  const int row = int(blockIdx.x), tid = int(threadIdx.x);
  const float* l = logits + size_t(row) * size_t(V);
  const SampleParams p = params[row];

  unsigned long long best = 0;
  for (int i = tid; i < V; i += int(blockDim.x)) best = umax64(best, sample_key(l[i], uint32_t(i)));
  const uint64_t kmax = block_reduce_u64<true>(best, sm);
  if (!(p.temperature > 0.0f)) {
    if (tid == 0) tokens[row] = int32_t(sample_key_index(kmax));
    return;
  }
  const float T = p.temperature;
  const float zmax = fp_div(l[sample_key_index(kmax)], T);

  uint64_t kk = 0;
  if (p.top_k > 0 && p.top_k < V)
    kk = radix_select<false>(l, V, 0, (unsigned long long)p.top_k, 0.0, T, zmax, sm);

  uint64_t kp = kk;
  if (p.top_p < 1.0f) {
    unsigned long long mass = 0;
    for (int i = tid; i < V; i += int(blockDim.x)) {
      const float x = l[i];
      if (sample_key(x, uint32_t(i)) >= kk) mass += weight_of(x, T, zmax);
    }
    const unsigned long long total = block_reduce_u64<false>(mass, sm);
    const double thr = double(p.top_p) * double(total);
    if (!(thr > 0.0))
      kp = kmax;
    else
      kp = radix_select<true>(l, V, kk, 0ull, thr, T, zmax, sm);
  }

  const uint64_t stream = rng_stream(p.seed, p.counter);
  best = 0;
  for (int i = tid; i < V; i += int(blockDim.x)) {
    const float x = l[i];
    if (sample_key(x, uint32_t(i)) < kp) continue;
    const float g = sample_gumbel(rng_bits_to_uniform(rng_bits(stream, uint64_t(i))));
    best = umax64(best, sample_key(fp_add(fp_div(x, T), g), uint32_t(i)));
  }
  const uint64_t pick = block_reduce_u64<true>(best, sm);
  if (tid == 0) tokens[row] = int32_t(sample_key_index(pick));
}

}  // namespace

size_t sample_workspace_bytes(int n, int V) {
  (void)n;
  (void)V;
  return 0;  // everything lives in the block's shared memory
}

void sample_tokens(const float* logits, int n, int V, const SampleParams* params, void* workspace,
                   int32_t* tokens, Stream s) {
  (void)workspace;
  GPTOSS_CHECK(n >= 0, "sample_tokens: n must be >= 0");
  GPTOSS_CHECK(V >= 1 && V < kSampleMaxVocab, "sample_tokens: V must be in [1, 2^21)");
  if (n == 0) return;
  GPTOSS_CHECK(logits && params && tokens, "sample_tokens: null pointer");
  int threads = 32;
  while (threads < kSampleMaxThreads && threads * 16 < V) threads *= 2;
  GPTOSS_LAUNCH(sample_tokens_kernel, n, threads, sizeof(SampleSmem), s, logits, V, params,
                tokens);
}

}  // namespace cuda
}  // namespace gptoss
