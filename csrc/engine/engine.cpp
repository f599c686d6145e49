// The layer loop of backends/numpy.py over the Backend contract, sequence and KV page
// bookkeeping, and the public gptoss::Model / Sampler / generate API.
#include "engine/engine.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>

#include "common/rope.h"
#include "cpu/cpu_features.h"

namespace gptoss {

namespace {
// The planning bound for attention, rounded up so that decode graphs are captured once per
// bucket and not once per position.
int len_bucket(int len) {
  int b = 256;
  while (b < len) b *= 2;
  return b;
}
}  // namespace

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
  if (opts.random_device_weights) {
    be_->bind_random(ck_);
  } else {
    GPTOSS_CHECK(ck_.hollow_file.empty(),
                 ck_.hollow_file << ": a hollow checkpoint (its matrices are holes, made for "
                                    "benchmarks): load it with random_device_weights on device "
                                    "'cuda'");
    be_->bind(ck_);
  }
  small_.resize(ck_.layers.size());
  for (size_t l = 0; l < ck_.layers.size(); ++l) {
    const LayerTensors& L = ck_.layers[l];
    small_[l] = {upload_f32(L.attn_norm), upload_f32(L.q_b),      upload_f32(L.k_b),
                 upload_f32(L.v_b),       upload_f32(L.sinks),    upload_f32(L.out_b),
                 upload_f32(L.mlp_norm),  upload_f32(L.router_b), upload_f32(L.w1_bias),
                 upload_f32(L.w2_bias)};
  }
  final_norm_ = upload_f32(ck_.final_norm);
  // RoPE table for every position the context allows, in double as the NumPy engine does
  std::vector<double> inv_freq;
  double m = 1.0;
  yarn_frequencies(c.head_dim, c.rope_theta, c.rope_factor, c.rope_beta_fast, c.rope_beta_slow,
                   c.rope_original_context, c.rope_truncate, &inv_freq, &m);
  const int half = c.head_dim / 2;
  {
    std::vector<float> cs(size_t(max_context_) * half), sn(size_t(max_context_) * half);
    for (int p = 0; p < max_context_; ++p)
      for (int j = 0; j < half; ++j) {
        const double a = double(p) * inv_freq[size_t(j)];
        cs[size_t(p) * half + j] = float(std::cos(a) * m);
        sn[size_t(p) * half + j] = float(std::sin(a) * m);
      }
    be_->rope_table(cs.data(), sn.data(), max_context_, half);
  }
  KVGeometry g;
  g.layers = int(ck_.layers.size());
  for (int l = 0; l < g.layers; ++l) g.ring_layer.push_back(bool(c.layer_sliding[size_t(l)]));
  for (bool r : g.ring_layer) any_paged_ |= !r;
  g.kv_width = c.kv_width();
  g.kv_heads = c.num_kv_heads;
  g.page = kPage;
  g.ring = c.sliding_window + kChunk;
  GPTOSS_CHECK(opts.prefix_cache_gb >= 0 && std::isfinite(opts.prefix_cache_gb),
               "prefix_cache_gb = " << opts.prefix_cache_gb << ": must be >= 0 (0: off)");
  // resuming at a page boundary needs the window's positions before it: one page's worth at most
  prefix_on_ = opts.prefix_cache_gb > 0 && any_paged_ && c.sliding_window <= kPage;
  g.snap = prefix_on_ ? c.sliding_window : 0;
  for (int l = 0; l < g.layers; ++l)
    page_bytes_ += size_t(g.ring_layer[size_t(l)] ? g.snap : kPage) * size_t(g.kv_width) * 2 *
                   size_t(be_->kv_elem_bytes());
  if (prefix_on_)
    cache_max_idle_ = size_t(opts.prefix_cache_gb * 1e9 / double(std::max<size_t>(page_bytes_, 1)));
  stats_.page_bytes = page_bytes_;
  be_->kv_init(g);
  max_pages_ = (max_context_ + kPage - 1) / kPage;
  new_sequence();
  ensure_workspace(1);
}

int Engine::new_sequence() {
  auto s = std::make_unique<Sequence>();
  if (!free_slots_.empty()) {
    s->slot = free_slots_.back();
    free_slots_.pop_back();
  } else {
    s->slot = slots_total_++;
    page_table_.resize(size_t(slots_total_) * max_pages_, 0);
    be_->kv_reserve(pages_total_, slots_total_);
  }
  for (size_t i = 0; i < seqs_.size(); ++i)
    if (!seqs_[i]) {
      seqs_[i] = std::move(s);
      return int(i);
    }
  seqs_.push_back(std::move(s));
  return int(seqs_.size() - 1);
}

void Engine::free_sequence(int seq) {
  GPTOSS_CHECK(seq != 0, "sequence 0 always exists; reset it instead");
  Sequence& s = sequence(seq);
  release_pages(s);
  free_slots_.push_back(s.slot);
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

void Engine::reset(int seq) {
  Sequence& s = sequence(seq);
  release_pages(s);
  s.pos = 0;
  s.cached = 0;
}

// ------------------------------------------------------------------------------ prefix cache
// A full page is cached under a key chaining the key of the page before it with its 256 tokens,
// so equal keys mean equal prefixes (the tokens and parent key are compared too: a collision
// never shares a page). Pages are reference-counted by the sequences holding them; a cached page
// that no sequence holds is idle and evictable (LRU, at most cache_max_idle_ of them). With the
// page goes a snapshot of the ring layers' last `window` positions before its end, taken when
// the page fills, which is what a sequence resuming at that boundary needs of them.
uint64_t Engine::page_key(uint64_t parent, const int32_t* tokens) {
  auto mix = [](uint64_t z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  };
  uint64_t h = mix(parent + 0x9E3779B97F4A7C15ull);
  for (int i = 0; i < kPage; ++i) h = mix(h ^ (uint64_t(uint32_t(tokens[i])) + 0x9E3779B97F4A7C15ull));
  return h ? h : 1;  // 0 means "not cached"
}

void Engine::unref_page(int32_t p) {
  if (--page_ref_[size_t(p)] > 0) return;
  if (!page_key_[size_t(p)]) {
    free_pages_.push_back(p);
    return;
  }
  make_idle(p);
  evict_idle();
}

void Engine::make_idle(int32_t p) {
  page_idle_since_[size_t(p)] = clock_;
  idle_.insert({clock_++, p});
}

// At most cache_max_idle_ page ids idle: cached full pages no sequence holds, and tails with
// their aux page ids; the least recently used go first.
void Engine::evict_idle() {
  while (!idle_.empty() && idle_.size() + size_t(tail_aux_) > cache_max_idle_) {
    const int32_t q = idle_.begin()->second;
    idle_.erase(idle_.begin());
    ++stats_.evictions;
    if (tails_.count(q)) {
      drop_tail(q);
      continue;
    }
    cache_.erase(page_key_[size_t(q)]);
    page_key_[size_t(q)] = 0;
    free_pages_.push_back(q);
  }
}

void Engine::drop_tail(int32_t page) {
  auto it = tails_.find(page);
  auto range = tails_by_parent_.equal_range(it->second.parent);
  for (auto j = range.first; j != range.second; ++j)
    if (j->second == page) {
      tails_by_parent_.erase(j);
      break;
    }
  for (int32_t a : it->second.aux) free_pages_.push_back(a);
  tail_aux_ -= int(it->second.aux.size());
  free_pages_.push_back(page);
  tails_.erase(it);
}

int32_t Engine::take_page(bool* grew) {
  int32_t p;
  if (!free_pages_.empty()) {
    p = free_pages_.back();
    free_pages_.pop_back();
  } else {
    p = pages_total_++;
    *grew = true;
  }
  size_page_arrays();
  page_ref_[size_t(p)] = 1;
  page_key_[size_t(p)] = 0;
  return p;
}

// A finished sequence's partial last page (at least kMinTail positions) is kept as a tail: a
// later prompt with the same tokens up to some point inside it continues from a copy of it
// instead of prefilling those positions again (a chat's next turn re-sends the whole
// conversation, which rarely ends on a page boundary). The ring layers need the `window`
// positions before wherever the next sequence resumes, so all of the page's positions are
// snapshotted from the ring, which still holds them (it keeps window + kChunk positions).
void Engine::cache_tail(Sequence& s) {
  if (!prefix_on_ || cache_max_idle_ == 0) return;
  const int k = s.pos / kPage, L = s.pos % kPage;
  if (L < kMinTail || int(s.pages.size()) <= k || int(s.keys.size()) < k ||
      int(s.tokens.size()) < s.pos)
    return;
  const int32_t p = s.pages[size_t(k)];
  if (page_ref_[size_t(p)] != 1 || page_key_[size_t(p)]) return;
  const uint64_t parent = k ? s.keys[size_t(k) - 1] : 0;
  // a tail that already holds these tokens (or more of them) makes this one redundant; one that
  // holds fewer of them is made redundant by it
  std::vector<int32_t> shorter;
  auto range = tails_by_parent_.equal_range(parent);
  for (auto it = range.first; it != range.second; ++it) {
    const Tail& o = tails_.at(it->second);
    const size_t c = std::min(o.tokens.size(), size_t(s.pos));
    if (!std::equal(o.tokens.begin(), o.tokens.begin() + c, s.tokens.begin())) continue;
    if (o.tokens.size() >= size_t(s.pos)) return;
    shorter.push_back(it->second);
  }
  for (int32_t q : shorter) {
    idle_.erase({page_idle_since_[size_t(q)], q});
    drop_tail(q);
  }
  const int W = ck_.config.sliding_window;
  Tail t;
  t.parent = parent;
  t.tokens.assign(s.tokens.begin(), s.tokens.begin() + s.pos);
  bool grew = false;
  for (int first = k * kPage + W; W > 0 && first < s.pos; first += W) t.aux.push_back(take_page(&grew));
  reserve_taken(grew);
  tail_snapshots(s.slot, k * kPage, p, t, true);
  for (int32_t a : t.aux) page_ref_[size_t(a)] = 0;
  page_ref_[size_t(p)] = 0;
  s.pages.erase(s.pages.begin() + k);  // the tail owns it now
  tail_aux_ += int(t.aux.size());
  tails_by_parent_.emplace(parent, p);
  tails_.emplace(p, std::move(t));
  make_idle(p);
  evict_idle();
}

// The ring layers' positions first, first + W, ... of a tail: the first W in its page's own
// snapshot rows, the rest in its aux page ids' (save: from the slot's ring; else back into it).
void Engine::tail_snapshots(int slot, int first, int32_t page, const Tail& t, bool save) {
  const int W = ck_.config.sliding_window;
  if (W <= 0) return;
  be_->kv_snapshot(slot, first, page, save);
  for (size_t i = 0; i < t.aux.size(); ++i)
    be_->kv_snapshot(slot, first + int(i + 1) * W, t.aux[i], save);
}

void Engine::release_pages(Sequence& s) {
  cache_tail(s);
  // the deepest pages first, so LRU eviction drops a chain's tail before its head
  for (size_t i = s.pages.size(); i-- > 0;) unref_page(s.pages[i]);
  s.pages.clear();
  s.tokens.clear();
  s.keys.clear();
}

int Engine::reuse_prefix(Sequence& s, const int32_t* tokens, int n) {
  ++stats_.lookups;
  std::vector<int32_t> hit;
  std::vector<uint64_t> keys;
  uint64_t parent = 0;
  // the last token is always computed: its logits are the point of the prefill
  for (int k = 0; (k + 1) * kPage <= n - 1; ++k) {
    const int32_t* t = tokens + size_t(k) * kPage;
    const uint64_t key = page_key(parent, t);
    auto it = cache_.find(key);
    if (it == cache_.end() || it->second.parent != parent ||
        !std::equal(t, t + kPage, it->second.tokens.begin()))
      break;
    hit.push_back(it->second.page);
    keys.push_back(key);
    parent = key;
  }
  const int P = int(hit.size()) * kPage;
  // then the longest cached tail continuing those pages (its whole prefix compared too)
  int32_t tail = -1;
  int J = 0;
  auto range = tails_by_parent_.equal_range(parent);
  for (auto it = range.first; it != range.second; ++it) {
    const Tail& t = tails_.at(it->second);
    if (int(t.tokens.size()) / kPage != int(hit.size()) || t.tokens.size() < size_t(P + kMinTail) ||
        !std::equal(tokens, tokens + P, t.tokens.begin()))
      continue;
    const int lim = std::min(int(t.tokens.size()) - P, n - 1 - P);
    int j = 0;
    while (j < lim && t.tokens[size_t(P + j)] == tokens[P + j]) ++j;
    if (j >= kMinTail && j > J) J = j, tail = it->second;
  }
  stats_.hit_tokens += P + J;
  stats_.miss_tokens += n - P - J;
  s.cached = P + J;
  if (hit.empty() && tail < 0) return 0;
  for (size_t k = 0; k < hit.size(); ++k) {
    const int32_t p = hit[k];
    if (page_ref_[size_t(p)]++ == 0) idle_.erase({page_idle_since_[size_t(p)], p});
    page_table_[size_t(s.slot) * max_pages_ + k] = p;
    s.pages.push_back(p);
  }
  s.keys = keys;
  if (!hit.empty()) be_->kv_snapshot(s.slot, P - ck_.config.sliding_window, hit.back(), false);
  if (tail >= 0) {
    bool grew = false;
    const int32_t q = take_page(&grew);
    reserve_taken(grew);
    page_table_[size_t(s.slot) * max_pages_ + hit.size()] = q;
    s.pages.push_back(q);
    be_->kv_page_copy(tail, q);
    // positions past P + J come back too; the prefill rewrites them before they are read
    tail_snapshots(s.slot, P, tail, tails_.at(tail), false);
    idle_.erase({page_idle_since_[size_t(tail)], tail});  // most recently used now
    make_idle(tail);
  }
  s.tokens.assign(tokens, tokens + P + J);
  s.pos = P + J;
  return P + J;
}

void Engine::cache_full_pages(Sequence& s, int old_pos) {
  if (!prefix_on_) return;
  for (int k = old_pos / kPage; k < s.pos / kPage; ++k) {
    if (size_t(k) < s.keys.size()) continue;  // taken from the cache
    const int32_t* t = s.tokens.data() + size_t(k) * kPage;
    const uint64_t parent = k ? s.keys[size_t(k) - 1] : 0;
    const uint64_t key = page_key(parent, t);
    s.keys.push_back(key);
    const int32_t p = s.pages[size_t(k)];
    if (cache_.count(key)) continue;  // another sequence cached the same prefix first
    be_->kv_snapshot(s.slot, (k + 1) * kPage - ck_.config.sliding_window, p, true);
    CachedPage c;
    c.parent = parent;
    c.tokens.assign(t, t + kPage);
    c.page = p;
    cache_.emplace(key, std::move(c));
    page_key_[size_t(p)] = key;
  }
}

int Engine::cached_tokens(int seq) const { return sequence(seq).cached; }

int Engine::start_from_cache(int seq, const int32_t* tokens, int n) {
  Sequence& s = sequence(seq);
  GPTOSS_CHECK(s.pos == 0, "start_from_cache: sequence " << seq << " is at position " << s.pos
                                                          << "; reset it first");
  const Config& c = ck_.config;
  for (int i = 0; i < n; ++i)
    GPTOSS_CHECK(tokens[i] >= 0 && tokens[i] < c.vocab_size,
                 "token id " << tokens[i] << " is out of range [0, " << c.vocab_size << ")");
  GPTOSS_CHECK(n <= max_context_, "context limit: " << n << " tokens exceed max_context "
                                                    << max_context_);
  s.cached = 0;
  return prefix_on_ && n > 0 ? reuse_prefix(s, tokens, n) : 0;
}

PrefixCacheStats Engine::prefix_cache_stats() const {
  PrefixCacheStats r = stats_;
  r.cached_pages = int(cache_.size());
  r.idle_pages = int(idle_.size() - tails_.size());
  r.tails = int(tails_.size());
  r.tail_pages = int(tails_.size()) + tail_aux_;
  return r;
}

int Engine::position(int seq) const { return sequence(seq).pos; }

int Engine::pages_in_use() const { return pages_total_ - int(free_pages_.size()); }

Engine::~Engine() {
  for (void* p : owned_) be_->release(p);
  for (void* p : {(void*)x_, (void*)t_, (void*)qkv_, (void*)attn_, (void*)y_, (void*)glog_,
                  (void*)weights_, (void*)lg_rows_, (void*)logits_, (void*)experts_,
                  (void*)sampled_})
    if (p) be_->release(p);
}

float* Engine::upload_f32(const Tensor& t) {
  std::vector<float> h = to_f32(t);
  float* d = static_cast<float*>(be_->alloc(h.size() * sizeof(float)));
  be_->upload(d, h.data(), h.size() * sizeof(float));
  owned_.push_back(d);
  return d;
}

void Engine::ensure_workspace(int n) {
  if (n <= ws_n_) return;
  const Config& c = ck_.config;
  for (void* p : {(void*)x_, (void*)t_, (void*)qkv_, (void*)attn_, (void*)y_, (void*)glog_,
                  (void*)weights_, (void*)lg_rows_, (void*)logits_, (void*)experts_,
                  (void*)sampled_})
    if (p) be_->release(p);
  auto f = [&](size_t count) { return static_cast<float*>(be_->alloc(count * sizeof(float))); };
  const size_t N = size_t(n), H = size_t(c.hidden_size), K = size_t(c.experts_per_token);
  const size_t L = size_t(std::min(n, kLogitChunk));
  x_ = f(N * H);
  t_ = f(N * H);
  qkv_ = f(N * size_t(c.q_width() + 2 * c.kv_width()));
  attn_ = f(N * size_t(c.q_width()));
  y_ = f(N * H);
  glog_ = f(N * size_t(c.num_experts));
  weights_ = f(N * K);
  experts_ = static_cast<int32_t*>(be_->alloc(N * K * sizeof(int32_t)));
  lg_rows_ = f(L * H);
  logits_ = f(L * size_t(c.vocab_size));
  sampled_ = static_cast<int32_t*>(be_->alloc(L * sizeof(int32_t)));
  ws_n_ = n;
}

void Engine::size_page_arrays() {
  page_ref_.resize(size_t(pages_total_), 0);
  page_key_.resize(size_t(pages_total_), 0);
  page_idle_since_.resize(size_t(pages_total_), 0);
}

void Engine::ensure_pages(Sequence& s, int upto) {
  if (!any_paged_) return;
  const int need = (upto + kPage - 1) / kPage;
  bool grew = false;
  while (int(s.pages.size()) < need) {
    const int32_t p = take_page(&grew);
    page_table_[size_t(s.slot) * max_pages_ + s.pages.size()] = p;
    s.pages.push_back(p);
  }
  reserve_taken(grew);
}

void Engine::reserve_taken(bool grew) {
  if (!grew) return;
  // grow by at least half again, so a long prompt does not reallocate page by page
  const int target = std::max(pages_total_, pages_total_ + pages_total_ / 2);
  for (int p = pages_total_; p < target; ++p) free_pages_.insert(free_pages_.begin(), p);
  pages_total_ = target;
  size_page_arrays();
  be_->kv_reserve(pages_total_, slots_total_);
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
  int st0 = 0;
  if (s.pos == 0) s.cached = 0;
  if (prefix_on_ && s.pos == 0 && !all_logits) st0 = reuse_prefix(s, tokens, n);
  // Sliding layers keep a ring of window + kChunk slots: a chunk's keys are written before its
  // queries attend, and the extra kChunk slots keep every key the chunk's first query still needs.
  // Longer prompts go through in chunks of kChunk tokens.
  std::vector<int> seq_of, pos_of;
  for (int st = st0; st < n; st += kChunk) {
    const int m = std::min(kChunk, n - st);
    const bool last = st + m == n;
    seq_of.assign(size_t(m), seq);
    pos_of.resize(size_t(m));
    for (int i = 0; i < m; ++i) pos_of[size_t(i)] = s.pos + i;
    std::vector<int> rows;
    if (all_logits) {
      for (int i = 0; i < m; ++i) rows.push_back(i);
    } else if (last && logits) {
      rows.push_back(m - 1);
    }
    float* out = all_logits ? logits + size_t(st) * c.vocab_size : logits;
    run(tokens + st, seq_of.data(), pos_of.data(), m, rows, out, nullptr, nullptr, m == 1);
    const int old = s.pos;
    s.pos += m;
    if (prefix_on_) {
      s.tokens.insert(s.tokens.end(), tokens + st, tokens + st + m);
      cache_full_pages(s, old);
    }
  }
}

void Engine::decode_batch(const int32_t* seqs, const int32_t* tokens, int n, float* logits) {
  decode_batch_sample(seqs, tokens, n, nullptr, nullptr, logits);
}

void Engine::decode_batch_sample(const int32_t* seqs, const int32_t* tokens, int n,
                                 const SampleRow* params, int32_t* out, float* logits) {
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
    if (params) {
      const SampleRow& p = params[i];
      GPTOSS_CHECK(p.temperature >= 0 && std::isfinite(p.temperature),
                   "temperature = " << p.temperature << ": must be >= 0");
      GPTOSS_CHECK(p.top_p > 0 && p.top_p <= 1, "top_p = " << p.top_p << ": must be in (0, 1]");
      GPTOSS_CHECK(p.top_k >= 0, "top_k = " << p.top_k << ": must be >= 0");
    }
  }
  std::vector<int> seq_of(seqs, seqs + n);
  std::vector<int> pos_of(static_cast<size_t>(n)), rows(static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) {
    pos_of[size_t(i)] = sequence(seqs[i]).pos;
    rows[size_t(i)] = i;
  }
  run(tokens, seq_of.data(), pos_of.data(), n, rows, logits, params, out, true);
  for (int i = 0; i < n; ++i) {
    Sequence& s = sequence(seqs[i]);
    s.pos += 1;
    if (prefix_on_) {
      s.tokens.push_back(tokens[i]);
      cache_full_pages(s, s.pos - 1);
    }
  }
}

void Engine::run(const int32_t* tokens, const int* seq_of, const int* pos_of, int n,
                 const std::vector<int>& logit_rows, float* logits, const SampleRow* sample,
                 int32_t* tokens_out, bool graph) {
  const Config& c = ck_.config;
  ensure_workspace(n);
  int max_len = 0;
  step_tokens_.assign(tokens, tokens + n);
  step_pos_.resize(size_t(n));
  step_slot_.resize(size_t(n));
  for (int i = 0; i < n; ++i) {
    Sequence& s = sequence(seq_of[i]);
    ensure_pages(s, pos_of[i] + 1);
    step_pos_[size_t(i)] = pos_of[i];
    step_slot_[size_t(i)] = s.slot;
    max_len = std::max(max_len, pos_of[i] + 1);
  }
  const int m = int(logit_rows.size());
  step_logit_rows_.assign(logit_rows.begin(), logit_rows.end());
  StepRows rows;
  rows.n = n;
  rows.tokens = step_tokens_.data();
  rows.pos = step_pos_.data();
  rows.slot = step_slot_.data();
  rows.page_table = page_table_.data();
  rows.slots = slots_total_;
  rows.max_pages = max_pages_;
  rows.max_len = std::min(len_bucket(max_len), std::max(max_len, max_context_));
  rows.m = m;
  rows.logit_rows = step_logit_rows_.data();
  rows.sample = sample;
  be_->begin_step(rows);

  const int H = c.hidden_size, d = c.head_dim, Hq = c.num_heads, Hkv = c.num_kv_heads;
  const int qw = c.q_width(), kvw = c.kv_width(), qkvw = qw + 2 * kvw;
  const int K = c.experts_per_token, V = c.vocab_size;
  const int layers = int(ck_.layers.size());
  // The layers: everything up to the last layer's MoE output in y_ (added in the final norm).
  auto body = [&] {
    be_->embed(ck_.embedding, n, x_);
    for (int l = 0; l < layers; ++l) {
      const LayerTensors& L = ck_.layers[size_t(l)];
      const LayerSmall& S = small_[size_t(l)];
      // attention block (the previous layer's MoE output is added here)
      be_->add_rmsnorm(x_, l ? y_ : nullptr, n, H, S.attn_norm, c.rms_norm_eps, t_);
      be_->linear(t_, n, L.q_w, S.q_b, qkv_, qkvw);
      be_->linear(t_, n, L.k_w, S.k_b, qkv_ + qw, qkvw);
      be_->linear(t_, n, L.v_w, S.v_b, qkv_ + qw + kvw, qkvw);
      be_->rope_kv_write(qkv_, n, l, Hq, Hkv, d);
      be_->attention(qkv_, n, l, Hq, Hkv, d, c.layer_sliding[size_t(l)] ? c.sliding_window : 0,
                     S.sinks, attn_);
      be_->linear(attn_, n, L.out_w, S.out_b, y_, H);
      // MoE block
      be_->add_rmsnorm(x_, y_, n, H, S.mlp_norm, c.rms_norm_eps, t_);
      be_->linear(t_, n, L.router_w, S.router_b, glog_, c.num_experts);
      be_->route(glog_, n, c.num_experts, K, experts_, weights_);
      be_->moe(L, S.w1_bias, S.w2_bias, t_, n, H, c.intermediate_size, K, experts_, weights_,
               c.swiglu_alpha, c.swiglu_limit, y_);
    }
    be_->add_rmsnorm(x_, y_, n, H, final_norm_, c.rms_norm_eps, t_);
  };
  // The final rows: norm already applied to all rows in t_; gather the wanted ones, unembed.
  auto head = [&](int first, int cnt, float* out) {
    const bool identity = first == 0 && cnt == n && [&] {
      for (int i = 0; i < cnt; ++i)
        if (logit_rows[size_t(i)] != i) return false;
      return true;
    }();
    const float* src = t_;
    if (!identity) {
      be_->gather_rows(t_, H, first, cnt, lg_rows_);
      src = lg_rows_;
    }
    be_->linear(src, cnt, ck_.unembedding, nullptr, out, V);
    if (sample) be_->sample(out, first, cnt, V, sampled_);
  };
  const bool direct = be_->host_memory();
  const bool one_chunk = m <= kLogitChunk;
  if (graph && one_chunk && n <= kLogitChunk) {
    // a decode step: one graph for the whole step, keyed by what the host-side code depends on
    const uint64_t key = (uint64_t(n) << 40) | (uint64_t(m) << 32) |
                         (uint64_t(rows.max_len) << 1) | (sample ? 1u : 0u);
    // a host-memory backend writes logits straight to the caller (it captures no graphs)
    float* out = (direct && logits) ? logits : logits_;
    be_->run_graph(key, [&] {
      body();
      if (m) head(0, m, out);
    });
    if (m) {
      if (sample && tokens_out) be_->download(tokens_out, sampled_, sizeof(int32_t) * m);
      if (logits && out != logits) be_->download(logits, out, sizeof(float) * size_t(m) * V);
    }
    return;
  }
  body();
  for (int first = 0; first < m; first += kLogitChunk) {
    const int cnt = std::min(kLogitChunk, m - first);
    float* dst = logits ? logits + size_t(first) * V : nullptr;
    float* out = direct && dst ? dst : logits_;
    head(first, cnt, out);
    if (sample && tokens_out)
      be_->download(tokens_out + first, sampled_, sizeof(int32_t) * cnt);
    if (dst && out != dst) be_->download(dst, out, sizeof(float) * size_t(cnt) * V);
  }
}

void Backend::bind_random(const Checkpoint&) {
  GPTOSS_CHECK(false, "random_device_weights: device '"
                          << name() << "' reads its weights from the mapped checkpoint; only "
                                       "device 'cuda' makes random weights in its own memory");
}

// ------------------------------------------------------------------------------- public API
namespace {
std::unique_ptr<Backend> make_backend(const Options& o) {
  GPTOSS_CHECK(o.device == "cpu" || o.device == "cuda",
               "device = '" << o.device << "': must be 'cpu' or 'cuda'");
  GPTOSS_CHECK(o.kv_dtype == "auto" || o.kv_dtype == "float32" || o.kv_dtype == "bf16",
               "kv_dtype = '" << o.kv_dtype << "': must be 'auto', 'float32' or 'bf16'");
  GPTOSS_CHECK(o.device != "cuda" || o.kv_dtype != "float32",
               "kv_dtype = 'float32': device 'cuda' keeps K and V in bf16 (kv_dtype 'auto' or 'bf16')");
  GPTOSS_CHECK(o.dense_weights == "bf16" || o.dense_weights == "int8",
               "dense_weights = '" << o.dense_weights << "': must be 'bf16' or 'int8'");
  GPTOSS_CHECK(o.device != "cuda" || o.dense_weights == "bf16",
               "dense_weights = 'int8': device 'cuda' runs the dense products in bf16 only "
               "(dense_weights 'bf16'); 'int8' is the cpu device's");
  return o.device == "cuda" ? make_cuda_backend(o.batch_invariant)
                            : make_cpu_backend(o.activation_levels, o.repack, o.cache_dir, o.kv_dtype,
                                               o.batch_invariant, o.dense_weights);
}
}  // namespace

Model::Model(const std::string& dir, const Options& options)
    : impl_(new Engine(dir, options, make_backend(options))) {}
Model::~Model() = default;
Model::Model(Model&&) noexcept = default;
Model& Model::operator=(Model&&) noexcept = default;
const Config& Model::config() const { return impl_->config(); }
std::string Model::layout() const { return impl_->checkpoint().layout; }
std::string Model::note() const { return impl_->checkpoint().note; }
std::string Model::weights_note() const { return impl_->backend().weights_note(); }
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
std::string Model::device() const { return impl_->backend().name(); }
int Model::cached_tokens(int seq) const { return impl_->cached_tokens(seq); }
int Model::start_from_cache(int seq, const int32_t* tokens, size_t n) {
  GPTOSS_CHECK(n <= size_t(1) << 30, "start_from_cache: too many tokens (" << n << ")");
  return impl_->start_from_cache(seq, tokens, int(n));
}
PrefixCacheStats Model::prefix_cache_stats() const { return impl_->prefix_cache_stats(); }
void Model::decode_batch_sample(const int32_t* seqs, const int32_t* tokens, size_t n,
                                const SampleParams* params, int32_t* out) {
  GPTOSS_CHECK(n <= size_t(1) << 20, "decode_batch: too many sequences (" << n << ")");
  GPTOSS_CHECK(params && out, "decode_batch_sample: params and out are required");
  impl_->decode_batch_sample(seqs, tokens, int(n), params, out);
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
