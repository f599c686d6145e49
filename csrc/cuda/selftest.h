// Self-test kernels of the CUDA layer: each exercises one primitive the kernels rely on (warp
// shuffles and votes, block barriers, mma.sync fragments, ldmatrix, cp.async) and writes what it
// saw, so a test can compare with a plain loop. Under emulation they test the emulator; on a GPU
// (bench/gpu_check.py) the same kernels test the emulator's fidelity against the hardware. The
// `bad_*` kernels break a rule on purpose: the emulator must report them.
#pragma once
#include <cstdint>
#include <string>

namespace gptoss {
namespace cuda {

// One block of 64 threads. out [64, 8] int32: per thread, xor-shuffle sum, shfl_down by 3,
// shfl_up by 5, broadcast of lane 7, ballot of (lane % 3 == 0), block sum over a barrier,
// __syncthreads_count(tid odd), and __reduce_max_sync of lane * 7 % 32. in [64] int32.
void selftest_warp(const int32_t* in, int32_t* out);
// D [16, 8] f32 = A [16, 16] bf16 @ B [16, 8] bf16 (k x n), fragments built from global memory by
// the documented layout, one warp, one mma.
void selftest_mma(const uint16_t* A, const uint16_t* B, float* D);
// The GEMM idiom: A [16, 16] row-major and W [8, 16] ([n][k]) staged in shared memory with
// cp.async, fragments by ldmatrix_x4 (A) and ldmatrix_x2 (W), D [16, 8] = A @ W^T.
void selftest_mma_ldmatrix(const uint16_t* A, const uint16_t* W, float* D);
// ldmatrix .x4 on four 8x8 bf16 matrices M [4, 8, 8]: out [32 lanes, 4 registers].
void selftest_ldmatrix(const uint16_t* M, bool trans, uint32_t* out);
// cp.async of n (<= 64) 16-byte chunks in two commit groups, the last `partial` source bytes of
// the final chunk zero-filled (src_bytes = 16 - partial); out [n * 16] bytes; in [n * 16].
void selftest_cp_async(const uint8_t* in, int n, int partial, uint8_t* out);
// Deliberate misuse (must fail under emulation; `racy` only shows under ThreadSanitizer).
// which: "lane_exited", "divergent_barrier", "smem_limit", "mixed_collectives", "racy",
// "uninitialised_smem" (returns, in *out, the float read from shared memory never written).
void selftest_bad(const std::string& which, float* out);

}  // namespace cuda
}  // namespace gptoss
