// The arithmetic of token sampling, shared bit for bit by the CUDA kernel (cuda/sample.cu), the
// C++ reference (common/sample_ref.h) and the NumPy mirror (gptoss.sampling.sample_gumbel).
//
// Every float operation here is a single IEEE-754 float32 operation, rounded to nearest, never
// fused: on the device through __fmul_rn / __fadd_rn / __fdiv_rn (which nvcc never contracts
// into an FMA), on the host through an empty asm that hides each product from the compiler's
// contraction pass; NumPy float32 array arithmetic is unfused by construction. exp2 and log are
// our own polynomials over those operations, not the libraries' expf/logf (which differ by an
// ulp between CUDA, glibc and NumPy). Masses are integers, summed exactly in any order.
//
// The definitions (T > 0; z_i = l_i / T; order = logit descending, lower index first on ties):
//   key(v, i)    = okey(v) << 32 | (2^32 - 1 - i)   okey: a float's total order as uint32
//                  (NaN lowest, -0 = +0); the largest key is the largest value, lowest index
//   weight(d)    = floor(2^32 * exp2~(d * log2(e))) for d = z_i - z_max <= 0, an integer in
//                  [0, 2^32] (0 once the probability ratio is below 2^-32, or for NaN)
//   gumbel(u)    = -ln~(-ln~(u))                     u from common/rng.h
// where exp2~ and ln~ are the polynomials below (relative error about 1e-7).
#pragma once
#include <cstdint>

#include "common/numeric.h"

namespace gptoss {

// ------------------------------------------------------------------------ unfused float ops
#if defined(__CUDA_ARCH__)
GPTOSS_HD float fp_mul(float a, float b) { return __fmul_rn(a, b); }
GPTOSS_HD float fp_add(float a, float b) { return __fadd_rn(a, b); }
GPTOSS_HD float fp_sub(float a, float b) { return __fsub_rn(a, b); }
GPTOSS_HD float fp_div(float a, float b) { return __fdiv_rn(a, b); }
GPTOSS_HD float fp_floor(float a) { return floorf(a); }
#else
// An empty asm the optimiser cannot see through: the product is materialised as rounded, so it
// can never become half of a fused multiply-add, whatever -ffp-contract says.
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#define GPTOSS_FP_OPAQUE(v) __asm__("" : "+x"(v))
#elif defined(__GNUC__) && defined(__aarch64__)
#define GPTOSS_FP_OPAQUE(v) __asm__("" : "+w"(v))
#elif defined(__GNUC__)
#define GPTOSS_FP_OPAQUE(v) __asm__("" : "+m"(v))
#else
#define GPTOSS_FP_OPAQUE(v) \
  do {                      \
    volatile float t_ = v;  \
    v = t_;                 \
  } while (0)
#endif
GPTOSS_HD float fp_mul(float a, float b) {
  float r = a * b;
  GPTOSS_FP_OPAQUE(r);
  return r;
}
GPTOSS_HD float fp_add(float a, float b) { return a + b; }
GPTOSS_HD float fp_sub(float a, float b) { return a - b; }
GPTOSS_HD float fp_div(float a, float b) { return a / b; }
GPTOSS_HD float fp_floor(float a) { return std::floor(a); }
#endif

// ------------------------------------------------------------------------ keys
// A float's order as an unsigned integer: NaN -> 0 (below -inf), -0 -> +0.
GPTOSS_HD uint32_t sample_okey(float v) {
  uint32_t b = f32_to_bits(v);
  if ((b & 0x7fffffffu) > 0x7f800000u) return 0u;
  if (b == 0x80000000u) b = 0u;
  return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

// Larger key = larger value, then lower index. i < 2^32.
GPTOSS_HD uint64_t sample_key(float v, uint32_t i) {
  return (uint64_t(sample_okey(v)) << 32) | uint64_t(0xffffffffu - i);
}

GPTOSS_HD uint32_t sample_key_index(uint64_t key) { return 0xffffffffu - uint32_t(key); }

// ------------------------------------------------------------------------ weights
// floor(2^32 * 2^(d * log2 e)) for d <= 0: 2^t = 2^j * 2^f with j = floor(t), f in [0, 1) exact,
// 2^f by a degree-6 polynomial (Horner, c0 = 1), clamped to [1, 2]; then an exact integer shift.
GPTOSS_HD uint64_t sample_weight(float d) {
  float t = fp_mul(d, 0x1.715476p+0f);  // log2(e)
  if (!(t > -32.0f)) return 0;          // also NaN
  if (t > 0.0f) t = 0.0f;
  const float j = fp_floor(t);
  const float f = fp_sub(t, j);  // exact
  float p = 0x1.c54640p-13f;
  p = fp_add(fp_mul(p, f), 0x1.46d326p-10f);
  p = fp_add(fp_mul(p, f), 0x1.3d0c40p-7f);
  p = fp_add(fp_mul(p, f), 0x1.c688f0p-5f);
  p = fp_add(fp_mul(p, f), 0x1.ebfd5ap-3f);
  p = fp_add(fp_mul(p, f), 0x1.62e42cp-1f);
  p = fp_add(fp_mul(p, f), 1.0f);
  p = p < 1.0f ? 1.0f : (p > 2.0f ? 2.0f : p);
  const uint64_t m = uint64_t(uint32_t(fp_mul(p, 8388608.0f)));  // p * 2^23: an exact integer
  return (m << (32 + int(j))) >> 23;                                 // j in [-32, 0]
}

// ------------------------------------------------------------------------ Gumbel noise
// Natural log of a positive normal float: x = m 2^e with m in [sqrt(1/2), sqrt(2)),
// ln m = 2 atanh(s), s = (m - 1) / (m + 1), by its odd series to s^9.
GPTOSS_HD float sample_ln(float x) {
  const uint32_t b = f32_to_bits(x);
  int e = int(b >> 23) - 127;
  uint32_t mb = (b & 0x007fffffu) | 0x3f800000u;
  if (mb > 0x3fb504f3u) {  // m > sqrt(2): halve it
    mb -= 0x00800000u;
    e += 1;
  }
  const float f = fp_sub(bits_to_f32(mb), 1.0f);  // exact
  const float s = fp_div(f, fp_add(2.0f, f));
  const float s2 = fp_mul(s, s);
  float q = 0x1.c71c72p-3f;                   // 2/9
  q = fp_add(fp_mul(q, s2), 0x1.24924ap-2f);  // 2/7
  q = fp_add(fp_mul(q, s2), 0x1.99999ap-2f);  // 2/5
  q = fp_add(fp_mul(q, s2), 0x1.555556p-1f);  // 2/3
  q = fp_add(fp_mul(q, s2), 2.0f);
  return fp_add(fp_mul(float(e), 0x1.62e430p-1f), fp_mul(s, q));  // e ln 2 + ln m
}

// A standard Gumbel variate from u in (0, 1) as rng_bits_to_uniform gives it.
GPTOSS_HD float sample_gumbel(float u) { return -sample_ln(-sample_ln(u)); }

}  // namespace gptoss
