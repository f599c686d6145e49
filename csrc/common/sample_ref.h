// The host reference of token sampling: exactly the algorithm of the CUDA kernel
// (cuda/sample.cu) and of the NumPy mirror (gptoss.sampling.sample_gumbel), so the same
// (seed, counter) picks the same token on every backend. Plain C++, inline, no CUDA.
//
// Definition (common/sample_math.h gives key, weight, gumbel; common/rng.h the uniforms):
//   order the vocabulary by key(l_i, i): logit descending, lower index first on ties.
//   temperature <= 0 or NaN: return the first element (greedy argmax).
//   z_i = l_i / T, z_max = l_first / T, w_i = weight(z_i - z_max) (integers, w_first = 2^32).
//   candidates C: the first top_k elements (top_k <= 0 or >= V: all).
//   top_p < 1: thr = double(top_p) * double(sum of w over C); keep the shortest prefix of C whose
//     w sum reaches thr (>=, compared as doubles; exact since sums stay below 2^53); thr <= 0
//     keeps the first element only. top_p >= 1 or NaN: keep C.
//   token = the kept i with the largest key(fp_add(z_i, gumbel(u(seed, counter, i))), i).
// Requires 1 <= V < 2^21 (so that sums of weights stay exact in a double). Logits should be
// finite; -inf (a masked token) is never drawn unless everything is -inf.
#pragma once
#include <algorithm>
#include <functional>
#include <utility>
#include <cstdint>
#include <vector>

#include "common/rng.h"
#include "common/sample_math.h"
#include "common/sample_params.h"
#include "gptoss/error.h"

namespace gptoss {

inline constexpr int kSampleMaxVocab = 1 << 21;

// The passes over the vocabulary are integer max / sum reductions, so OpenMP may split them in
// any way without changing the result.
#if defined(_OPENMP)
#define GPTOSS_SAMPLE_PRAGMA(x) _Pragma(#x)
#define GPTOSS_SAMPLE_PARALLEL_FOR(clauses) \
  GPTOSS_SAMPLE_PRAGMA(omp parallel for schedule(static) if (V >= 32768) clauses)
#else
#define GPTOSS_SAMPLE_PARALLEL_FOR(clauses)
#endif

inline int32_t sample_reference(const float* logits, int V, const SampleParams& p) {
  GPTOSS_CHECK(V >= 1 && V < kSampleMaxVocab, "sample_reference: V must be in [1, 2^21)");
  std::vector<uint64_t> key(static_cast<size_t>(V));
  uint64_t kmax = 0;
  GPTOSS_SAMPLE_PARALLEL_FOR(reduction(max : kmax))
  for (int i = 0; i < V; ++i) {
    key[size_t(i)] = sample_key(logits[i], uint32_t(i));
    kmax = std::max(kmax, key[size_t(i)]);
  }
  if (!(p.temperature > 0.0f)) return int32_t(sample_key_index(kmax));

  const float T = p.temperature;
  const float zmax = fp_div(logits[sample_key_index(kmax)], T);
  auto z_of = [&](int i) { return fp_div(logits[i], T); };

  // top_k: the k-th largest key is the threshold (keys are distinct).
  uint64_t kk = 0;
  if (p.top_k > 0 && p.top_k < V) {
    std::vector<uint64_t> s(key);
    std::nth_element(s.begin(), s.begin() + (p.top_k - 1), s.end(), std::greater<uint64_t>());
    kk = s[size_t(p.top_k - 1)];
  }

  // top_p: the key of the element where the running mass first reaches thr.
  uint64_t kp = kk;
  if (p.top_p < 1.0f) {
    std::vector<uint64_t> w(static_cast<size_t>(V));  // 0 outside the candidates
    uint64_t total = 0;
    GPTOSS_SAMPLE_PARALLEL_FOR(reduction(+ : total))
    for (int i = 0; i < V; ++i) {
      w[size_t(i)] = key[size_t(i)] < kk ? 0 : sample_weight(fp_sub(z_of(i), zmax));
      total += w[size_t(i)];
    }
    std::vector<std::pair<uint64_t, uint64_t>> pos;  // (key, weight) of candidates with w > 0
    for (int i = 0; i < V; ++i)
      if (w[size_t(i)]) pos.emplace_back(key[size_t(i)], w[size_t(i)]);
    const double thr = double(p.top_p) * double(total);
    if (!(thr > 0.0)) {
      kp = kmax;
    } else {
      // The crossing element has w > 0, so the zero-weight ones are left out. Radix selection
      // from the top 8 bits of the key down, keeping only the bucket that holds the crossing:
      // O(V) for the first pass, the survivors shrink by about 256x a pass.
      uint64_t above = 0;  // mass of the candidates with a larger key than the current bucket
      for (int shift = 56; shift >= 0 && pos.size() > 1; shift -= 8) {
        uint64_t mass[256] = {};
        for (const auto& e : pos) mass[(e.first >> shift) & 255u] += e.second;
        int d = 255;
        for (; d > 0; --d) {
          if (double(above + mass[d]) >= thr) break;
          above += mass[d];
        }
        size_t keep = 0;
        for (const auto& e : pos)
          if (int((e.first >> shift) & 255u) == d) pos[keep++] = e;
        pos.resize(keep);
      }
      if (!pos.empty()) kp = pos[0].first;
    }
  }

  const uint64_t stream = rng_stream(p.seed, p.counter);
  uint64_t best = 0;
  GPTOSS_SAMPLE_PARALLEL_FOR(reduction(max : best))
  for (int i = 0; i < V; ++i) {
    if (key[size_t(i)] < kp) continue;
    const float g = sample_gumbel(rng_bits_to_uniform(rng_bits(stream, uint64_t(i))));
    best = std::max(best, sample_key(fp_add(z_of(i), g), uint32_t(i)));
  }
  return int32_t(sample_key_index(best));
}

#undef GPTOSS_SAMPLE_PARALLEL_FOR
#undef GPTOSS_SAMPLE_PRAGMA

}  // namespace gptoss
