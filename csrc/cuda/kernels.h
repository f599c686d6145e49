// CUDA kernels (layer 1): raw device pointers, sizes and a stream in; each wrapper checks its
// preconditions, computes the grid, launches, and checks the launch. Nothing else writes <<< >>>.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

namespace gptoss {
namespace cuda {

// Number of usable devices; on failure 0 and the CUDA error text in *err.
int device_count(std::string* err);
std::string device_name(int device);

// MXFP4 -> bf16. blocks [rows, nb, 16] u8, scales [rows, nb] u8 -> out [rows, nb * 32] bf16 bits.
void bf16_mf4_dequant(const uint8_t* blocks, const uint8_t* scales, size_t rows, size_t nb,
                      uint16_t* out, void* stream);

// Host convenience for tests and single-kernel use: copies host arrays to the device, runs
// bf16_mf4_dequant, copies the result back (out_host: [rows, nb * 32] bf16 bits).
void bf16_mf4_dequant_host(const uint8_t* blocks, const uint8_t* scales, size_t rows, size_t nb,
                           uint16_t* out_host);
// Device-resident timing: median milliseconds of `iters` launches on [rows, nb] blocks.
double bench_bf16_mf4_dequant(size_t rows, size_t nb, int iters);

}  // namespace cuda
}  // namespace gptoss
