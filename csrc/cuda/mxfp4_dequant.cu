// MXFP4 -> bf16 decode on the GPU. One thread per 16-byte block: a single 16-byte load of the
// codes, one scale byte, and four 16-byte stores of the 32 bf16 values. The E2M1 table lives in
// registers (a shift-and-select on the code), so the kernel is bound by memory traffic only.
#include <cuda_runtime.h>

#include <algorithm>
#include <vector>

#include "common/numeric.h"
#include "cuda/check.cuh"
#include "cuda/kernels.h"

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

int device_count(std::string* err) {
  int n = 0;
  cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) {
    if (err) *err = cudaGetErrorString(e);
    cudaGetLastError();  // clear the sticky-free error so later queries start clean
    return 0;
  }
  return n;
}

std::string device_name(int device) {
  cudaDeviceProp p;
  GPTOSS_CUDA_CHECK(cudaGetDeviceProperties(&p, device));
  return p.name;
}

void bf16_mf4_dequant(const uint8_t* blocks, const uint8_t* scales, size_t rows, size_t nb,
                      uint16_t* out, void* stream) {
  GPTOSS_CHECK(reinterpret_cast<uintptr_t>(blocks) % 16 == 0 &&
                   reinterpret_cast<uintptr_t>(out) % 16 == 0,
               "bf16_mf4_dequant: blocks and out must be 16-byte aligned");
  const size_t n = rows * nb;
  if (n == 0) return;
  const int threads = 256;
  const size_t grid = (n + threads - 1) / threads;
  bf16_mf4_dequant_kernel<<<unsigned(grid), threads, 0, static_cast<cudaStream_t>(stream)>>>(
      reinterpret_cast<const uint4*>(blocks), scales, n, reinterpret_cast<uint4*>(out));
  GPTOSS_CUDA_CHECK(cudaGetLastError());
}

namespace {
// Device buffers freed on every path, errors included.
struct DeviceBuffer {
  void* p = nullptr;
  explicit DeviceBuffer(size_t bytes) { GPTOSS_CUDA_CHECK(cudaMalloc(&p, bytes ? bytes : 1)); }
  ~DeviceBuffer() { cudaFree(p); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
};
}  // namespace

void bf16_mf4_dequant_host(const uint8_t* blocks, const uint8_t* scales, size_t rows, size_t nb,
                           uint16_t* out_host) {
  const size_t n = rows * nb;
  DeviceBuffer b(n * 16), s(n), o(n * 64);
  GPTOSS_CUDA_CHECK(cudaMemcpy(b.p, blocks, n * 16, cudaMemcpyHostToDevice));
  GPTOSS_CUDA_CHECK(cudaMemcpy(s.p, scales, n, cudaMemcpyHostToDevice));
  bf16_mf4_dequant(static_cast<const uint8_t*>(b.p), static_cast<const uint8_t*>(s.p), rows, nb,
                   static_cast<uint16_t*>(o.p), nullptr);
  GPTOSS_CUDA_CHECK(cudaDeviceSynchronize());
  GPTOSS_CUDA_CHECK(cudaMemcpy(out_host, o.p, n * 64, cudaMemcpyDeviceToHost));
}

double bench_bf16_mf4_dequant(size_t rows, size_t nb, int iters) {
  GPTOSS_CHECK(iters >= 1, "iters must be >= 1");
  const size_t n = rows * nb;
  DeviceBuffer b(n * 16), s(n), o(n * 64);
  GPTOSS_CUDA_CHECK(cudaMemset(b.p, 0x5a, n * 16));
  GPTOSS_CUDA_CHECK(cudaMemset(s.p, 120, n));
  cudaEvent_t e0, e1;
  GPTOSS_CUDA_CHECK(cudaEventCreate(&e0));
  GPTOSS_CUDA_CHECK(cudaEventCreate(&e1));
  std::vector<float> ms;
  for (int i = 0; i < iters + 1; ++i) {
    GPTOSS_CUDA_CHECK(cudaEventRecord(e0));
    bf16_mf4_dequant(static_cast<const uint8_t*>(b.p), static_cast<const uint8_t*>(s.p), rows,
                     nb, static_cast<uint16_t*>(o.p), nullptr);
    GPTOSS_CUDA_CHECK(cudaEventRecord(e1));
    GPTOSS_CUDA_CHECK(cudaEventSynchronize(e1));
    float t = 0;
    GPTOSS_CUDA_CHECK(cudaEventElapsedTime(&t, e0, e1));
    if (i > 0) ms.push_back(t);
  }
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

}  // namespace cuda
}  // namespace gptoss
