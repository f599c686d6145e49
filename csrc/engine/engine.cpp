// The layer loop of SPEC.md section 2 over the Backend interface, the KV cache, and the public
// gptoss::Model / Sampler / generate API.
#include "engine/engine.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>

#include "common/rope.h"
#include "cpu/cpu_features.h"

namespace gptoss {

Engine::Engine(const std::string& path, const Options& opts, std::unique_ptr<Backend> backend)
    : ck_(path, opts.layout), be_(std::move(backend)) {
  cpu::check_simd_env();
  const Config& c = ck_.config;
  GPTOSS_CHECK(c.num_heads / c.num_kv_heads <= 64,
               "unsupported config: " << c.num_heads / c.num_kv_heads
                                      << " query heads per kv head (at most 64)");
  GPTOSS_CHECK(c.experts_per_token <= 16, "unsupported config: experts_per_token = "
                                              << c.experts_per_token << " (at most 16)");
  auto need_bf16 = [](const Tensor& t) {
    GPTOSS_CHECK(t.dtype == DType::BF16, t.file << ": tensor '" << t.name << "' is "
                                                << dtype_name(t.dtype)
                                                << "; the native engine needs bf16 matrices");
  };
  need_bf16(ck_.embedding);
  need_bf16(ck_.unembedding);
  for (auto& L : ck_.layers) {
    need_bf16(L.q_w);
    need_bf16(L.k_w);
    need_bf16(L.v_w);
    need_bf16(L.out_w);
    need_bf16(L.router_w);
  }
  GPTOSS_CHECK(opts.max_context >= 0, "max_context must be >= 0, got " << opts.max_context);
  max_context_ = opts.max_context > 0 ? std::min(opts.max_context, c.max_context) : c.max_context;
  if (opts.num_threads > 0) cpu::set_num_threads(opts.num_threads);
  GPTOSS_CHECK(opts.activation_levels == 1 || opts.activation_levels == 2,
               "activation_levels = " << opts.activation_levels << ": must be 1 or 2");
  levels_ = opts.activation_levels;
  be_->bind(ck_);
  small_.resize(ck_.layers.size());
  for (size_t l = 0; l < ck_.layers.size(); ++l) {
    const LayerTensors& L = ck_.layers[l];
    small_[l] = {upload_f32(L.attn_norm), upload_f32(L.q_b),      upload_f32(L.k_b),
                 upload_f32(L.v_b),       upload_f32(L.sinks),    upload_f32(L.out_b),
                 upload_f32(L.mlp_norm),  upload_f32(L.router_b), upload_f32(L.w1_bias),
                 upload_f32(L.w2_bias)};
  }
  final_norm_ = upload_f32(ck_.final_norm);
  yarn_frequencies(c.head_dim, c.rope_theta, c.rope_factor, c.rope_beta_fast, c.rope_beta_slow,
                   c.rope_original_context, c.rope_truncate, &inv_freq_, &rope_m_);
  new_sequence();
  ensure_workspace(1);
}

int Engine::new_sequence() {
  const Config& c = ck_.config;
  auto s = std::make_unique<Sequence>();
  s->cache.resize(ck_.layers.size());
  for (size_t l = 0; l < s->cache.size(); ++l) {
    if (!c.layer_sliding[l]) continue;
    LayerCache& lc = s->cache[l];
    lc.ring = c.sliding_window + kChunk;
    const size_t bytes = size_t(lc.ring) * c.kv_width() * sizeof(float);
    lc.k.push_back(static_cast<float*>(be_->alloc(bytes)));
    lc.v.push_back(static_cast<float*>(be_->alloc(bytes)));
  }
  for (size_t i = 0; i < seqs_.size(); ++i)
    if (!seqs_[i]) {
      seqs_[i] = std::move(s);
      return int(i);
    }
  seqs_.push_back(std::move(s));
  return int(seqs_.size() - 1);
}

void Engine::free_cache(Sequence& s) {
  for (auto& lc : s.cache) {
    for (float* p : lc.k) be_->release(p);
    for (float* p : lc.v) be_->release(p);
    lc.k.clear();
    lc.v.clear();
  }
}

void Engine::free_sequence(int seq) {
  GPTOSS_CHECK(seq != 0, "sequence 0 always exists; reset it instead");
  Sequence& s = sequence(seq);
  free_cache(s);
  seqs_[size_t(seq)].reset();
}

Engine::Sequence& Engine::sequence(int seq) {
  GPTOSS_CHECK(seq >= 0 && size_t(seq) < seqs_.size() && seqs_[size_t(seq)],
               "no sequence " << seq);
  return *seqs_[size_t(seq)];
}

const Engine::Sequence& Engine::sequence(int seq) const {
  GPTOSS_CHECK(seq >= 0 && size_t(seq) < seqs_.size() && seqs_[size_t(seq)],
               "no sequence " << seq);
  return *seqs_[size_t(seq)];
}

void Engine::reset(int seq) { sequence(seq).pos = 0; }
int Engine::position(int seq) const { return sequence(seq).pos; }

Engine::~Engine() {
  for (void* p : owned_) be_->release(p);
  for (auto& s : seqs_)
    if (s) free_cache(*s);
  for (float* p : {x_, t_, qkv_, attn_, y_, glog_, cos_, sin_})
    if (p) be_->release(p);
}

float* Engine::upload_f32(const Tensor& t) {
  std::vector<float> h = to_f32(t);
  float* d = static_cast<float*>(be_->alloc(h.size() * sizeof(float)));
  be_->from_host(d, h.data(), h.size() * sizeof(float));
  owned_.push_back(d);
  return d;
}

void Engine::ensure_workspace(int n) {
  if (n <= ws_n_) return;
  const Config& c = ck_.config;
  for (float* p : {x_, t_, qkv_, attn_, y_, glog_, cos_, sin_})
    if (p) be_->release(p);
  auto f = [&](size_t count) { return static_cast<float*>(be_->alloc(count * sizeof(float))); };
  const size_t N = size_t(n), H = size_t(c.hidden_size);
  x_ = f(N * H);
  t_ = f(N * H);
  qkv_ = f(N * size_t(c.q_width() + 2 * c.kv_width()));
  attn_ = f(N * size_t(c.q_width()));
  y_ = f(N * H);
  glog_ = f(N * size_t(c.num_experts));
  cos_ = f(N * size_t(c.head_dim / 2));
  sin_ = f(N * size_t(c.head_dim / 2));
  experts_.resize(N * size_t(c.experts_per_token));
  weights_.resize(N * size_t(c.experts_per_token));
  qpos_.resize(N);
  kvs_.resize(N);
  cos_h_.resize(N * size_t(c.head_dim / 2));
  sin_h_.resize(N * size_t(c.head_dim / 2));
  ws_n_ = n;
}

void Engine::ensure_cache(Sequence& s, int upto) {
  const Config& c = ck_.config;
  const size_t page_bytes = size_t(kPage) * c.kv_width() * sizeof(float);
  for (auto& lc : s.cache) {
    if (lc.ring) continue;
    while (int(lc.k.size()) * kPage < upto) {
      lc.k.push_back(static_cast<float*>(be_->alloc(page_bytes)));
      lc.v.push_back(static_cast<float*>(be_->alloc(page_bytes)));
    }
  }
}

cpu::KVView Engine::kv_view(const Sequence& s, int layer) const {
  const LayerCache& lc = s.cache[size_t(layer)];
  cpu::KVView v;
  v.k_pages = lc.k.data();
  v.v_pages = lc.v.data();
  v.page = kPage;
  v.ring = lc.ring;
  v.row = ck_.config.kv_width();
  return v;
}

void Engine::forward(const int32_t* tokens, int n, float* logits, bool all_logits, int seq) {
  const Config& c = ck_.config;
  Sequence& s = sequence(seq);
  GPTOSS_CHECK(n >= 1, "tokens is empty");
  for (int i = 0; i < n; ++i)
    GPTOSS_CHECK(tokens[i] >= 0 && tokens[i] < c.vocab_size,
                 "token id " << tokens[i] << " is out of range [0, " << c.vocab_size << ")");
  GPTOSS_CHECK(int64_t(s.pos) + n <= max_context_,
               "context limit: " << s.pos << " cached + " << n << " new tokens exceeds max_context "
                                 << max_context_);
  // Sliding layers keep a ring of window + kChunk slots: a chunk's keys are written before its
  // queries attend, and the extra kChunk slots keep every key the chunk's first query still needs.
  // Longer prompts go through in chunks of kChunk tokens.
  for (int st = 0; st < n; st += kChunk) {
    const int m = std::min(kChunk, n - st);
    const bool last = st + m == n;
    seq_of_.assign(size_t(m), seq);
    pos_of_.resize(size_t(m));
    for (int i = 0; i < m; ++i) pos_of_[size_t(i)] = s.pos + i;
    std::vector<int> rows;
    if (all_logits) {
      for (int i = 0; i < m; ++i) rows.push_back(i);
    } else if (last && logits) {
      rows.push_back(m - 1);
    }
    float* out = all_logits ? logits + size_t(st) * c.vocab_size : logits;
    run(tokens + st, seq_of_.data(), pos_of_.data(), m, rows, out);
    s.pos += m;
  }
}

void Engine::decode_batch(const int32_t* seqs, const int32_t* tokens, int n, float* logits) {
  const Config& c = ck_.config;
  GPTOSS_CHECK(n >= 1 && n <= kChunk, "decode_batch: between 1 and " << kChunk
                                                                      << " sequences, got " << n);
  for (int i = 0; i < n; ++i) {
    const Sequence& s = sequence(seqs[i]);
    for (int j = 0; j < i; ++j)
      GPTOSS_CHECK(seqs[j] != seqs[i], "decode_batch: sequence " << seqs[i] << " appears twice");
    GPTOSS_CHECK(tokens[i] >= 0 && tokens[i] < c.vocab_size,
                 "token id " << tokens[i] << " is out of range [0, " << c.vocab_size << ")");
    GPTOSS_CHECK(s.pos + 1 <= max_context_, "context limit: sequence " << seqs[i] << " is full ("
                                                                        << max_context_ << ")");
  }
  seq_of_.assign(seqs, seqs + n);
  pos_of_.resize(size_t(n));
  std::vector<int> rows(static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) {
    pos_of_[size_t(i)] = sequence(seqs[i]).pos;
    rows[size_t(i)] = i;
  }
  run(tokens, seq_of_.data(), pos_of_.data(), n, rows, logits);
  for (int i = 0; i < n; ++i) sequence(seqs[i]).pos += 1;
}

void Engine::run(const int32_t* tokens, const int* seq_of, const int* pos_of, int n,
                 const std::vector<int>& logit_rows, float* logits) {
  const Config& c = ck_.config;
  ensure_workspace(n);
  for (int i = 0; i < n; ++i) ensure_cache(sequence(seq_of[i]), pos_of[i] + 1);
  const int H = c.hidden_size, d = c.head_dim, half = d / 2;
  const int qw = c.q_width(), kvw = c.kv_width(), qkvw = qw + 2 * kvw;
  const int K = c.experts_per_token;
  for (int i = 0; i < n; ++i) {
    const int p = pos_of[i];
    qpos_[size_t(i)] = p;
    for (int j = 0; j < half; ++j) {
      const double a = double(p) * inv_freq_[size_t(j)];
      cos_h_[size_t(i) * half + j] = float(std::cos(a) * rope_m_);
      sin_h_[size_t(i) * half + j] = float(std::sin(a) * rope_m_);
    }
  }
  be_->from_host(cos_, cos_h_.data(), size_t(n) * half * sizeof(float));
  be_->from_host(sin_, sin_h_.data(), size_t(n) * half * sizeof(float));
  be_->embed(ck_.embedding, tokens, n, x_);
  for (size_t l = 0; l < ck_.layers.size(); ++l) {
    const LayerTensors& L = ck_.layers[l];
    const LayerSmall& S = small_[l];
    // attention block
    be_->rmsnorm(x_, n, H, S.attn_norm, c.rms_norm_eps, t_);
    be_->linear(t_, n, L.q_w, S.q_b, qkv_, qkvw);
    be_->linear(t_, n, L.k_w, S.k_b, qkv_ + qw, qkvw);
    be_->linear(t_, n, L.v_w, S.v_b, qkv_ + qw + kvw, qkvw);
    be_->rope(qkv_, n, c.num_heads + c.num_kv_heads, d, qkvw, cos_, sin_);
    for (int i = 0; i < n; ++i) {
      Sequence& sq = sequence(seq_of[i]);
      const LayerCache& lc = sq.cache[l];
      const int p = pos_of[i];
      float* kd = lc.ring ? lc.k[0] + size_t(p % lc.ring) * kvw
                          : lc.k[size_t(p / kPage)] + size_t(p % kPage) * kvw;
      float* vd = lc.ring ? lc.v[0] + size_t(p % lc.ring) * kvw
                          : lc.v[size_t(p / kPage)] + size_t(p % kPage) * kvw;
      be_->copy_rows(kd, kvw, qkv_ + size_t(i) * qkvw + qw, qkvw, 1, kvw);
      be_->copy_rows(vd, kvw, qkv_ + size_t(i) * qkvw + qw + kvw, qkvw, 1, kvw);
      kvs_[size_t(i)] = kv_view(sq, int(l));
    }
    be_->attention(qkv_, n, qkvw, qpos_.data(), kvs_.data(), c.num_heads, c.num_kv_heads, d,
                   c.layer_sliding[l] ? c.sliding_window : 0, S.sinks, attn_);
    be_->linear(attn_, n, L.out_w, S.out_b, y_, H);
    be_->add(x_, y_, size_t(n) * H);
    // MoE block
    be_->rmsnorm(x_, n, H, S.mlp_norm, c.rms_norm_eps, t_);
    be_->linear(t_, n, L.router_w, S.router_b, glog_, c.num_experts);
    be_->route(glog_, n, c.num_experts, K, experts_.data(), weights_.data());
    be_->moe(L, S.w1_bias, S.w2_bias, t_, n, H, c.intermediate_size, K, experts_.data(),
             weights_.data(), c.swiglu_alpha, c.swiglu_limit, levels_, y_);
    be_->add(x_, y_, size_t(n) * H);
  }
  if (logit_rows.empty() || !logits) return;
  // final norm and unembedding for the requested rows only (gathered contiguously)
  const int m = int(logit_rows.size());
  for (int r = 0; r < m; ++r)
    if (logit_rows[size_t(r)] != r)
      be_->copy_rows(x_ + size_t(r) * H, H, x_ + size_t(logit_rows[size_t(r)]) * H, H, 1, H);
  be_->rmsnorm(x_, m, H, final_norm_, c.rms_norm_eps, t_);
  be_->linear(t_, m, ck_.unembedding, nullptr, logits, c.vocab_size);
}

// ------------------------------------------------------------------------------- public API
Model::Model(const std::string& dir, const Options& options)
    : impl_(new Engine(dir, options, make_cpu_backend())) {}
Model::~Model() = default;
Model::Model(Model&&) noexcept = default;
Model& Model::operator=(Model&&) noexcept = default;
const Config& Model::config() const { return impl_->config(); }
std::string Model::layout() const { return impl_->checkpoint().layout; }
std::string Model::note() const { return impl_->checkpoint().note; }
int Model::max_context() const { return impl_->max_context(); }
int Model::position() const { return impl_->position(); }
void Model::reset() { impl_->reset(); }
Engine& Model::engine() { return *impl_; }

void Model::prefill(const int32_t* tokens, size_t n, float* logits, bool all_logits) {
  prefill_sequence(0, tokens, n, logits, all_logits);
}

void Model::decode(int32_t token, float* logits) { impl_->forward(&token, 1, logits, false); }
int Model::add_sequence() { return impl_->new_sequence(); }
void Model::remove_sequence(int seq) { impl_->free_sequence(seq); }
void Model::reset_sequence(int seq) { impl_->reset(seq); }
int Model::sequence_position(int seq) const { return impl_->position(seq); }
void Model::prefill_sequence(int seq, const int32_t* tokens, size_t n, float* logits,
                             bool all_logits) {
  GPTOSS_CHECK(n <= size_t(1) << 30, "prefill: too many tokens (" << n << ")");
  impl_->forward(tokens, int(n), logits, all_logits, seq);
}
void Model::decode_batch(const int32_t* seqs, const int32_t* tokens, size_t n, float* logits) {
  GPTOSS_CHECK(n <= size_t(1) << 20, "decode_batch: too many sequences (" << n << ")");
  impl_->decode_batch(seqs, tokens, int(n), logits);
}

Sampler::Sampler(const SamplerOptions& o) : o_(o), rng_(o.seed) {
  GPTOSS_CHECK(o.temperature >= 0 && std::isfinite(o.temperature),
               "temperature = " << o.temperature << ": must be >= 0");
  GPTOSS_CHECK(o.top_p > 0 && o.top_p <= 1, "top_p = " << o.top_p << ": must be in (0, 1]");
  GPTOSS_CHECK(o.top_k >= 0, "top_k = " << o.top_k << ": must be >= 0");
}

int32_t Sampler::sample(const float* logits, size_t vocab) {
  GPTOSS_CHECK(vocab > 0, "sample: empty logits");
  for (size_t i = 0; i < vocab; ++i)
    GPTOSS_CHECK(std::isfinite(logits[i]), "sample: logit " << i << " is not finite");
  if (o_.temperature == 0.0f) return int32_t(std::max_element(logits, logits + vocab) - logits);
  buf_.resize(vocab);
  for (size_t i = 0; i < vocab; ++i) buf_[i] = {logits[i] / o_.temperature, int32_t(i)};
  auto cmp = [](const std::pair<float, int32_t>& a, const std::pair<float, int32_t>& b) {
    return a.first > b.first || (a.first == b.first && a.second < b.second);
  };
  size_t keep = vocab;
  if (o_.top_k > 0 && size_t(o_.top_k) < vocab) {
    keep = size_t(o_.top_k);
    std::partial_sort(buf_.begin(), buf_.begin() + long(keep), buf_.end(), cmp);
  } else {
    std::sort(buf_.begin(), buf_.end(), cmp);
  }
  const float mx = buf_[0].first;
  std::vector<double> p(keep);
  double sum = 0;
  for (size_t i = 0; i < keep; ++i) sum += (p[i] = std::exp(double(buf_[i].first - mx)));
  if (o_.top_p < 1.0f) {
    double c = 0;
    size_t j = 0;
    for (; j < keep; ++j) {
      c += p[j] / sum;
      if (c >= o_.top_p) break;
    }
    keep = std::min(keep, j + 1);
    sum = std::accumulate(p.begin(), p.begin() + long(keep), 0.0);
  }
  std::uniform_real_distribution<double> u(0.0, sum);
  double r = u(rng_), c = 0;
  for (size_t i = 0; i < keep; ++i) {
    c += p[i];
    if (r < c) return buf_[i].second;
  }
  return buf_[keep - 1].second;
}

std::vector<int32_t> generate(Model& model, const std::vector<int32_t>& prompt, int max_new_tokens,
                              Sampler& sampler, const std::vector<int32_t>& stop_tokens,
                              std::string* stop_reason) {
  GPTOSS_CHECK(!prompt.empty(), "generate: the prompt is empty");
  GPTOSS_CHECK(int64_t(prompt.size()) < model.max_context(),
               "generate: a prompt of " << prompt.size() << " tokens leaves no room in the context of "
                                        << model.max_context());
  std::vector<float> logits(size_t(model.config().vocab_size));
  std::vector<int32_t> out;
  model.reset();
  std::string reason = "max_new_tokens";
  if (max_new_tokens > 0) {
    model.prefill(prompt.data(), prompt.size(), logits.data());
    for (int i = 0; i < max_new_tokens; ++i) {
      const int32_t t = sampler.sample(logits.data(), logits.size());
      if (std::find(stop_tokens.begin(), stop_tokens.end(), t) != stop_tokens.end()) {
        reason = "stop_token";
        break;
      }
      out.push_back(t);
      if (i + 1 == max_new_tokens) break;
      if (model.position() >= model.max_context()) {
        reason = "context_limit";
        break;
      }
      model.decode(t, logits.data());
    }
  }
  if (stop_reason) *stop_reason = reason;
  return out;
}

}  // namespace gptoss
