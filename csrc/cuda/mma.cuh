// Thin wrappers over the tensor-core and async-copy instructions the kernels use: mma.sync
// m16n8k16 (bf16 in, f32 accumulate), ldmatrix and cp.async. On the GPU each is one PTX
// instruction; under emulation (GPTOSS_CUDA_EMULATE) each is a warp collective of the emulator that
// follows the PTX ISA's documented fragment layouts, tested against a plain loop
// (tests/test_cuda_emu.py) and, on a GPU, against the hardware (bench/gpu_check.py).
//
// Fragment layout of mma.m16n8k16 (g = lane / 4, t = lane % 4; each 32-bit register holds two
// bf16, the lower column or k in the low half):
//   A (16 x 16, row-major): a[j] holds (row g + 8 * (j & 1), cols 2t + 8 * (j >> 1) and +1)
//   B (16 x 8, k x n):      b[j] holds (k 2t + 8j and +1, col g)
//   C/D (16 x 8, f32):      d[i] is (row g + 8 * (i >> 1), col 2t + (i & 1))
// ldmatrix .x4: lanes 8m..8m+7 give the addresses of the 8 rows (16 bytes each) of matrix m;
// register m of lane l then holds row l / 4, columns 2 (l % 4) and +1 of matrix m (.trans: the
// transposed matrix). .x2 uses the addresses of lanes 0..15 and fills registers 0 and 1.
#pragma once
#include <cstdint>

#include "common/numeric.h"
#include "cuda/runtime.cuh"

namespace gptoss {
namespace cuda {

#if defined(GPTOSS_CUDA_EMULATE)

__device__ __forceinline__ void mma_bf16_16816(float (&d)[4], const uint32_t (&a)[4],
                                               const uint32_t (&b)[2]) {
  ::gptoss_emu::mma_bf16_16816(d, a, b);
}
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* smem_row) {
  ::gptoss_emu::ldmatrix(r, 4, false, smem_row);
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* smem_row) {
  ::gptoss_emu::ldmatrix(r, 4, true, smem_row);
}
__device__ __forceinline__ void ldmatrix_x2(uint32_t (&r)[2], const void* smem_row) {
  ::gptoss_emu::ldmatrix(r, 2, false, smem_row);
}
__device__ __forceinline__ void ldmatrix_x2_trans(uint32_t (&r)[2], const void* smem_row) {
  ::gptoss_emu::ldmatrix(r, 2, true, smem_row);
}
// 16 bytes global -> shared, completed by cp_async_wait; src_bytes < 16 zero-fills the rest
// (src_bytes = 0: no read, all zeros).
__device__ __forceinline__ void cp_async_16(void* smem, const void* gmem, int src_bytes = 16) {
  ::gptoss_emu::cp_async(smem, gmem, 16, src_bytes);
}
__device__ __forceinline__ void cp_async_commit() { ::gptoss_emu::cp_async_commit(); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  ::gptoss_emu::cp_async_wait(N);
}

#else

__device__ __forceinline__ void mma_bf16_16816(float (&d)[4], const uint32_t (&a)[4],
                                               const uint32_t (&b)[2]) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}
__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* smem_row) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(smem_row)));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* smem_row) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(smem_row)));
}
__device__ __forceinline__ void ldmatrix_x2(uint32_t (&r)[2], const void* smem_row) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0,%1}, [%2];\n"
               : "=r"(r[0]), "=r"(r[1])
               : "r"(smem_addr(smem_row)));
}
__device__ __forceinline__ void ldmatrix_x2_trans(uint32_t (&r)[2], const void* smem_row) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0,%1}, [%2];\n"
               : "=r"(r[0]), "=r"(r[1])
               : "r"(smem_addr(smem_row)));
}
__device__ __forceinline__ void cp_async_16(void* smem, const void* gmem, int src_bytes = 16) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(smem)),
               "l"(gmem), "r"(src_bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

#endif

// Two floats -> one register of two bf16 (lo in the low half), round to nearest even.
__device__ __forceinline__ uint32_t pack_bf16x2(float lo, float hi) {
  return uint32_t(f32_to_bf16(lo)) | (uint32_t(f32_to_bf16(hi)) << 16);
}

}  // namespace cuda
}  // namespace gptoss
