// YaRN RoPE frequencies (backends/numpy.py yarn_frequencies), computed in double on the host by every backend.
#pragma once
#include <algorithm>
#include <cmath>
#include <vector>

namespace gptoss {

// inv_freq [d/2] and the concentration m that scales both cos and sin.
inline void yarn_frequencies(int d, double theta, double factor, double beta_fast, double beta_slow,
                             int original_context, bool truncate, std::vector<double>* inv_freq,
                             double* m) {
  const double pi = 3.14159265358979323846;
  inv_freq->assign(size_t(d / 2), 0.0);
  if (factor <= 1.0) {
    for (int i = 0; i < d / 2; ++i) (*inv_freq)[size_t(i)] = 1.0 / std::pow(theta, 2.0 * i / d);
    *m = 1.0;
    return;
  }
  double low = d * std::log(original_context / (beta_fast * 2 * pi)) / (2 * std::log(theta));
  double high = d * std::log(original_context / (beta_slow * 2 * pi)) / (2 * std::log(theta));
  if (truncate) {
    low = std::floor(low);
    high = std::ceil(high);
  }
  if (high == low) high += 0.001;
  for (int i = 0; i < d / 2; ++i) {
    const double base = std::pow(theta, 2.0 * i / d);
    const double ramp = std::min(1.0, std::max(0.0, (i - low) / (high - low)));
    (*inv_freq)[size_t(i)] = (1.0 / (factor * base)) * ramp + (1.0 / base) * (1.0 - ramp);
  }
  *m = 0.1 * std::log(factor) + 1.0;
}

}  // namespace gptoss
