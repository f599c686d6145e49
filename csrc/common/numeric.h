// Math shared by every backend: bf16 conversion, the MXFP4 (E2M1 + E8M0) decode, the clamped
// SwiGLU and the YaRN frequencies. Inline and __host__ __device__ so CPU and CUDA code agree
// bit for bit where backends/numpy.py is exact.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define GPTOSS_HD __host__ __device__ __forceinline__
#else
#define GPTOSS_HD inline
#endif

namespace gptoss {

GPTOSS_HD float bits_to_f32(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f;
  std::memcpy(&f, &u, 4);
  return f;
#endif
}

GPTOSS_HD uint32_t f32_to_bits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
#endif
}

// bf16 bits -> float32 (exact).
GPTOSS_HD float bf16_to_f32(uint16_t b) { return bits_to_f32(uint32_t(b) << 16); }

// float32 -> bf16 bits, round to nearest even; NaN stays a quiet NaN.
GPTOSS_HD uint16_t f32_to_bf16(float f) {
  uint32_t u = f32_to_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return 0x7fc0;
  u += 0x7fffu + ((u >> 16) & 1u);
  return uint16_t(u >> 16);
}

// E2M1 code (bit 3 = sign) -> value: 0, 0.5, 1, 1.5, 2, 3, 4, 6 and their negatives.
GPTOSS_HD float fp4_e2m1_to_f32(uint32_t code) {
  const uint32_t mag = code & 7u;
  // exponent field e = mag >> 1, mantissa m = mag & 1: e == 0 is subnormal (0 or 0.5)
  const uint32_t e = mag >> 1, m = mag & 1u;
  const float v = e == 0 ? 0.5f * float(m) : bits_to_f32(((e + 126u) << 23) | (m << 22));
  return (code & 8u) ? -v : v;
}

// E8M0 scale byte -> 2^(s - 127). s = 0 is the subnormal 2^-127; s = 255 gives +inf.
GPTOSS_HD float e8m0_to_f32(uint32_t s) {
  if (s == 0) return bits_to_f32(0x00400000u);
  if (s == 255) return bits_to_f32(0x7f800000u);
  return bits_to_f32(s << 23);
}

// The clamped SwiGLU of gpt-oss: gate clamped from above, linear clamped both sides, and +1.
GPTOSS_HD float swiglu_clamped(float gate, float lin, float alpha, float limit) {
  gate = gate < limit ? gate : limit;
  lin = lin < -limit ? -limit : (lin > limit ? limit : lin);
  return gate / (1.0f + expf(-alpha * gate)) * (lin + 1.0f);
}

}  // namespace gptoss
