// Generate tokens from a gpt-oss checkpoint with the C++ engine: no Python, no tokenizer.
//
//   gptoss_generate CHECKPOINT_DIR [-n NEW] [-t TEMP] [--seed S] [--threads T]
//                   [--prompt-len N | TOKEN_ID ...]
//
// Prints the generated token ids, then prefill and decode speed. With --prompt-len N the prompt
// is N pseudo-random token ids (for benchmarks); otherwise the ids given on the command line.
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "gptoss/gptoss.h"

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s CHECKPOINT_DIR [-n NEW] [-t TEMP] [--seed S] [--threads T] "
                         "[--dense-weights bf16|int8] [--prompt-len N | TOKEN_ID ...]\n", argv[0]);
    return 2;
  }
  std::string path = argv[1];
  int n_new = 16, threads = 0, prompt_len = 0;
  float temp = 0.0f;
  unsigned long long seed = 0;
  std::vector<int32_t> prompt;
  std::string dense_weights = "bf16";
  for (int i = 2; i < argc; ++i) {
    std::string a = argv[i];
    auto next = [&]() -> const char* {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "missing value after %s\n", a.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "-n") n_new = std::atoi(next());
    else if (a == "-t") temp = float(std::atof(next()));
    else if (a == "--seed") seed = std::strtoull(next(), nullptr, 10);
    else if (a == "--threads") threads = std::atoi(next());
    else if (a == "--prompt-len") prompt_len = std::atoi(next());
    else if (a == "--dense-weights") dense_weights = next();
    else prompt.push_back(int32_t(std::atol(a.c_str())));
  }
  try {
    gptoss::Options opts;
    opts.num_threads = threads;
    opts.dense_weights = dense_weights;
    gptoss::Model model(path, opts);
    const gptoss::Config& c = model.config();
    std::fprintf(stderr, "loaded %s (%s layout): %d layers, %d experts, vocab %d\n", path.c_str(),
                 model.layout().c_str(), c.num_layers, c.num_experts, c.vocab_size);
    if (prompt_len > 0) {
      std::mt19937 rng(1234);
      for (int i = 0; i < prompt_len; ++i) prompt.push_back(int32_t(rng() % 199998));
    }
    if (prompt.empty()) prompt = {200006, 1428, 200008};  // <|start|>user<|message|>
    std::vector<float> logits(size_t(c.vocab_size));
    gptoss::SamplerOptions so;
    so.temperature = temp;
    so.seed = seed;
    gptoss::Sampler sampler(so);
    using clock = std::chrono::steady_clock;
    auto t0 = clock::now();
    model.prefill(prompt.data(), prompt.size(), logits.data());
    auto t1 = clock::now();
    std::vector<int32_t> out;
    for (int i = 0; i < n_new && model.position() < model.max_context(); ++i) {
      const int32_t t = sampler.sample(logits.data(), logits.size());
      out.push_back(t);
      std::printf("%d%c", t, i + 1 == n_new ? '\n' : ' ');
      std::fflush(stdout);
      if (i + 1 < n_new) model.decode(t, logits.data());
    }
    auto t2 = clock::now();
    const double pre = std::chrono::duration<double>(t1 - t0).count();
    const double dec = std::chrono::duration<double>(t2 - t1).count();
    std::fprintf(stderr, "prefill: %zu tokens in %.3f s (%.2f tok/s); decode: %d steps in %.3f s "
                         "(%.2f tok/s)\n", prompt.size(), pre, prompt.size() / pre,
                 n_new > 1 ? n_new - 1 : 0, dec, n_new > 1 ? (n_new - 1) / dec : 0.0);
  } catch (const gptoss::Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
