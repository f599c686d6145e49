// MXFP4 -> bf16 decode on the GPU. One thread per 16-byte block: a single 16-byte load of the
// codes, one scale byte, and four 16-byte stores of the 32 bf16 values. The E2M1 table lives in
// registers (a shift-and-select on the code), so the kernel is bound by memory traffic only.
#include "common/numeric.h"
#include "cuda/kernels.h"
#include "cuda/runtime.cuh"

namespace gptoss {
namespace cuda {

namespace {
__global__ void bf16_mf4_dequant_kernel(const uint4* __restrict__ blocks,    // [n] 16 B each
                                        const uint8_t* __restrict__ scales,  // [n]
                                        size_t n, uint4* __restrict__ out) {  // [n * 4] 16 B each
  const size_t i = size_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const uint4 q = blocks[i];
  const float s = e8m0_to_f32(scales[i]);
  const uint32_t words[4] = {q.x, q.y, q.z, q.w};
#pragma unroll
  for (int w = 0; w < 4; ++w) {
    uint32_t packed[4];
#pragma unroll
    for (int b = 0; b < 4; ++b) {
      const uint32_t byte = (words[w] >> (8 * b)) & 0xffu;
      const uint16_t lo = f32_to_bf16(fp4_e2m1_to_f32(byte & 15u) * s);
      const uint16_t hi = f32_to_bf16(fp4_e2m1_to_f32(byte >> 4) * s);
      packed[b] = uint32_t(lo) | (uint32_t(hi) << 16);
    }
    out[i * 4 + w] = make_uint4(packed[0], packed[1], packed[2], packed[3]);
  }
}
}  // namespace

void bf16_mf4_dequant(const uint8_t* blocks, const uint8_t* scales, size_t rows, size_t nb,
                      uint16_t* out, Stream stream) {
  GPTOSS_CHECK(reinterpret_cast<uintptr_t>(blocks) % 16 == 0 &&
                   reinterpret_cast<uintptr_t>(out) % 16 == 0,
               "bf16_mf4_dequant: blocks and out must be 16-byte aligned");
  const size_t n = rows * nb;
  if (n == 0) return;
  const int threads = 256;
  const size_t grid = (n + threads - 1) / threads;
  GPTOSS_LAUNCH(bf16_mf4_dequant_kernel, unsigned(grid), threads, 0, stream,
                reinterpret_cast<const uint4*>(blocks), scales, n, reinterpret_cast<uint4*>(out));
}

}  // namespace cuda
}  // namespace gptoss
