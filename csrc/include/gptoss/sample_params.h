// Sampling parameters of one row, shared by the public API, the engine, the CPU sampler and the
// CUDA kernel (device memory there, so a plain struct).
// temperature 0: greedy (argmax, lowest index on ties). Otherwise Gumbel-max over the candidates:
// token = argmax_i (logits[i] / T + g(seed, counter, i)), g from the counter-based RNG of
// common/rng.h, over the top_k largest logits (0: all) further cut to the smallest set of largest
// probabilities reaching top_p (common/sample_ref.h is the exact definition).
#pragma once
#include <cstdint>

namespace gptoss {

struct SampleParams {
  float temperature = 0.0f;
  int top_k = 0;
  float top_p = 1.0f;
  uint32_t pad = 0;
  uint64_t seed = 0;
  uint64_t counter = 0;  // e.g. the position of the token being sampled
};

}  // namespace gptoss
