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
  int position() const { return pos_; }
  void reset() { pos_ = 0; }

  // Feed n tokens at the current position. logits: [vocab] for the last token, or [n, vocab].
  void forward(const int32_t* tokens, int n, float* logits, bool all_logits);

 private:
  void ensure_workspace(int n);
  void ensure_cache(int upto);
  float* upload_f32(const Tensor& t);
  cpu::KVView kv_view(int layer);

  Checkpoint ck_;
  std::unique_ptr<Backend> be_;
  int max_context_ = 0;
  int levels_ = 2;
  int pos_ = 0;

  struct LayerSmall {
    float *attn_norm, *q_b, *k_b, *v_b, *sinks, *out_b, *mlp_norm, *router_b, *w1_bias, *w2_bias;
  };
  std::vector<LayerSmall> small_;
  float* final_norm_ = nullptr;
  std::vector<void*> owned_;

  // KV cache: full layers in pages of kPage positions; sliding layers a ring of window + kChunk
  // slots (forward() feeds at most kChunk tokens at a time)
  static constexpr int kPage = 1024;
  static constexpr int kChunk = 512;
  struct LayerCache {
    std::vector<float*> k, v;  // pages (or one ring)
    int ring = 0;
  };
  std::vector<LayerCache> cache_;

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
