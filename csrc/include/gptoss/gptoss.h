// gptoss: the public C++ API. Load a gpt-oss checkpoint (either layout), run prefill/decode,
// sample. Token ids in, logits and token ids out; no tokenizer and no Python here, so a C++
// program links the engine (find_package(gptoss) -> gptoss::gptoss) without an interpreter.
//
//   gptoss::Model model("/models/gpt-oss-20b");
//   std::vector<float> logits(model.config().vocab_size);
//   model.prefill(prompt.data(), prompt.size(), logits.data());
//   gptoss::Sampler sampler({/*temperature=*/0.0f});
//   int32_t next = sampler.sample(logits.data(), logits.size());
//   model.decode(next, logits.data());
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "gptoss/error.h"
#include "gptoss/sample_params.h"

namespace gptoss {

// The model's shape and constants (python/gptoss/config.py), read from config.json.
struct Config {
  int num_layers = 24;
  int hidden_size = 2880;
  int num_heads = 64;
  int num_kv_heads = 8;
  int head_dim = 64;
  int num_experts = 32;
  int experts_per_token = 4;
  int intermediate_size = 2880;
  int vocab_size = 201088;
  int sliding_window = 128;
  std::vector<bool> layer_sliding;  // per layer; default: even layers slide
  double rope_theta = 150000.0;
  double rope_factor = 32.0;
  double rope_beta_fast = 32.0;
  double rope_beta_slow = 1.0;
  int rope_original_context = 4096;
  bool rope_truncate = false;
  float swiglu_limit = 7.0f;
  float swiglu_alpha = 1.702f;
  float rms_norm_eps = 1e-5f;
  int max_context = 131072;

  int q_width() const { return num_heads * head_dim; }
  int kv_width() const { return num_kv_heads * head_dim; }
  // Parses either the Hugging Face or the original/ config.json; throws Error naming the key.
  static Config from_json_file(const std::string& path);
  void validate(const std::string& source) const;
};

struct Options {
  std::string device = "cpu";  // "cpu" or "cuda" (a GPU, or the host emulation in an emulated build)
  std::string layout;       // "" (detect; a directory with both uses the HF root), "hf", "original"
  int max_context = 0;      // 0: the model's own (131072); else at most that many positions
  int num_threads = 0;      // 0: all cores (OpenMP default)
  // How the CPU backend quantizes activations for the MXFP4 expert products: 2 (default) keeps
  // float32-class accuracy (error ~2^-16 of each 32-block's maximum); 1 is plain int8 per block
  // (error up to 1/254 of the maximum, as other CPU engines do), faster where compute-bound;
  // at the avx512bf16 level 1 also takes the bf16 dense products' activations as bf16
  // (vdpbf16ps; error below 2^-9 of each value).
  int activation_levels = 2;
  // Benchmarking only: device 'cuda' makes every matrix it would copy from the checkpoint
  // (embedding, unembedding, projections, router, MXFP4 experts) as seeded random values in
  // device memory instead, never reading them from the files. Needed to run a hollow checkpoint
  // (gptoss.testing, hollow=True: those matrices are holes), which only this accepts.
  bool random_device_weights = false;
  // Prefix caching: full KV pages (256 positions) of finished and running sequences are kept,
  // keyed by their tokens and everything before them, and a new sequence's prefill starts from
  // its longest cached prefix. At most this many GB of cached pages that no sequence holds (LRU
  // eviction); 0 turns caching off. Each page also keeps a snapshot of the sliding-window
  // layers' last 128 positions (half the page's own size for gpt-oss). A finished sequence's
  // partial last page (16 positions or more) is kept too (a "tail", one or two page ids within
  // the same budget): a prompt agreeing with it up to any point inside resumes from a copy.
  double prefix_cache_gb = 2.0;
  // The CPU backend's MXFP4 experts at every SIMD level (AVX2, AVX-512, AMX), whose kernels
  // want another layout than the checkpoint's: "auto" repacks them once into a cache file under
  // cache_dir (keyed by a fingerprint of the checkpoint; written atomically, checked before use)
  // and maps it read-only like the checkpoint, so later loads are as fast and the pages stay
  // reclaimable and shared; where it cannot be written they are repacked into memory (and
  // weights_note() says why). "memory": always into memory; "off": keep the checkpoint layout
  // (the slower kernels). The plain C++ level reads the checkpoint's layout directly.
  std::string repack = "auto";
  // Where repacked weights are cached: "" is $GPTOSS_CACHE, else $XDG_CACHE_HOME/gptoss, else
  // ~/.cache/gptoss (files under weights/).
  std::string cache_dir;
  // Device 'cuda': every kernel takes its per-row path for any number of rows (float32 GEMVs
  // for the dense and expert products, one-warp-per-row attention), so a sequence's logits are
  // bit-identical whether its prompt was prefilled at once, in chunks, from a cached prefix, or
  // decoded in a batch. It costs speed (prefill reads the weights once per 8 rows instead of
  // per tile; long-context decode runs one split per row), so it is off by default. Device
  // 'cpu': batch-invariant anyway at every SIMD level but amx, where by default an expert's 8
  // tokens or more take the AMX-BF16 tiles and fewer the exact integer code; true keeps the
  // integer code for any number (slower prefill there).
  bool batch_invariant = false;
  // How the KV cache holds keys and values (after RoPE): "auto" is float32 on the CPU (4 KiB
  // per position per layer for gpt-oss) and bf16 on CUDA; "bf16" (2 KiB) halves the cache and
  // the bytes a long-context step reads, rounding K and V to bf16 (relative error <= 2^-9,
  // attention itself stays float32); "float32" is the CPU's only.
  std::string kv_dtype = "auto";
  // The dense matrices' storage on the CPU backend: "bf16" (default) uses the checkpoint's bf16
  // tensors in place; "int8" quantizes QKV, the output projection, the router and the
  // unembedding once at load into int8 codes per row and 32-block with a float32 scale
  // (csrc/cpu/dense_q8.cpp; an error up to 1/254 of each block's largest weight), kept in the
  // weight cache like the repacked experts (repack, cache_dir), so a decode step reads about
  // 1.3 GB of dense weights instead of 2.4 GB (gpt-oss-20b). An accuracy trade for speed where
  // decode is bound by memory; the embedding stays bf16. Device 'cuda' has only "bf16".
  std::string dense_weights = "bf16";
};

struct PrefixCacheStats {
  int64_t lookups = 0;      // prefills from position 0 that looked in the cache
  int64_t hit_tokens = 0;   // prompt positions taken from the cache
  int64_t miss_tokens = 0;  // prompt positions computed by those prefills
  int64_t evictions = 0;    // pages dropped from the cache
  int cached_pages = 0;     // pages in the cache (held by a sequence or idle)
  int idle_pages = 0;       // cached pages no sequence holds
  int tails = 0;            // cached partial last pages of finished sequences
  int tail_pages = 0;       // page ids those hold (the page, and ring snapshots past its first 128)
  size_t page_bytes = 0;    // KV bytes per page, snapshot included
};

class Engine;  // the runtime behind Model (csrc/engine/)

class Model {
 public:
  explicit Model(const std::string& checkpoint_dir, const Options& options = Options());
  ~Model();
  Model(Model&&) noexcept;
  Model& operator=(Model&&) noexcept;

  const Config& config() const;
  std::string layout() const;       // "hf" or "original"
  std::string note() const;         // e.g. which layout was picked from a directory holding both
  std::string weights_note() const; // how the backend holds the weights (repacked, mapped from where)
  int max_context() const;
  int position() const;             // tokens cached so far
  void reset();                     // start a new sequence

  // Feed n tokens after what is cached. logits: [vocab] for the last token, or [n, vocab] when
  // all_logits is true. Throws Error on ids out of range or when the context would overflow.
  void prefill(const int32_t* tokens, size_t n, float* logits, bool all_logits = false);
  void decode(int32_t token, float* logits);  // logits: [vocab]

  // Several sequences at once, each with its own KV cache; sequence 0 is the one the calls above
  // use. decode_batch feeds one token to each of n distinct sequences in a single step, so the
  // weights are read once for all of them (logits: [n, vocab]).
  int add_sequence();
  void remove_sequence(int seq);
  void reset_sequence(int seq);
  int sequence_position(int seq) const;
  void prefill_sequence(int seq, const int32_t* tokens, size_t n, float* logits,
                        bool all_logits = false);
  void decode_batch(const int32_t* seqs, const int32_t* tokens, size_t n, float* logits);
  // The same step with sampling on the device: only token ids come back (out [n]); params [n]
  // (gptoss/sample_params.h: the same seed and counter give the same token on every device).
  void decode_batch_sample(const int32_t* seqs, const int32_t* tokens, size_t n,
                           const SampleParams* params, int32_t* out);
  std::string device() const;       // "cpu", "cuda" or "cuda (emulated)"
  // Positions of a sequence taken from the prefix cache by its last prefill from position 0
  // (only prefills that want the last token's logits, not all, look in the cache).
  int cached_tokens(int seq = 0) const;
  // Start sequence seq (at position 0) from the longest cached prefix of tokens[0, n - 1) and
  // return its length P; then feed tokens[P, n) with prefill_sequence (in chunks if wanted).
  int start_from_cache(int seq, const int32_t* tokens, size_t n);
  PrefixCacheStats prefix_cache_stats() const;

  Engine& engine();

 private:
  std::unique_ptr<Engine> impl_;
};

struct SamplerOptions {
  float temperature = 1.0f;  // 0: greedy
  float top_p = 1.0f;        // nucleus; 1: off
  int top_k = 0;             // 0: off
  uint64_t seed = 0;
};

class Sampler {
 public:
  explicit Sampler(const SamplerOptions& o = SamplerOptions());
  int32_t sample(const float* logits, size_t vocab);

 private:
  SamplerOptions o_;
  std::mt19937_64 rng_;
  std::vector<std::pair<float, int32_t>> buf_;
};

// Generate up to max_new_tokens after prompt; stops at any of stop_tokens (not included) or at the
// context limit. Returns the new tokens; *stop_reason (if given) is "stop_token",
// "max_new_tokens" or "context_limit".
std::vector<int32_t> generate(Model& model, const std::vector<int32_t>& prompt, int max_new_tokens,
                              Sampler& sampler, const std::vector<int32_t>& stop_tokens,
                              std::string* stop_reason = nullptr);

}  // namespace gptoss
