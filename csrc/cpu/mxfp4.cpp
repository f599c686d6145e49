// MXFP4 decode on the CPU: a 256-entry table maps each byte to its two values (low nibble first),
// then the block's E8M0 scale multiplies all 32. Exact in float32. Rows are split over threads.
#include "cpu/kernels.h"

#include "common/numeric.h"

namespace gptoss {
namespace cpu {

namespace {
struct BytePairs {
  float v[256][2];
  BytePairs() {
    for (int b = 0; b < 256; ++b) {
      v[b][0] = fp4_e2m1_to_f32(b & 15);
      v[b][1] = fp4_e2m1_to_f32(b >> 4);
    }
  }
};
const BytePairs& byte_pairs() {
  static const BytePairs t;
  return t;
}
}  // namespace

void f32_mf4_dequant(const uint8_t* blocks, const uint8_t* scales, size_t rows, size_t nb,
                     float* out) {
  const BytePairs& t = byte_pairs();
  const long long n = (long long)(rows * nb);
#pragma omp parallel for schedule(static) if (n > 4096)
  for (long long i = 0; i < n; ++i) {
    const uint8_t* b = blocks + i * 16;
    const float s = e8m0_to_f32(scales[i]);
    float* o = out + i * 32;
    for (int j = 0; j < 16; ++j) {
      o[2 * j] = t.v[b[j]][0] * s;
      o[2 * j + 1] = t.v[b[j]][1] * s;
    }
  }
}

}  // namespace cpu
}  // namespace gptoss
