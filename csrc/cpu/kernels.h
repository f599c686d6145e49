// CPU kernels (layer 1): raw pointers and sizes in, no allocation policy, no Python.
// Shapes are given next to each pointer; all matrices are row-major.
#pragma once
#include <cstddef>
#include <cstdint>

namespace gptoss {
namespace cpu {

// MXFP4 -> float32. blocks [rows, nb, 16] u8, scales [rows, nb] u8 -> out [rows, nb * 32].
void f32_mf4_dequant(const uint8_t* blocks, const uint8_t* scales, size_t rows, size_t nb,
                     float* out);

}  // namespace cpu
}  // namespace gptoss
