// The CUDA backend: the engine's ops as launches of the kernels in kernels.h on one stream, the
// weights and the bf16 KV cache in device memory, and decode steps captured as CUDA graphs.
//
// - bind() copies every matrix the kernels read (bf16 projections, embedding, unembedding, MXFP4
//   expert blocks and scales) to the device once; ops find a tensor's copy by its mapped address.
// - The step buffers (token ids, positions, sequence slots, page table, logit rows, sampling
//   parameters) live at fixed device addresses; begin_step() uploads into them, so a graph captured
//   for one step replays for the next with other tokens and positions.
// - run_graph(): the first time a key is seen the step runs eagerly (that sizes every workspace);
//   the second time it is captured and then replayed. Any (re)allocation drops the graphs, since
//   they hold device addresses.
// - Nothing in a step synchronises with the host; download() is the only wait.
// The same file builds for the GPU and for the host emulation (GPTOSS_CUDA_EMULATE).
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "cuda/kernels.h"
#include "cuda/runtime.cuh"
#include "engine/backend.h"
#include "engine/engine.h"

namespace gptoss {

namespace {

__global__ void f32_gather_rows_kernel(const float* __restrict__ src,      // [*, width]
                                       const int32_t* __restrict__ rows,   // [m]
                                       int width, float* __restrict__ dst) {  // [m, width]
  const int i = blockIdx.x;
  const float* s = src + size_t(rows[i]) * width;
  float* d = dst + size_t(i) * width;
  for (int j = threadIdx.x; j < width; j += blockDim.x) d[j] = s[j];
}

class CudaBackend final : public Backend {
 public:
  explicit CudaBackend(bool batch_invariant) : invariant_(batch_invariant) {
    std::string err;
    GPTOSS_CHECK(cuda::device_count(&err) > 0,
                 "device 'cuda': no usable GPU (" << (err.empty() ? "no devices" : err) << ")");
    GPTOSS_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
    const char* g = std::getenv("GPTOSS_CUDA_GRAPHS");
    graphs_enabled_ = !(g && std::strcmp(g, "0") == 0);
  }
  ~CudaBackend() override {
    drop_graphs();
    for (void* p : owned_) cudaFree(p);
    cudaStreamDestroy(stream_);
  }

  std::string name() const override {
    return std::string(cuda::emulated() ? "cuda (emulated)" : "cuda") +
           (invariant_ ? ", batch-invariant" : "");
  }
  bool host_memory() const override { return false; }

  void* alloc(size_t bytes) override {
    drop_graphs();
    void* p = nullptr;
    GPTOSS_CUDA_CHECK(cudaMalloc(&p, bytes ? bytes : 1));
    GPTOSS_CUDA_CHECK(cudaMemsetAsync(p, 0, bytes, stream_));
    return p;
  }
  void release(void* p) override {
    drop_graphs();
    if (p) GPTOSS_CUDA_CHECK(cudaFree(p));
  }
  void upload(void* dst, const void* src, size_t bytes) override {
    if (bytes)
      GPTOSS_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, stream_));
  }
  void download(void* dst, const void* src, size_t bytes) override {
    if (bytes)
      GPTOSS_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, stream_));
    GPTOSS_CUDA_CHECK(cudaStreamSynchronize(stream_));
  }

  void bind(const Checkpoint& ck) override {
    put(ck.embedding);
    put(ck.unembedding);
    for (const LayerTensors& L : ck.layers) {
      for (const Tensor* t : {&L.q_w, &L.k_w, &L.v_w, &L.out_w, &L.router_w, &L.w1_blocks,
                              &L.w1_scales, &L.w2_blocks, &L.w2_scales})
        put(*t);
    }
    GPTOSS_CUDA_CHECK(cudaStreamSynchronize(stream_));
  }

  void bind_random(const Checkpoint& ck) override {
    fill(ck.embedding);
    fill(ck.unembedding);
    for (const LayerTensors& L : ck.layers) {
      for (const Tensor* t : {&L.q_w, &L.k_w, &L.v_w, &L.out_w, &L.router_w, &L.w1_blocks,
                              &L.w1_scales, &L.w2_blocks, &L.w2_scales})
        fill(*t);
    }
    GPTOSS_CUDA_CHECK(cudaStreamSynchronize(stream_));
  }

  void kv_init(const KVGeometry& g) override {
    geo_ = g;
    kv_.assign(size_t(g.layers), Pool{});
  }
  void kv_reserve(int pages, int slots) override {
    const size_t width = size_t(geo_.kv_width) * 2;
    auto grow = [&](uint16_t** k, uint16_t** v, size_t& have, size_t rows) {
      if (rows <= have) return;
      drop_graphs();
      for (uint16_t** q : {k, v}) {
        uint16_t* n = static_cast<uint16_t*>(raw_alloc(rows * width));
        if (*q) {
          GPTOSS_CUDA_CHECK(
              cudaMemcpyAsync(n, *q, have * width, cudaMemcpyDeviceToDevice, stream_));
          raw_free(*q);
        }
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
  // Ring rows of a slot are contiguous modulo the ring: at most two copies per K and V per layer.
  void kv_snapshot(int slot, int first, int page, bool save) override {
    const size_t width = size_t(geo_.kv_width) * 2;
    const int ring = geo_.ring;
    for (int l = 0; l < geo_.layers; ++l) {
      if (!geo_.ring_layer[size_t(l)]) continue;
      Pool& p = kv_[size_t(l)];
      GPTOSS_CHECK(size_t(page + 1) * geo_.snap <= p.snap_rows,
                   "kv_snapshot: page " << page << " has no snapshot rows");
      int done = 0;
      while (done < geo_.snap) {
        const int r = (first + done) % ring;
        const int cnt = std::min(geo_.snap - done, ring - r);
        const size_t ring_off = (size_t(slot) * ring + size_t(r)) * width;
        const size_t snap_off = (size_t(page) * geo_.snap + size_t(done)) * width;
        for (int kv = 0; kv < 2; ++kv) {
          char* ring_p = reinterpret_cast<char*>(kv ? p.v : p.k) + ring_off;
          char* snap_p = reinterpret_cast<char*>(kv ? p.sv : p.sk) + snap_off;
          GPTOSS_CUDA_CHECK(cudaMemcpyAsync(save ? snap_p : ring_p, save ? ring_p : snap_p,
                                            size_t(cnt) * width, cudaMemcpyDeviceToDevice,
                                            stream_));
        }
        done += cnt;
      }
    }
  }
  void kv_page_copy(int src, int dst) override {
    const size_t bytes = size_t(geo_.page) * size_t(geo_.kv_width) * 2;
    for (int l = 0; l < geo_.layers; ++l) {
      if (geo_.ring_layer[size_t(l)]) continue;
      Pool& p = kv_[size_t(l)];
      GPTOSS_CHECK(size_t(std::max(src, dst) + 1) * geo_.page <= p.rows,
                   "kv_page_copy: page " << std::max(src, dst) << " is not reserved");
      for (uint16_t* base : {p.k, p.v}) {
        char* b = reinterpret_cast<char*>(base);
        GPTOSS_CUDA_CHECK(cudaMemcpyAsync(b + size_t(dst) * bytes, b + size_t(src) * bytes, bytes,
                                          cudaMemcpyDeviceToDevice, stream_));
      }
    }
  }
  int kv_elem_bytes() const override { return 2; }
  void rope_table(const float* cos, const float* sin, int max_pos, int half) override {
    const size_t bytes = size_t(max_pos) * half * sizeof(float);
    cos_ = static_cast<float*>(raw_alloc(bytes));
    sin_ = static_cast<float*>(raw_alloc(bytes));
    upload(cos_, cos, bytes);
    upload(sin_, sin, bytes);
    GPTOSS_CUDA_CHECK(cudaStreamSynchronize(stream_));  // the host tables are temporaries
  }

  void begin_step(const StepRows& r) override {
    grow_step(r.n, r.slots * r.max_pages, r.m);
    n_ = r.n;
    m_ = r.m;
    max_len_ = r.max_len;
    max_pages_ = r.max_pages;
    // staged in host memory owned here, so the asynchronous copies never read freed memory
    stage_.resize(size_t(3 * r.n + r.slots * r.max_pages + r.m));
    int32_t* h = stage_.data();
    std::memcpy(h, r.tokens, sizeof(int32_t) * r.n);
    std::memcpy(h + r.n, r.pos, sizeof(int32_t) * r.n);
    std::memcpy(h + 2 * r.n, r.slot, sizeof(int32_t) * r.n);
    std::memcpy(h + 3 * r.n, r.page_table, sizeof(int32_t) * r.slots * r.max_pages);
    std::memcpy(h + 3 * r.n + r.slots * r.max_pages, r.logit_rows, sizeof(int32_t) * r.m);
    upload(d_tokens_, h, sizeof(int32_t) * r.n);
    upload(d_pos_, h + r.n, sizeof(int32_t) * r.n);
    upload(d_slot_, h + 2 * r.n, sizeof(int32_t) * r.n);
    upload(d_pt_, h + 3 * r.n, sizeof(int32_t) * r.slots * r.max_pages);
    upload(d_logit_rows_, h + 3 * r.n + r.slots * r.max_pages, sizeof(int32_t) * r.m);
    if (r.sample) {
      sample_stage_.assign(r.sample, r.sample + r.m);
      upload(d_sample_, sample_stage_.data(), sizeof(SampleParams) * r.m);
    }
  }

  void embed(const Tensor& emb, int n, float* x) override {
    cuda::embed_bf16(w16(emb), d_tokens_, n, int(emb.shape[1]), x, stream_);
  }
  void add_rmsnorm(float* x, const float* y, int n, int H, const float* w, float eps,
                   float* out) override {
    cuda::f32_add_rmsnorm(x, y, w, n, H, eps, out, stream_);
  }
  void linear(const float* x, int n, const Tensor& W, const float* bias, float* out,
              int ldo) override {
    const int R = int(W.shape[0]), K = int(W.shape[1]);
    // Small matrices (the router, E rows) stay in float32 for any n: a bf16-rounded activation
    // would move router logits by ~2^-9 and flip near-tied expert choices, a discontinuous error.
    // Batch-invariant mode: the GEMV for any n (each row's sums in one order whatever the rows
    // sharing the call), never the bf16 tensor-core GEMM.
    if (n <= 8 || R <= 256 || invariant_) {
      for (int i = 0; i < n; i += 8)
        cuda::f32_bf16w_gemv(x + size_t(i) * K, std::min(8, n - i), K, w16(W), size_t(K), R, bias,
                             out + size_t(i) * ldo, ldo, stream_);
    } else {
      cuda::f32_bf16w_gemm(x, n, K, w16(W), size_t(K), R, bias, out, ldo, stream_);
    }
  }
  void rope_kv_write(float* qkv, int n, int layer, int Hq, int Hkv, int d) override {
    cuda::f32_rope_kv_write(qkv, n, Hq, Hkv, d, d_pos_, d_slot_, cos_, sin_, kv_layer(layer),
                            stream_);
  }
  void attention(const float* qkv, int n, int layer, int Hq, int Hkv, int d, int window,
                 const float* sinks, float* out) override {
    void* ws = invariant_ ? nullptr
                          : workspace(attn_ws_, cuda::attention_workspace_bytes(n, Hq, d, max_len_));
    cuda::f32_bf16kv_attention(qkv, (Hq + 2 * Hkv) * d, n, d_pos_, d_slot_, kv_layer(layer), Hq,
                               Hkv, d, window, sinks, max_len_, ws, out, stream_, invariant_);
  }
  void route(const float* logits, int n, int E, int k, int32_t* experts, float* weights) override {
    cuda::f32_topk_softmax(logits, n, E, k, experts, weights, stream_);
  }
  void moe(const LayerTensors& L, const float* w1_bias, const float* w2_bias, const float* x,
           int n, int H, int I, int k, const int32_t* experts, const float* weights, float alpha,
           float limit, float* out) override {
    const int E = int(L.w1_blocks.shape[0]);
    // Batch-invariant mode: the float32 GEMV path (each token's experts computed on their own)
    // in steps of at most 8 tokens, never the grouped bf16 GEMM.
    const int step = invariant_ ? std::min(n, 8) : n;
    if (step == 0) return;
    void* ws = workspace(moe_ws_, cuda::moe_workspace_bytes(step, H, I, E, k));
    for (int i = 0; i < n; i += step) {
      const int m = std::min(step, n - i);
      cuda::mf4w_moe(x + size_t(i) * H, m, H, I, E, k, experts + size_t(i) * k,
                     weights + size_t(i) * k, w8(L.w1_blocks), w8(L.w1_scales), w1_bias,
                     w8(L.w2_blocks), w8(L.w2_scales), w2_bias, alpha, limit, ws,
                     out + size_t(i) * H, stream_);
    }
  }
  void gather_rows(const float* src, int width, int first, int m, float* dst) override {
    if (m == 0) return;
    GPTOSS_LAUNCH(f32_gather_rows_kernel, unsigned(m), 256, 0, stream_, src,
                  d_logit_rows_ + first, width, dst);
  }
  void sample(const float* logits, int first, int m, int V, int32_t* tokens) override {
    void* ws = workspace(sample_ws_, cuda::sample_workspace_bytes(m, V));
    cuda::sample_tokens(logits, m, V, d_sample_ + first, ws, tokens, stream_);
  }

  void run_graph(uint64_t key, const std::function<void()>& record) override {
    if (!graphs_enabled_) {
      record();
      return;
    }
    auto it = graphs_.find(key);
    if (it != graphs_.end()) {
      GPTOSS_CUDA_CHECK(cudaGraphLaunch(it->second, stream_));
      return;
    }
    if (!seen_.count(key)) {
      // first time: run eagerly, which sizes every workspace the step needs
      record();
      seen_.insert(key);
      return;
    }
    const size_t gen = generation_;
    cudaGraph_t g = nullptr;
    GPTOSS_CUDA_CHECK(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeGlobal));
    try {
      record();
    } catch (...) {
      cudaStreamEndCapture(stream_, &g);
      if (g) cudaGraphDestroy(g);
      throw;
    }
    GPTOSS_CUDA_CHECK(cudaStreamEndCapture(stream_, &g));
    GPTOSS_CHECK(gen == generation_, "a buffer was allocated while a decode step was captured");
    cudaGraphExec_t exec = nullptr;
    GPTOSS_CUDA_CHECK(cudaGraphInstantiate(&exec, g, 0));
    GPTOSS_CUDA_CHECK(cudaGraphDestroy(g));
    graphs_[key] = exec;
    GPTOSS_CUDA_CHECK(cudaGraphLaunch(exec, stream_));
  }

 private:
  struct Pool {
    uint16_t* k = nullptr;
    uint16_t* v = nullptr;
    size_t rows = 0;
    uint16_t* sk = nullptr;  // snapshot rows (ring layers, prefix caching)
    uint16_t* sv = nullptr;
    size_t snap_rows = 0;
  };
  struct Workspace {
    void* p = nullptr;
    size_t bytes = 0;
  };

  void* raw_alloc(size_t bytes) {
    void* p = nullptr;
    GPTOSS_CUDA_CHECK(cudaMalloc(&p, bytes ? bytes : 1));
    owned_.push_back(p);
    return p;
  }
  void raw_free(void* p) {
    for (size_t i = 0; i < owned_.size(); ++i)
      if (owned_[i] == p) {
        owned_.erase(owned_.begin() + long(i));
        break;
      }
    GPTOSS_CUDA_CHECK(cudaFree(p));
  }
  void drop_graphs() {
    for (auto& g : graphs_) cudaGraphExecDestroy(g.second);
    graphs_.clear();
    seen_.clear();
    ++generation_;
  }
  void* workspace(Workspace& w, size_t bytes) {
    if (bytes > w.bytes) {
      drop_graphs();
      if (w.p) raw_free(w.p);
      w.p = raw_alloc(bytes);
      w.bytes = bytes;
    }
    return w.p;
  }
  template <class T>
  void grow_buf(T*& p, int& cap, int need) {
    if (need <= cap) return;
    drop_graphs();
    if (p) raw_free(p);
    cap = std::max(need, 2 * cap);
    p = static_cast<T*>(raw_alloc(sizeof(T) * size_t(cap)));
  }
  void grow_step(int n, int pt, int m) {
    int cn = cap_n_;
    grow_buf(d_tokens_, cn, n);
    cn = cap_n_;
    grow_buf(d_pos_, cn, n);
    cn = cap_n_;
    grow_buf(d_slot_, cn, n);
    cap_n_ = cn;
    grow_buf(d_pt_, cap_pt_, std::max(pt, 1));
    int cm = cap_m_;
    grow_buf(d_logit_rows_, cm, std::max(m, 1));
    cm = cap_m_;
    grow_buf(d_sample_, cm, std::max(m, 1));
    cap_m_ = cm;
  }
  void put(const Tensor& t) {
    if (dev_.count(t.data)) return;
    size_t row = 1;
    for (size_t i = 1; i < t.shape.size(); ++i) row *= size_t(t.shape[i]);
    const size_t esize = t.dtype == DType::BF16 ? 2 : 1;
    const size_t row_bytes = row * esize, rows = size_t(t.shape[0]);
    void* d = raw_alloc(rows * row_bytes);
    if (t.row_stride_bytes == row_bytes || rows == 1) {
      upload(d, t.data, rows * row_bytes);
    } else {
      for (size_t r = 0; r < rows; ++r)
        upload(static_cast<char*>(d) + r * row_bytes, t.data + r * t.row_stride_bytes, row_bytes);
    }
    dev_[t.data] = d;
  }
  // What bind_random() makes in place of put(): the tensor's values as a function of its name
  // and the element index (cuda/fill.cu; gptoss.testing.hollow_fill is the host twin, with the
  // same magnitudes: bf16 matrices of RMS 1/sqrt(row length), MXFP4 experts whose decoded values
  // have RMS about 1/sqrt(fan-in)).
  void fill(const Tensor& t) {
    if (dev_.count(t.data)) return;
    size_t row = 1;
    for (size_t i = 1; i < t.shape.size(); ++i) row *= size_t(t.shape[i]);
    const size_t rows = size_t(t.shape[0]), n = rows * row;
    uint64_t key = 0xcbf29ce484222325ull;  // FNV-1a of the name
    for (unsigned char c : t.name) key = (key ^ c) * 0x100000001b3ull;
    void* d = nullptr;
    if (t.dtype == DType::BF16) {
      d = raw_alloc(n * 2);
      cuda::fill_random_bf16(static_cast<uint16_t*>(d), n, key,
                             float(std::sqrt(3.0 / double(row))), stream_);
    } else if (t.dtype == DType::U8 && t.shape.back() == 16) {
      d = raw_alloc(n);
      cuda::fill_random_codes(static_cast<uint8_t*>(d), n, key, stream_);
    } else if (t.dtype == DType::U8) {
      // E2M1 codes uniform: mean square of |value| over 0, .5, 1, 1.5, 2, 3, 4, 6
      const double e2m1_rms = std::sqrt((0 + .25 + 1 + 2.25 + 4 + 9 + 16 + 36) / 8.0);
      const double fan_in = double(t.shape.back()) * 32;
      const int base = 127 + int(std::nearbyint(std::log2(1.0 / (e2m1_rms * std::sqrt(fan_in)))));
      d = raw_alloc(n);
      cuda::fill_random_scales(static_cast<uint8_t*>(d), n, key, base, stream_);
    } else {
      GPTOSS_CHECK(false, "random_device_weights: tensor '" << t.name << "' has a dtype the "
                                                                "fill does not make");
    }
    dev_[t.data] = d;
  }
  const void* dev(const Tensor& t) const {
    auto it = dev_.find(t.data);
    GPTOSS_CHECK(it != dev_.end(), "tensor '" << t.name << "' was not bound to the device");
    return it->second;
  }
  const uint16_t* w16(const Tensor& t) const { return static_cast<const uint16_t*>(dev(t)); }
  const uint8_t* w8(const Tensor& t) const { return static_cast<const uint8_t*>(dev(t)); }
  cuda::KVLayer kv_layer(int layer) const {
    const Pool& p = kv_[size_t(layer)];
    cuda::KVLayer k;
    k.k = p.k;
    k.v = p.v;
    if (geo_.ring_layer[size_t(layer)]) {
      k.ring = geo_.ring;
    } else {
      k.page_table = d_pt_;
      k.max_pages = max_pages_;
      k.page = geo_.page;
    }
    return k;
  }

  cudaStream_t stream_ = nullptr;
  bool graphs_enabled_ = true;
  bool invariant_ = false;  // Options::batch_invariant
  std::unordered_map<uint64_t, cudaGraphExec_t> graphs_;
  std::unordered_set<uint64_t> seen_;
  size_t generation_ = 0;
  std::vector<void*> owned_;
  std::unordered_map<const void*, void*> dev_;
  KVGeometry geo_;
  std::vector<Pool> kv_;
  float *cos_ = nullptr, *sin_ = nullptr;
  int n_ = 0, m_ = 0, max_len_ = 0, max_pages_ = 0;
  int cap_n_ = 0, cap_pt_ = 0, cap_m_ = 0;
  int32_t *d_tokens_ = nullptr, *d_pos_ = nullptr, *d_slot_ = nullptr, *d_pt_ = nullptr,
          *d_logit_rows_ = nullptr;
  SampleParams* d_sample_ = nullptr;
  std::vector<int32_t> stage_;
  std::vector<SampleParams> sample_stage_;
  Workspace attn_ws_, moe_ws_, sample_ws_;
};

}  // namespace

std::unique_ptr<Backend> make_cuda_backend(bool batch_invariant) {
  return std::unique_ptr<Backend>(new CudaBackend(batch_invariant));
}
bool cuda_backend_compiled() { return true; }

}  // namespace gptoss
