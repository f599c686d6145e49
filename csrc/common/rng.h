// Counter-based random numbers shared by every backend (CUDA kernels, the C++ sampler and the
// NumPy mirror in python/gptoss/sampling.py): a uniform in (0, 1) per (seed, counter, index),
// computed with integer arithmetic only, so every backend draws the same bits.
//
// The generator is SplitMix64 (Steele, Lea, Flood 2014): output i of a stream is
// mix64(state + (i + 1) * golden). The stream state is derived from (seed, counter) by two more
// rounds of the same finaliser, so nearby seeds and counters give unrelated streams:
//   stream = mix64(mix64(seed ^ golden) ^ counter)
//   bits   = mix64(stream + (index + 1) * golden)           (all arithmetic mod 2^64)
//   u      = (2 * (bits >> 41) + 1) * 2^-24                  (23 random bits; exact in float32)
// u lies in [2^-24, 1 - 2^-24], never 0 or 1, so -log(-log(u)) is always finite.
#pragma once
#include <cstdint>

#include "common/numeric.h"

namespace gptoss {

constexpr uint64_t kRngGolden = 0x9E3779B97F4A7C15ull;

// The SplitMix64 finaliser (a bijection of 64-bit words with full avalanche).
GPTOSS_HD uint64_t rng_mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// The stream for one (seed, counter) pair, e.g. (request seed, position of the token sampled).
GPTOSS_HD uint64_t rng_stream(uint64_t seed, uint64_t counter) {
  return rng_mix64(rng_mix64(seed ^ kRngGolden) ^ counter);
}

// 64 random bits for element `index` of a stream.
GPTOSS_HD uint64_t rng_bits(uint64_t stream, uint64_t index) {
  return rng_mix64(stream + (index + 1) * kRngGolden);
}

// Bits -> uniform in (0, 1): (2 * (bits >> 41) + 1) / 2^24, exact in float32.
GPTOSS_HD float rng_bits_to_uniform(uint64_t bits) {
  return float(uint32_t(bits >> 41) * 2u + 1u) * (1.0f / 16777216.0f);
}

GPTOSS_HD float rng_uniform(uint64_t seed, uint64_t counter, uint64_t index) {
  return rng_bits_to_uniform(rng_bits(rng_stream(seed, counter), index));
}

}  // namespace gptoss
