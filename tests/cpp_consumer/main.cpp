// Greedy generation through the public API only: prints the new token ids on one line.
#include <cstdio>
#include <cstdlib>
#include <vector>

#include <gptoss/gptoss.h>

int main(int argc, char** argv) {
  if (argc < 3) return 2;
  try {
    gptoss::Model model(argv[1]);
    std::vector<int32_t> prompt;
    for (int i = 3; i < argc; ++i) prompt.push_back(int32_t(std::atoi(argv[i])));
    gptoss::SamplerOptions so;
    so.temperature = 0.0f;
    gptoss::Sampler sampler(so);
    std::string reason;
    std::vector<int32_t> out = gptoss::generate(model, prompt, std::atoi(argv[2]), sampler, {}, &reason);
    for (size_t i = 0; i < out.size(); ++i) std::printf("%d%s", out[i], i + 1 < out.size() ? " " : "\n");
    std::fprintf(stderr, "stop: %s\n", reason.c_str());
    // a bad token id must come back as gptoss::Error, not a crash
    std::vector<float> logits(size_t(model.config().vocab_size));
    try {
      model.decode(-5, logits.data());
      return 3;
    } catch (const gptoss::Error& e) {
      std::fprintf(stderr, "caught: %s\n", e.what());
    }
  } catch (const gptoss::Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
