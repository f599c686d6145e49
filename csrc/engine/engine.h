// The model runtime, written once for every backend: weights (a mapped Checkpoint), sequences with
// their KV cache bookkeeping (integers only: slots and page ids; the storage is the backend's), and
// the layer loop of backends/numpy.py over the Backend contract.
#pragma once
#include <cstdint>
#include <memory>
#include <set>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "engine/backend.h"
#include "engine/checkpoint.h"
#include "gptoss/gptoss.h"

namespace gptoss {

// repack and cache_dir as in Options ("off" and "" where the caller has no checkpoint to bind).
// kv_dtype as Options::kv_dtype ("auto" is float32 here).
// batch_invariant as Options::batch_invariant (at the amx level: the experts' exact integer code
// for any number of tokens instead of the AMX-BF16 tiles). dense_weights as Options::dense_weights.
std::unique_ptr<Backend> make_cpu_backend(int activation_levels, const std::string& repack = "off",
                                          const std::string& cache_dir = "",
                                          const std::string& kv_dtype = "auto",
                                          bool batch_invariant = false,
                                          const std::string& dense_weights = "bf16");
// Repacks one layer's experts into memory for the AVX2 kernels (the single-kernel bindings).
void cpu_backend_repack_in_memory(Backend& be, const LayerTensors& L);
// The CUDA backend (on the GPU, or on the host under GPTOSS_CUDA_EMULATE); throws where the build
// has no CUDA.
std::unique_ptr<Backend> make_cuda_backend(bool batch_invariant);
bool cuda_backend_compiled();

class Engine {
 public:
  Engine(const std::string& path, const Options& opts, std::unique_ptr<Backend> backend);
  ~Engine();

  const Config& config() const { return ck_.config; }
  const Checkpoint& checkpoint() const { return ck_; }
  Backend& backend() { return *be_; }
  int max_context() const { return max_context_; }

  // Sequences: each has its own KV cache and position. Sequence 0 always exists.
  int new_sequence();
  void free_sequence(int seq);
  void reset(int seq = 0);
  int position(int seq = 0) const;

  // Feed n tokens to sequence `seq` at its position. logits: [vocab] for the last token, or
  // [n, vocab] with all_logits (may be null: no logits).
  void forward(const int32_t* tokens, int n, float* logits, bool all_logits, int seq = 0);
  // One token for each of n distinct sequences in one step (the weights are read once for all);
  // logits [n, vocab].
  void decode_batch(const int32_t* seqs, const int32_t* tokens, int n, float* logits);
  // The same step, sampling on the backend: only the n token ids come back (out [n]); params [n].
  void decode_batch_sample(const int32_t* seqs, const int32_t* tokens, int n,
                           const SampleRow* params, int32_t* out, float* logits = nullptr);
  // Pages of the paged (full-attention) layers in use / allocated, for tests and reports.
  int pages_in_use() const;
  int pages_allocated() const { return pages_total_; }
  // Positions of sequence `seq` taken from the prefix cache by its last prefill from position 0.
  int cached_tokens(int seq) const;
  // Start sequence `seq` (at position 0) from the longest cached prefix of tokens[0, n - 1):
  // returns the positions taken, after which the caller feeds tokens[P, n) (in chunks if it
  // likes). 0 when caching is off or nothing matches.
  int start_from_cache(int seq, const int32_t* tokens, int n);
  PrefixCacheStats prefix_cache_stats() const;

  static constexpr int kPage = 256;   // positions per KV page (full-attention layers)
  static constexpr int kChunk = 512;  // a step feeds at most this many tokens of one sequence

 private:
  struct Sequence {
    int slot = 0;
    int pos = 0;
    std::vector<int32_t> pages;
    std::vector<int32_t> tokens;   // every token fed (prefix caching)
    std::vector<uint64_t> keys;    // the cache key of each full page, in order
    int cached = 0;                // positions its last prefill took from the cache
  };
  // A full page in the prefix cache: its key chains the keys of the pages before it with its own
  // tokens; the tokens and the parent key are kept so a hash collision can never share a page.
  struct CachedPage {
    uint64_t parent = 0;
    std::vector<int32_t> tokens;
    int32_t page = 0;
  };
  // The partial last page of a finished sequence ("tail", kept under its page id): the page
  // itself (never shared: a sequence continuing it gets a copy) and the ring layers' positions
  // past the last full page, whose first `window` rows sit in the page's own snapshot rows and
  // the rest in `aux` page ids'. All the sequence's tokens are kept so a hash collision can never
  // share it.
  struct Tail {
    uint64_t parent = 0;          // key of the last full page before it (0: none)
    std::vector<int32_t> tokens;  // every position's token, the full pages' included
    std::vector<int32_t> aux;
  };
  // rows: n tokens; row i belongs to sequence seq_of[i] at position pos_of[i]. logit_rows lists
  // the rows whose logits (or, with sample, sampled tokens) are written, in order.
  void run(const int32_t* tokens, const int* seq_of, const int* pos_of, int n,
           const std::vector<int>& logit_rows, float* logits, const SampleRow* sample,
           int32_t* tokens_out, bool graph);
  void ensure_workspace(int n);
  void ensure_pages(Sequence& s, int upto);
  void size_page_arrays();  // page_ref_, page_key_, page_idle_since_: one entry per page id
  // prefix caching: reuse the longest cached prefix of tokens[0, n - 1) for a sequence at 0
  // (returns the positions reused); cache the pages a step completed; give a sequence's pages back
  int reuse_prefix(Sequence& s, const int32_t* tokens, int n);
  void cache_full_pages(Sequence& s, int old_pos);
  void cache_tail(Sequence& s);
  void release_pages(Sequence& s);
  void unref_page(int32_t p);
  void make_idle(int32_t p);
  void evict_idle();
  void drop_tail(int32_t page);
  int32_t take_page(bool* grew);  // a free page id (or a new one: *grew), not yet reserved
  void reserve_taken(bool grew);  // after take_page: new page ids reserved on the backend
  void tail_snapshots(int slot, int first, int32_t page, const Tail& t, bool save);
  static uint64_t page_key(uint64_t parent, const int32_t* tokens);
  Sequence& sequence(int seq);
  const Sequence& sequence(int seq) const;
  float* upload_f32(const Tensor& t);

  Checkpoint ck_;
  std::unique_ptr<Backend> be_;
  int max_context_ = 0;

  struct LayerSmall {
    float *attn_norm, *q_b, *k_b, *v_b, *sinks, *out_b, *mlp_norm, *router_b, *w1_bias, *w2_bias;
  };
  std::vector<LayerSmall> small_;
  float* final_norm_ = nullptr;
  std::vector<void*> owned_;

  std::vector<std::unique_ptr<Sequence>> seqs_;  // null where freed
  std::vector<int32_t> free_pages_;
  std::vector<int32_t> free_slots_;
  int pages_total_ = 0, slots_total_ = 0, max_pages_ = 0;
  bool any_paged_ = false;  // any full-attention layer (else no pages are ever needed)
  std::vector<int32_t> page_table_;  // [slots_total_, max_pages_]
  // prefix cache (Options::prefix_cache_gb; off when 0 or without full-attention layers)
  bool prefix_on_ = false;
  size_t cache_max_idle_ = 0;                      // cached pages no sequence holds, at most
  size_t page_bytes_ = 0;                          // KV bytes of one page with its snapshot
  std::unordered_map<uint64_t, CachedPage> cache_;  // by key
  std::vector<int32_t> page_ref_;                  // [pages]: sequences holding each page
  std::vector<uint64_t> page_key_;                 // [pages]: its cache key, 0 if not cached
  std::vector<uint64_t> page_idle_since_;          // [pages]: its place in idle_
  std::set<std::pair<uint64_t, int32_t>> idle_;    // cached pages no sequence holds, LRU first
                                                   // (and tails, by their page)
  std::unordered_map<int32_t, Tail> tails_;         // by the tail's page id
  std::unordered_multimap<uint64_t, int32_t> tails_by_parent_;
  int tail_aux_ = 0;                               // aux page ids all tails hold
  static constexpr int kMinTail = 16;              // shorter partial pages are not kept
  uint64_t clock_ = 0;
  PrefixCacheStats stats_;
  std::vector<int32_t> step_tokens_, step_pos_, step_slot_, step_logit_rows_;

  // workspace sized for the largest n seen
  int ws_n_ = 0;
  float *x_ = nullptr, *t_ = nullptr, *qkv_ = nullptr, *attn_ = nullptr, *y_ = nullptr,
        *glog_ = nullptr, *weights_ = nullptr, *lg_rows_ = nullptr, *logits_ = nullptr;
  int32_t *experts_ = nullptr, *sampled_ = nullptr;
  static constexpr int kLogitChunk = 64;  // logits computed this many rows at a time
};

}  // namespace gptoss
