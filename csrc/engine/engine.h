// The model runtime, written once for every backend: weights (a mapped Checkpoint), the KV cache
// and the layer loop of SPEC.md section 2.
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "engine/backend.h"
#include "engine/checkpoint.h"
#include "gptoss/gptoss.h"

namespace gptoss {

std::unique_ptr<Backend> make_cpu_backend();

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
  // [n, vocab] with all_logits.
  void forward(const int32_t* tokens, int n, float* logits, bool all_logits, int seq = 0);
  // One token for each of n distinct sequences in one step (the weights are read once for all);
  // logits [n, vocab].
  void decode_batch(const int32_t* seqs, const int32_t* tokens, int n, float* logits);

 private:
  struct LayerCache {
    std::vector<float*> k, v;  // pages (or one ring)
    int ring = 0;
  };
  struct Sequence {
    std::vector<LayerCache> cache;
    int pos = 0;
  };
  // rows: n tokens; row i belongs to sequence seq_of[i] at position pos_of[i]. logit_rows lists
  // the rows whose logits are written, in order, to `logits`.
  void run(const int32_t* tokens, const int* seq_of, const int* pos_of, int n,
           const std::vector<int>& logit_rows, float* logits);
  void ensure_workspace(int n);
  void ensure_cache(Sequence& s, int upto);
  void free_cache(Sequence& s);
  Sequence& sequence(int seq);
  const Sequence& sequence(int seq) const;
  float* upload_f32(const Tensor& t);
  cpu::KVView kv_view(const Sequence& s, int layer) const;

  Checkpoint ck_;
  std::unique_ptr<Backend> be_;
  int max_context_ = 0;
  int levels_ = 2;

  struct LayerSmall {
    float *attn_norm, *q_b, *k_b, *v_b, *sinks, *out_b, *mlp_norm, *router_b, *w1_bias, *w2_bias;
  };
  std::vector<LayerSmall> small_;
  float* final_norm_ = nullptr;
  std::vector<void*> owned_;

  // KV cache: full layers in pages of kPage positions; sliding layers a ring of window + kChunk
  // slots (a step feeds at most kChunk tokens of one sequence)
  static constexpr int kPage = 1024;
  static constexpr int kChunk = 512;
  std::vector<std::unique_ptr<Sequence>> seqs_;  // null where freed
  std::vector<cpu::KVView> kvs_;
  std::vector<int> seq_of_, pos_of_;

  // workspace sized for the largest n seen
  int ws_n_ = 0;
  float *x_ = nullptr, *t_ = nullptr, *qkv_ = nullptr, *attn_ = nullptr, *y_ = nullptr,
        *glog_ = nullptr, *cos_ = nullptr, *sin_ = nullptr;
  std::vector<int32_t> experts_, qpos_;
  std::vector<float> weights_, cos_h_, sin_h_;
  std::vector<double> inv_freq_;
  double rope_m_ = 1.0;
};

}  // namespace gptoss
