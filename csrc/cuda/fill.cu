// Seeded random weights made in device memory, for benchmarks on checkpoints too large for the
// machine's disk: a "hollow" checkpoint (gptoss.testing, hollow=True) carries the small tensors and
// leaves every matrix the CUDA backend binds as a hole, and the backend fills its device copies with
// these kernels instead of reading the file. Every value is a pure function of (key, index), so the
// result does not depend on the launch shape, and gptoss.testing.hollow_fill computes the same bits
// on the host (tests/test_cuda_hollow.py compares the two through whole forward passes).
#include "cuda/kernels.h"
#include "cuda/runtime.cuh"
#include "common/numeric.h"

namespace gptoss {
namespace cuda {

namespace {

// splitmix64's finaliser: a bijective mix of 64 bits.
__device__ __forceinline__ uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

__device__ __forceinline__ uint64_t bits_at(uint64_t key, size_t i) {
  return mix64(key + (uint64_t(i) + 1) * 0x9E3779B97F4A7C15ull);
}

// bf16 uniform on [-a, a): u = top 24 bits / 2^24, (2u - 1) exact in float32, one rounding in * a.
__global__ void fill_bf16_kernel(uint16_t* __restrict__ dst, size_t n, uint64_t key, float a) {
  for (size_t i = size_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += size_t(gridDim.x) * blockDim.x) {
    const float u = float(uint32_t(bits_at(key, i) >> 40)) * (1.0f / 16777216.0f);
    dst[i] = f32_to_bf16((2.0f * u - 1.0f) * a);
  }
}

// MXFP4 codes: uniform bytes (two uniform E2M1 codes each).
__global__ void fill_codes_kernel(uint8_t* __restrict__ dst, size_t n, uint64_t key) {
  for (size_t i = size_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += size_t(gridDim.x) * blockDim.x)
    dst[i] = uint8_t(bits_at(key, i) & 0xffu);
}

// E8M0 scales: base or base - 1, equally likely.
__global__ void fill_scales_kernel(uint8_t* __restrict__ dst, size_t n, uint64_t key, int base) {
  for (size_t i = size_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += size_t(gridDim.x) * blockDim.x)
    dst[i] = uint8_t(base - int(bits_at(key, i) & 1u));
}

unsigned fill_grid(size_t n) {
  const size_t blocks = (n + 255) / 256;
  return unsigned(blocks < 4096 ? (blocks ? blocks : 1) : 4096);
}

}  // namespace

void fill_random_bf16(uint16_t* dst, size_t n, uint64_t key, float a, Stream s) {
  if (n) GPTOSS_LAUNCH(fill_bf16_kernel, fill_grid(n), 256, 0, s, dst, n, key, a);
}
void fill_random_codes(uint8_t* dst, size_t n, uint64_t key, Stream s) {
  if (n) GPTOSS_LAUNCH(fill_codes_kernel, fill_grid(n), 256, 0, s, dst, n, key);
}
void fill_random_scales(uint8_t* dst, size_t n, uint64_t key, int base, Stream s) {
  if (n) GPTOSS_LAUNCH(fill_scales_kernel, fill_grid(n), 256, 0, s, dst, n, key, base);
}

}  // namespace cuda
}  // namespace gptoss
