// The one include of every CUDA source file in csrc/cuda/. It gives the CUDA runtime either from
// the toolkit (nvcc) or from our host emulation (GPTOSS_CUDA_EMULATE: the same .cu file compiled
// as C++ and run on CPU threads, see emu/emu.h), and the three things kernel files use from here:
//
//   GPTOSS_CUDA_CHECK(call)     every runtime call; failure throws gptoss::Error with file and line
//   GPTOSS_LAUNCH(kernel, grid, block, smem, stream, args...)
//                               the only way a kernel is launched (a launch wrapper's last step);
//                               it checks the launch too
//   GPTOSS_DYNAMIC_SMEM(T, name)
//                               `T* name` pointing at the block's dynamic shared memory. Kernels
//                               keep their shared memory in one struct taken from here (no static
//                               __shared__), so the emulation can give each block its own, poisoned.
#pragma once

#if defined(GPTOSS_CUDA_EMULATE)
#include "cuda/emu/emu.h"
#else
#include <cuda_runtime.h>
#endif

#include <string>

#include "gptoss/error.h"

#define GPTOSS_CUDA_CHECK(call)                                                       \
  do {                                                                                \
    cudaError_t gptoss_err_ = (call);                                                 \
    if (gptoss_err_ != cudaSuccess) {                                                 \
      ::gptoss::fail(__FILE__, __LINE__,                                              \
                     std::string(#call) + ": " + cudaGetErrorString(gptoss_err_));   \
    }                                                                                 \
  } while (0)

#if defined(GPTOSS_CUDA_EMULATE)
#define GPTOSS_LAUNCH(kernel, grid, block, smem, stream, ...)                              \
  do {                                                                                     \
    ::gptoss_emu::launch(#kernel, kernel, dim3(grid), dim3(block), size_t(smem),           \
                         static_cast<cudaStream_t>(stream), __VA_ARGS__);                  \
    GPTOSS_CUDA_CHECK(cudaGetLastError());                                                 \
  } while (0)
#define GPTOSS_DYNAMIC_SMEM(T, name) T* name = reinterpret_cast<T*>(::gptoss_emu::dynamic_smem())
#else
#define GPTOSS_LAUNCH(kernel, grid, block, smem, stream, ...)                          \
  do {                                                                                 \
    kernel<<<(grid), (block), (smem), static_cast<cudaStream_t>(stream)>>>(__VA_ARGS__); \
    GPTOSS_CUDA_CHECK(cudaGetLastError());                                             \
  } while (0)
#define GPTOSS_DYNAMIC_SMEM(T, name)                              \
  extern __shared__ __align__(16) unsigned char gptoss_smem_[];   \
  T* name = reinterpret_cast<T*>(gptoss_smem_)
#endif

// Device-side helpers every kernel family uses.
namespace gptoss {
namespace cuda {

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

inline unsigned ceil_div(size_t a, size_t b) { return unsigned((a + b - 1) / b); }

}  // namespace cuda
}  // namespace gptoss
