// The CPU backend: the engine's kernels on host memory, threads over rows with OpenMP.
// Weights are used in place in the mapped checkpoint (zero copy); the only per-step buffers are
// the workspaces below, grown when a longer chunk arrives and then reused, so the decode path
// does not allocate.
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "common/numeric.h"
#include "cpu/kernels.h"
#include "engine/backend.h"
#include "engine/engine.h"
#include "engine/weight_cache.h"
#include "common/sample_ref.h"

namespace gptoss {

namespace {

template <typename T>
void grow(std::vector<T>& v, size_t n) {
  if (v.size() < n) v.resize(n);
}

cpu::Q8Act q8_rows_from(const cpu::Q8Act& q, int off) {
  cpu::Q8Act r = q;
  const size_t xs = size_t(q.nbp) * 16 * size_t(off), cs = size_t(q.nbp) * 4 * size_t(off);
  r.e1 += xs;
  r.o1 += xs;
  r.e2 += xs;
  r.o2 += xs;
  r.c1 += cs;
  r.c2 += cs;
  r.step += cs;
  r.step1 += cs;
  return r;
}

// Drops the pages of [p, p + bytes) of a read-only file mapping from this process (they stay in
// the page cache): the checkpoint's experts once they are repacked.
void release_pages(const void* p, size_t bytes) {
  const uintptr_t pg = uintptr_t(::sysconf(_SC_PAGESIZE));
  const uintptr_t a = (reinterpret_cast<uintptr_t>(p) + pg - 1) / pg * pg;
  const uintptr_t b = (reinterpret_cast<uintptr_t>(p) + bytes) / pg * pg;
  if (b > a) ::madvise(reinterpret_cast<void*>(a), b - a, MADV_DONTNEED);
}

// Rows are handed to threads in bands of this many (a multiple of cpu::kR16).
constexpr int kBand = 32;
// Steps of at most this many token rows (decode, small batches) hand bands out dynamically.
constexpr int kDynamicRows = 8;
static_assert(kBand % cpu::kR16 == 0, "bands must hold whole r16 groups");
// tokens per pass of a dense product at the amx level (a multiple of the 16-token tiles)
constexpr int kAmxTokenBlock = 64;
// an expert's tokens per pass over its rows at the amx level (a multiple of the 16-token tiles)
constexpr int kAmxExpertTokens = 128;
static_assert(kAmxTokenBlock % 16 == 0, "token blocks must hold whole AMX tiles");

// The repacked layout's name in the weight cache; bump the version when mf4_r16_pack changes.
constexpr const char* kR16Format = "mxfp4-r16-v1";
// The int8 dense layout's name (dense_weights "int8"); bump the version when q8_r16_pack changes.
constexpr const char* kQ8Format = "dense-q8r16-v1";

class CpuBackend final : public Backend {
 public:
  CpuBackend(int levels, std::string repack, std::string cache_dir, const std::string& kv_dtype,
             bool batch_invariant, const std::string& dense_weights)
      : levels_(levels), invariant_(batch_invariant), dense_int8_(dense_weights == "int8"),
        repack_(std::move(repack)), cache_dir_(std::move(cache_dir)) {
    GPTOSS_CHECK(dense_weights == "bf16" || dense_weights == "int8",
                 "dense_weights = '" << dense_weights << "': must be 'bf16' or 'int8'");
    GPTOSS_CHECK(levels == 1 || levels == 2,
                 "activation_levels = " << levels << ": must be 1 or 2");
    GPTOSS_CHECK(kv_dtype == "auto" || kv_dtype == "float32" || kv_dtype == "bf16",
                 "kv_dtype = '" << kv_dtype << "': must be 'auto', 'float32' or 'bf16'");
    eb_ = kv_dtype == "bf16" ? 2 : 4;
    GPTOSS_CHECK(repack_ == "auto" || repack_ == "off" || repack_ == "memory",
                 "repack = '" << repack_ << "': must be 'auto', 'off' or 'memory'");
  }
  ~CpuBackend() override {
    for (auto& l : kv_) {
      std::free(l.k);
      std::free(l.v);
      std::free(l.sk);
      std::free(l.sv);
    }
  }
  std::string name() const override { return "cpu"; }
  bool host_memory() const override { return true; }
  void* alloc(size_t bytes) override {
    void* p = std::aligned_alloc(64, (bytes + 63) / 64 * 64);
    GPTOSS_CHECK(p != nullptr, "out of memory allocating " << bytes << " bytes");
    std::memset(p, 0, bytes);
    return p;
  }
  void release(void* p) override { std::free(p); }
  void upload(void* dst, const void* src, size_t bytes) override { std::memcpy(dst, src, bytes); }
  void download(void* dst, const void* src, size_t bytes) override { std::memcpy(dst, src, bytes); }
  // Every SIMD level (AVX2 and up) runs the MXFP4 experts on the r16 layout (cpu/mxfp4_r16.cpp):
  // they are repacked once into the weight cache (engine/weight_cache.h) and mapped from it, or
  // with repack 'memory' (or where no cache can be written) repacked into memory. The plain
  // level and repack 'off' use them in place in the mapped checkpoint (cpu/mxfp4.cpp).
  void bind(const Checkpoint& ck) override {
    packed_.clear();
    cache_.reset();
    const cpu::Isa isa = cpu::active_isa();
    if (repack_ == "off") {
      note_ = "experts in the checkpoint's layout (repack off)";
    } else if (!wants_r16(isa)) {
      note_ = std::string("experts in the checkpoint's layout (read directly by the ") +
              cpu::isa_name(isa) + " kernels)";
    } else {
      std::vector<const LayerTensors*> layers;
      for (const LayerTensors& L : ck.layers) layers.push_back(&L);
      repack(layers, repack_ == "memory" ? "" : cache_dir_.empty() ? default_cache_dir() : cache_dir_,
             repack_ == "memory", /*release_source=*/true);
    }
    dense_q8_.clear();
    dense_cache_.reset();
    if (dense_int8_) quantize_dense(ck);
  }

  // dense_weights "int8": QKV, the output projections, the routers and the unembedding quantized
  // into the q8r16 layout (cpu/dense_q8.cpp), in the weight cache beside the experts' (repack
  // "auto") or in memory (repack "memory" or "off", or where no cache can be written). The bf16
  // sources' pages are dropped from this process once quantized; the embedding stays bf16.
  void quantize_dense(const Checkpoint& ck) {
    std::vector<const Tensor*> mats;
    for (const LayerTensors& L : ck.layers)
      for (const Tensor* t : {&L.q_w, &L.k_w, &L.v_w, &L.out_w, &L.router_w}) mats.push_back(t);
    mats.push_back(&ck.unembedding);
    std::vector<CacheEntry> entries;
    for (size_t i = 0; i < mats.size(); ++i) {
      const Tensor* t = mats[i];
      GPTOSS_CHECK(t->dtype == DType::BF16 && t->shape.size() == 2,
                   "dense_weights 'int8': " << t->name << " in " << t->file
                                            << " is not a bf16 matrix");
      const int R = int(t->shape[0]), K = int(t->shape[1]);
      GPTOSS_CHECK(K % 32 == 0, "dense_weights 'int8': " << t->name << " has " << K
                                                         << " columns, not a multiple of 32");
      const uint16_t* w = reinterpret_cast<const uint16_t*>(t->data);
      const size_t ldw = t->row_stride_bytes / 2;
      entries.push_back({"dense" + std::to_string(i), cpu::q8_r16_bytes(R, K / 32), [=](uint8_t* dst) {
                           cpu::q8_r16_pack(w, ldw, R, K, 0, (R + cpu::kR16 - 1) / cpu::kR16, dst);
                           release_pages(t->data, size_t(R) * t->row_stride_bytes);
                         }});
    }
    std::string how;
    if (repack_ != "auto") {
      dense_cache_ = WeightCache::in_memory(entries);
      how = "quantized into memory (repack '" + repack_ + "')";
    } else {
      const std::string dir = cache_dir_.empty() ? default_cache_dir() : cache_dir_;
      dense_cache_ = WeightCache::open(dir, kQ8Format, checkpoint_fingerprint(mats, kQ8Format),
                                       entries, &how);
    }
    for (size_t i = 0; i < mats.size(); ++i) dense_q8_.emplace_back(mats[i]->data, dense_cache_->data(i));
    note_ += std::string("; dense weights int8 (") + kQ8Format + "): " + how;
  }
  const uint8_t* dense_q8_for(const Tensor& W) const {
    for (const auto& p : dense_q8_)
      if (p.first == W.data) return p.second;
    return nullptr;
  }
  std::string weights_note() const override { return note_; }

  // Repacks these layers' experts for the r16 kernels: into the cache under dir (mapped), or
  // into memory when in_memory is set. release_source: the tensors are in a read-only file
  // mapping (the checkpoint's), whose pages are dropped from this process once repacked (never
  // for other memory: MADV_DONTNEED would zero anonymous pages).
  void repack(const std::vector<const LayerTensors*>& layers, const std::string& dir, bool in_memory,
              bool release_source) {
    std::vector<CacheEntry> entries;
    std::vector<const Tensor*> sources;
    for (size_t l = 0; l < layers.size(); ++l) {
      const LayerTensors& L = *layers[l];
      const int E = int(L.w1_blocks.shape[0]);
      for (int which = 0; which < 2; ++which) {
        const Tensor& B = which == 0 ? L.w1_blocks : L.w2_blocks;
        const Tensor& S = which == 0 ? L.w1_scales : L.w2_scales;
        sources.push_back(&B);
        sources.push_back(&S);
        const int R = int(B.shape[1]), nb = int(B.shape[2]);
        const size_t eb = size_t(R) * nb * 16, es = size_t(R) * nb;
        for (int e = 0; e < E; ++e) {
          const uint8_t* bp = B.data + size_t(e) * eb;
          const uint8_t* sp = S.data + size_t(e) * es;
          entries.push_back({"layer" + std::to_string(l) + (which == 0 ? ".w1." : ".w2.") + std::to_string(e),
                             cpu::mf4_r16_bytes(R, nb), [=](uint8_t* dst) {
                               cpu::mf4_r16_pack(bp, sp, R, nb, 0, (R + cpu::kR16 - 1) / cpu::kR16, dst);
                               if (release_source) {
                                 release_pages(bp, eb);
                                 release_pages(sp, es);
                               }
                             }});
        }
      }
    }
    std::string how;
    if (in_memory) {
      cache_ = WeightCache::in_memory(entries);
      how = "repacked into memory (repack 'memory')";
    } else {
      cache_ = WeightCache::open(dir, kR16Format, checkpoint_fingerprint(sources, kR16Format), entries, &how);
    }
    size_t i = 0;
    for (const LayerTensors* L : layers) {
      Packed p;
      const int E = int(L->w1_blocks.shape[0]);
      for (int e = 0; e < E; ++e) p.w1.push_back(cache_->data(i++));
      for (int e = 0; e < E; ++e) p.w2.push_back(cache_->data(i++));
      packed_.emplace_back(L->w1_blocks.data, std::move(p));
    }
    note_ = std::string("experts repacked for the ") + cpu::isa_name(cpu::active_isa()) +
            " kernels (" + kR16Format + "): " + how;
  }

  // KV cache: one pool per layer (rows of kv_width elements: float32, or bf16 with kv_dtype
  // "bf16"), grown by copying.
  void kv_init(const KVGeometry& g) override {
    geo_ = g;
    kv_.assign(size_t(g.layers), Pool{});
  }
  void kv_reserve(int pages, int slots) override {
    const size_t width = size_t(geo_.kv_width) * eb_;
    auto grow = [&](char** k, char** v, size_t& have, size_t rows) {
      if (rows <= have) return;
      for (char** q : {k, v}) {
        char* n = static_cast<char*>(alloc(rows * width));
        if (*q) std::memcpy(n, *q, have * width);
        std::free(*q);
        *q = n;
      }
      have = rows;
    };
    for (int l = 0; l < geo_.layers; ++l) {
      Pool& p = kv_[size_t(l)];
      grow(&p.k, &p.v, p.rows, geo_.rows(l, pages, slots));
      grow(&p.sk, &p.sv, p.snap_rows, geo_.snap_rows(l, pages));
    }
  }
  void kv_snapshot(int slot, int first, int page, bool save) override {
    const size_t width = size_t(geo_.kv_width);
    for (int l = 0; l < geo_.layers; ++l) {
      if (!geo_.ring_layer[size_t(l)]) continue;
      Pool& p = kv_[size_t(l)];
      GPTOSS_CHECK(size_t(page + 1) * geo_.snap <= p.snap_rows,
                   "kv_snapshot: page " << page << " has no snapshot rows");
      const int d = geo_.kv_width / geo_.kv_heads;
      for (int i = 0; i < geo_.snap; ++i)
        for (int h = 0; h < geo_.kv_heads; ++h) {
          const size_t ring = kv_off(l, slot, first + i, h) * eb_;
          const size_t snap = ((size_t(page) * geo_.snap + size_t(i)) * width + size_t(h) * d) * eb_;
          if (save) {
            std::memcpy(p.sk + snap, p.k + ring, d * eb_);
            std::memcpy(p.sv + snap, p.v + ring, d * eb_);
          } else {
            std::memcpy(p.k + ring, p.sk + snap, d * eb_);
            std::memcpy(p.v + ring, p.sv + snap, d * eb_);
          }
        }
    }
  }
  void kv_page_copy(int src, int dst) override {
    const size_t bytes = size_t(geo_.page) * size_t(geo_.kv_width) * eb_;
    for (int l = 0; l < geo_.layers; ++l) {
      if (geo_.ring_layer[size_t(l)]) continue;
      Pool& p = kv_[size_t(l)];
      GPTOSS_CHECK(size_t(std::max(src, dst) + 1) * geo_.page <= p.rows,
                   "kv_page_copy: page " << std::max(src, dst) << " is not reserved");
      std::memcpy(p.k + size_t(dst) * bytes, p.k + size_t(src) * bytes, bytes);
      std::memcpy(p.v + size_t(dst) * bytes, p.v + size_t(src) * bytes, bytes);
    }
  }
  int kv_elem_bytes() const override { return int(eb_); }
  void rope_table(const float* cos, const float* sin, int max_pos, int half) override {
    cos_.assign(cos, cos + size_t(max_pos) * half);
    sin_.assign(sin, sin + size_t(max_pos) * half);
    half_ = half;
  }
  void begin_step(const StepRows& r) override {
    n_ = r.n;
    tokens_.assign(r.tokens, r.tokens + r.n);
    pos_.assign(r.pos, r.pos + r.n);
    slot_.assign(r.slot, r.slot + r.n);
    page_table_.assign(r.page_table, r.page_table + size_t(r.slots) * r.max_pages);
    max_pages_ = r.max_pages;
    logit_rows_.assign(r.logit_rows, r.logit_rows + r.m);
    sample_.clear();
    if (r.sample) sample_.assign(r.sample, r.sample + r.m);
  }

  void embed(const Tensor& emb, int n, float* x) override {
    const int H = int(emb.shape[1]);
    for (int i = 0; i < n; ++i) {
      const uint16_t* row =
          reinterpret_cast<const uint16_t*>(emb.data) + size_t(tokens_[size_t(i)]) * H;
      for (int j = 0; j < H; ++j) x[size_t(i) * H + j] = bf16_to_f32(row[j]);
    }
  }

  void add_rmsnorm(float* x, const float* y, int n, int H, const float* w, float eps,
                   float* out) override {
    if (y)
      for (size_t i = 0; i < size_t(n) * H; ++i) x[i] += y[i];
    cpu::rmsnorm(x, w, n, H, eps, out);
  }

  void linear(const float* x, int n, const Tensor& W, const float* bias, float* out,
              int ldo) override {
    const int R = int(W.shape[0]), K = int(W.shape[1]);
    if (const uint8_t* q8 = dense_q8_for(W)) return linear_q8(x, n, q8, R, K, bias, out, ldo);
    const uint16_t* w = reinterpret_cast<const uint16_t*>(W.data);
    const size_t ldw = W.row_stride_bytes / 2;
    const float* xp = nullptr;
    if (cpu::bf16_wants_pair_order()) {  // 64-byte aligned: the AVX-512 loads stay in one line
      grow(xpair_, cpu::bf16_pair_order_floats(n, K, levels_) + 16);
      float* a = reinterpret_cast<float*>((reinterpret_cast<uintptr_t>(xpair_.data()) + 63) &
                                          ~uintptr_t(63));
      cpu::bf16_pair_order(x, n, K, a, levels_);
      xp = a;
    }
    // At the amx level a long prompt's products go 64 tokens at a time, so that a band's tokens
    // (two bf16 terms each) stay in L2 while its 32 rows are reused (a [512, 2880] x [5120, 2880]
    // product 1.4x faster than in one pass, the weights then read 8 times instead of once).
    const int tb = cpu::active_isa() >= cpu::Isa::Amx ? kAmxTokenBlock : n;
    for (int t0 = 0; t0 < n; t0 += tb)
      linear_tokens(w, ldw, R, K, x + size_t(t0) * K,
                    xp ? xp + cpu::bf16_pair_order_floats(t0, K, levels_) : nullptr,
                    std::min(tb, n - t0), bias, out + size_t(t0) * ldo, ldo);
  }

  // The int8 dense product: x quantized to int16 per 32-block (Q16Act, the exact code: no
  // AMX-BF16 terms), rows in bands over the threads as the bf16 product's.
  void linear_q8(const float* x, int n, const uint8_t* packed, int R, int K, const float* bias,
                 float* out, int ldo) {
    grow(qwsd_, cpu::Q16Act::bytes(n, K));
    const cpu::Q16Act q = cpu::Q16Act::carve(qwsd_.data(), n, K, 2, true);
    cpu::q16_quantize(x, n, K, q);
    const int nb = K / 32;
    run_bands(R, K, n, [&](int r0, int r1) {
      cpu::q8w_r16_gemm_rows(packed, nb, r0, r1, q, n, bias, out, ldo);
    });
  }

  // A dense product's rows [0, R) in bands of kBand over the threads. Decode streams the rows
  // from memory: bands handed out as threads free up, so a thread slowed down (another process, a
  // busier memory channel) does not hold the other at the barrier (measured 5-8% of decode on a
  // 2-core Zen 3); prefill's equal bands stay static. Either way a row's result does not depend
  // on which thread computes it.
  template <class F>
  static void run_bands(int R, int K, int n, F&& band) {
    const int bands = (R + kBand - 1) / kBand;
    if (n <= kDynamicRows) {
#pragma omp parallel for schedule(dynamic, 8) if (size_t(R) * K > 65536)
      for (int b = 0; b < bands; ++b) band(b * kBand, std::min(R, (b + 1) * kBand));
    } else {
#pragma omp parallel for schedule(static) if (size_t(R) * K > 65536)
      for (int b = 0; b < bands; ++b) band(b * kBand, std::min(R, (b + 1) * kBand));
    }
  }

  void linear_tokens(const uint16_t* w, size_t ldw, int R, int K, const float* x,
                     const float* xp, int n, const float* bias, float* out, int ldo) {
    run_bands(R, K, n, [&](int r0, int r1) {
      cpu::bf16w_gemm_rows(w, ldw, r0, r1, x, xp, n, K, bias, out, ldo, levels_);
    });
  }

  void rope_kv_write(float* qkv, int n, int layer, int Hq, int Hkv, int d) override {
    const int ld = (Hq + 2 * Hkv) * d, kvw = Hkv * d;
    grow(cs_, size_t(n) * half_);
    grow(sn_, size_t(n) * half_);
    for (int i = 0; i < n; ++i) {
      std::memcpy(&cs_[size_t(i) * half_], &cos_[size_t(pos_[size_t(i)]) * half_],
                  sizeof(float) * half_);
      std::memcpy(&sn_[size_t(i) * half_], &sin_[size_t(pos_[size_t(i)]) * half_],
                  sizeof(float) * half_);
    }
    cpu::rope(qkv, n, Hq + Hkv, d, ld, cs_.data(), sn_.data());
    Pool& p = kv_[size_t(layer)];
    (void)kvw;
    for (int i = 0; i < n; ++i)
      for (int h = 0; h < Hkv; ++h) {
        const size_t off = kv_off(layer, slot_[size_t(i)], pos_[size_t(i)], h);
        const float* k = qkv + size_t(i) * ld + (Hq + h) * d;
        const float* v = qkv + size_t(i) * ld + (Hq + Hkv + h) * d;
        if (eb_ == 4) {
          std::memcpy(reinterpret_cast<float*>(p.k) + off, k, sizeof(float) * d);
          std::memcpy(reinterpret_cast<float*>(p.v) + off, v, sizeof(float) * d);
        } else {  // round to nearest even, as backends/numpy.py's f32_to_bf16
          uint16_t* kb = reinterpret_cast<uint16_t*>(p.k) + off;
          uint16_t* vb = reinterpret_cast<uint16_t*>(p.v) + off;
          for (int j = 0; j < d; ++j) {
            kb[j] = f32_to_bf16(k[j]);
            vb[j] = f32_to_bf16(v[j]);
          }
        }
      }
  }

  void attention(const float* qkv, int n, int layer, int Hq, int Hkv, int d, int window,
                 const float* sinks, float* out) override {
    if (eb_ == 4)
      attend<float>(qkv, n, layer, Hq, Hkv, d, window, sinks, out, kptr_, vptr_, views_);
    else
      attend<uint16_t>(qkv, n, layer, Hq, Hkv, d, window, sinks, out, kptr16_, vptr16_, views16_);
  }

  template <class T>
  void attend(const float* qkv, int n, int layer, int Hq, int Hkv, int d, int window,
              const float* sinks, float* out, std::vector<T*>& kptr, std::vector<T*>& vptr,
              std::vector<cpu::KVViewT<T>>& views) {
    const int ld = (Hq + 2 * Hkv) * d, kvw = Hkv * d;
    const Pool& pl = kv_[size_t(layer)];
    T* const pk = reinterpret_cast<T*>(pl.k);
    T* const pv = reinterpret_cast<T*>(pl.v);
    const bool ring = geo_.ring_layer[size_t(layer)];
    // page pointers of every sequence slot the step touches
    grow(kptr, page_table_.size());
    grow(vptr, page_table_.size());
    views.resize(size_t(n));
    for (int i = 0; i < n; ++i) {
      const int s = slot_[size_t(i)];
      cpu::KVViewT<T>& v = views[size_t(i)];
      v.pos_stride = d;  // head-major pages and rings (kv_off)
      v.head_stride = (ring ? geo_.ring : geo_.page) * d;
      v.page = geo_.page;
      const size_t base = size_t(s) * max_pages_;
      if (ring) {
        kptr[base] = pk + size_t(s) * geo_.ring * kvw;
        vptr[base] = pv + size_t(s) * geo_.ring * kvw;
        v.ring = geo_.ring;
      } else {
        const int np = pos_[size_t(i)] / geo_.page + 1;
        for (int j = 0; j < np; ++j) {
          const size_t r = size_t(page_table_[base + j]) * geo_.page * kvw;
          kptr[base + j] = pk + r;
          vptr[base + j] = pv + r;
        }
        v.ring = 0;
      }
      v.k_pages = &kptr[base];
      v.v_pages = &vptr[base];
    }
    cpu::attention(qkv, n, ld, pos_.data(), views.data(), Hq, Hkv, d, window, sinks, out);
  }

  void route(const float* logits, int n, int E, int k, int32_t* experts, float* weights) override {
    cpu::topk_softmax(logits, n, E, k, experts, weights);
  }

  void gather_rows(const float* src, int width, int first, int m, float* dst) override {
    for (int i = 0; i < m; ++i)
      std::memcpy(dst + size_t(i) * width, src + size_t(logit_rows_[size_t(first + i)]) * width,
                  sizeof(float) * width);
  }

  void sample(const float* logits, int first, int m, int V, int32_t* tokens) override {
    GPTOSS_CHECK(int(sample_.size()) >= first + m, "sample: no sampling parameters for the step");
    for (int i = 0; i < m; ++i)
      tokens[i] = sample_reference(logits + size_t(i) * V, V, sample_[size_t(first + i)]);
  }

  void moe(const LayerTensors& L, const float* w1_bias, const float* w2_bias, const float* t,
           int n, int H, int I, int k, const int32_t* experts, const float* weights, float alpha,
           float limit, float* out) override {
    const int levels = levels_;
    const int E = int(L.w1_blocks.shape[0]);
    const int A = n * k;  // (token, slot) assignments
    // group assignments by expert: order[] lists assignment ids expert by expert
    grow(count_, size_t(E) + 1);
    std::fill(count_.begin(), count_.begin() + E + 1, 0);
    for (int a = 0; a < A; ++a) {
      const int e = experts[a];
      GPTOSS_CHECK(e >= 0 && e < E, "moe: expert id " << e << " out of range [0, " << E << ")");
      ++count_[size_t(e) + 1];
    }
    for (int e = 0; e < E; ++e) count_[size_t(e) + 1] += count_[size_t(e)];
    grow(order_, size_t(A));
    grow(fill_, size_t(E));
    std::copy(count_.begin(), count_.begin() + E, fill_.begin());
    for (int a = 0; a < A; ++a) order_[size_t(fill_[size_t(experts[a])]++)] = a;

    // gather the token rows in expert order and quantize them
    grow(tg_, size_t(A) * H);
    for (int i = 0; i < A; ++i)
      std::memcpy(&tg_[size_t(i) * H], t + size_t(order_[size_t(i)] / k) * H, sizeof(float) * H);
    if (const Packed* P = packed_for(L)) {
      moe_r16(*P, w1_bias, w2_bias, A, H, I, alpha, limit);
    } else {
      moe_checkpoint_layout(L, w1_bias, w2_bias, A, H, I, alpha, limit, levels);
    }
    // weighted scatter-add back to token order
    std::memset(out, 0, sizeof(float) * size_t(n) * H);
    for (int i = 0; i < A; ++i) {
      const int a = order_[size_t(i)];
      const float w = weights[a];
      float* o = out + size_t(a / k) * H;
      const float* y = &y_[size_t(i) * H];
      for (int j = 0; j < H; ++j) o[j] += w * y[j];
    }
  }

 private:
  struct Packed {
    std::vector<const uint8_t*> w1, w2;  // per expert, in the weight cache
  };
  // The r16 kernels beat the checkpoint layout's at every SIMD level, for both activation codes
  // (bench/bench_cpu_kernels.py: on a Zen 4 the AVX-512 VNNI r16 code decodes the experts at
  // 1.5x the bytes per second and prefills 64 tokens at 2.2x the checkpoint layout's FLOP rate).
  static bool wants_r16(cpu::Isa isa) { return isa >= cpu::Isa::Avx2; }
  const Packed* packed_for(const LayerTensors& L) const {
    for (const auto& p : packed_)
      if (p.first == L.w1_blocks.data) return &p.second;
    return nullptr;
  }

  // The expert products for the A gathered rows of tg_: u_ = W1 rows, the SwiGLU into a_, then
  // y_ = W2 rows; prep quantizes activations into a workspace, mul runs one band of rows of one
  // expert's product (which: 0 for W1, 1 for W2) on them.
  template <class Prep, class Mul>
  void moe_experts(int E, const float* w1_bias, const float* w2_bias, int A, int H, int I,
                   float alpha, float limit, Prep&& prep, Mul&& mul) {
    const auto qt = prep(tg_.data(), A, H, qws1_);
    grow(u_, size_t(A) * 2 * I);
    run_items(E, 2 * I, [&](int e, int r0, int r1, int t0, int t1) {
      const int off = count_[size_t(e)] + t0;
      mul(0, e, qt, off, t1 - t0, r0, r1, w1_bias + size_t(e) * 2 * I, &u_[size_t(off) * 2 * I], 2 * I);
    });
    grow(a_, size_t(A) * I);
    cpu::swiglu(u_.data(), A, I, alpha, limit, a_.data());
    const auto qa = prep(a_.data(), A, I, qws2_);
    grow(y_, size_t(A) * H);
    run_items(E, H, [&](int e, int r0, int r1, int t0, int t1) {
      const int off = count_[size_t(e)] + t0;
      mul(1, e, qa, off, t1 - t0, r0, r1, w2_bias + size_t(e) * H, &y_[size_t(off) * H], H);
    });
  }

  // on the repacked weights (int16 activations, or int8 with activation_levels 1)
  void moe_r16(const Packed& P, const float* w1_bias, const float* w2_bias, int A, int H, int I,
               float alpha, float limit) {
    moe_experts(
        int(P.w1.size()), w1_bias, w2_bias, A, H, I, alpha, limit,
        [&](const float* x, int m, int K, std::vector<uint8_t>& ws) {
          grow(ws, cpu::Q16Act::bytes(m, K));
          const cpu::Q16Act q = cpu::Q16Act::carve(ws.data(), m, K, levels_, invariant_, true);
          quantize16(x, m, K, q);
          return q;
        },
        [&](int which, int e, const cpu::Q16Act& q, int off, int m, int r0, int r1,
            const float* bias, float* out, int ldo) {
          cpu::mf4w_r16_gemm_rows(which ? P.w2[size_t(e)] : P.w1[size_t(e)], (which ? I : H) / 32,
                                  r0, r1, q.from_row(off), m, bias, out, ldo);
        });
  }

  // on the checkpoint's layout (cpu/mxfp4.cpp)
  void moe_checkpoint_layout(const LayerTensors& L, const float* w1_bias, const float* w2_bias,
                             int A, int H, int I, float alpha, float limit, int levels) {
    const size_t eb[2] = {size_t(2 * I) * (H / 32) * 16, size_t(H) * (I / 32) * 16};
    const size_t es[2] = {size_t(2 * I) * (H / 32), size_t(H) * (I / 32)};
    const uint8_t* blocks[2] = {L.w1_blocks.data, L.w2_blocks.data};
    const uint8_t* scales[2] = {L.w1_scales.data, L.w2_scales.data};
    moe_experts(
        int(L.w1_blocks.shape[0]), w1_bias, w2_bias, A, H, I, alpha, limit,
        [&](const float* x, int m, int K, std::vector<uint8_t>& ws) {
          grow(ws, cpu::Q8Act::bytes(m, K));
          const cpu::Q8Act q = cpu::Q8Act::carve(ws.data(), m, K);
          quantize(x, m, K, q);
          return q;
        },
        [&](int which, int e, const cpu::Q8Act& q, int off, int m, int r0, int r1,
            const float* bias, float* out, int ldo) {
          cpu::mf4w_q8_gemm_rows(blocks[which] + size_t(e) * eb[which],
                                 scales[which] + size_t(e) * es[which], r0, r1, q8_rows_from(q, off),
                                 m, bias, out, ldo, levels);
        });
  }

  // Element offset of (position, kv head) in a layer's pool: each page (paged layers) or each
  // slot's ring (window layers) holds its positions head-major, [Hkv][positions][d], so the
  // attention streams one head's keys contiguously.
  size_t kv_off(int layer, int slot, int pos, int h) const {
    const size_t d = size_t(geo_.kv_width / geo_.kv_heads);
    if (geo_.ring_layer[size_t(layer)])
      return (size_t(slot) * geo_.ring * geo_.kv_heads + size_t(h) * geo_.ring + size_t(pos % geo_.ring)) * d;
    const size_t pg = size_t(page_table_[size_t(slot) * max_pages_ + pos / geo_.page]);
    return (pg * geo_.page * geo_.kv_heads + size_t(h) * geo_.page + size_t(pos % geo_.page)) * d;
  }
  struct Pool {  // rows of kv_width elements of eb_ bytes
    char* k = nullptr;
    char* v = nullptr;
    size_t rows = 0;
    char* sk = nullptr;  // snapshot rows (ring layers, prefix caching)
    char* sv = nullptr;
    size_t snap_rows = 0;
  };
  int levels_;
  bool invariant_;  // Options::batch_invariant: the experts' exact code at any number of tokens
  bool dense_int8_;  // Options::dense_weights "int8"
  size_t eb_ = 4;  // bytes per cached K/V element: 4 (float32) or 2 (bf16)
  std::string repack_, cache_dir_, note_;
  std::unique_ptr<WeightCache> cache_, dense_cache_;
  std::vector<std::pair<const uint8_t*, Packed>> packed_;  // by the layer's w1_blocks data
  std::vector<std::pair<const uint8_t*, const uint8_t*>> dense_q8_;  // bf16 data -> int8 copy
  KVGeometry geo_;
  std::vector<Pool> kv_;
  std::vector<float> cos_, sin_, cs_, sn_;
  int half_ = 0, n_ = 0, max_pages_ = 0;
  std::vector<int32_t> tokens_, pos_, slot_, page_table_, logit_rows_;
  std::vector<SampleParams> sample_;
  std::vector<float*> kptr_, vptr_;
  std::vector<uint16_t*> kptr16_, vptr16_;
  std::vector<cpu::KVView> views_;
  std::vector<cpu::KVViewBf16> views16_;

  template <typename F>
  void run_items(int E, int rows, F&& f) {
    // At the amx level an expert's tokens go kAmxExpertTokens at a time, all bands for one chunk
    // before the next (static schedule: a thread's run of items shares a chunk), so a chunk's
    // activations (two bf16 terms each) stay in L2 across the bands; elsewhere all at once.
    const int chunk = cpu::active_isa() >= cpu::Isa::Amx ? kAmxExpertTokens : 1 << 30;
    items_.clear();
    for (int e = 0; e < E; ++e) {
      const int m = count_[size_t(e) + 1] - count_[size_t(e)];
      // chunks of equal size (in whole tiles), so that none is left with a few tokens
      const int nc = (m + chunk - 1) / chunk;
      const int cs = nc > 1 ? ((m + nc - 1) / nc + 15) / 16 * 16 : m;
      for (int t = 0; t < m; t += cs)
        for (int r = 0; r < rows; r += kBand)
          items_.push_back({e, r, std::min(rows, r + kBand), t, std::min(m, t + cs)});
    }
    const long long ni = (long long)items_.size();
    auto item = [&](long long i) {
      const Item& it = items_[size_t(i)];
      f(it.e, it.r0, it.r1, it.t0, it.t1);
    };
    if (count_[size_t(E)] <= kDynamicRows * 4) {  // decode (4 assignments a token): as linear()
#pragma omp parallel for schedule(dynamic, 4)
      for (long long i = 0; i < ni; ++i) item(i);
    } else {
#pragma omp parallel for schedule(static)
      for (long long i = 0; i < ni; ++i) item(i);
    }
  }

  void quantize16(const float* x, int m, int K, const cpu::Q16Act& q) {
#pragma omp parallel for schedule(static) if (m > 8)
    for (int i = 0; i < m; ++i) cpu::q16_quantize(x + size_t(i) * K, 1, K, q.from_row(i));
  }

  void quantize(const float* x, int m, int K, const cpu::Q8Act& q) {
#pragma omp parallel for schedule(static) if (m > 8)
    for (int i = 0; i < m; ++i) {
      cpu::Q8Act qi = q8_rows_from(q, i);
      cpu::q8_quantize(x + size_t(i) * K, 1, K, qi);
    }
  }

  struct Item {
    int e, r0, r1, t0, t1;  // expert e's rows [r0, r1) for its tokens [t0, t1)
  };
  std::vector<int> count_, fill_, order_;
  std::vector<Item> items_;
  std::vector<float> tg_, u_, a_, y_, xpair_;
  std::vector<uint8_t> qws1_, qws2_, qwsd_;
};

}  // namespace

std::unique_ptr<Backend> make_cpu_backend(int activation_levels, const std::string& repack,
                                          const std::string& cache_dir,
                                          const std::string& kv_dtype, bool batch_invariant,
                                          const std::string& dense_weights) {
  return std::unique_ptr<Backend>(new CpuBackend(activation_levels, repack, cache_dir, kv_dtype,
                                                 batch_invariant, dense_weights));
}

void cpu_backend_repack_in_memory(Backend& be, const LayerTensors& L) {
  auto* c = dynamic_cast<CpuBackend*>(&be);
  GPTOSS_CHECK(c != nullptr, "repacking experts needs the CPU backend");
  c->repack({&L}, "", true, false);
}

}  // namespace gptoss
