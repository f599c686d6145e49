// The backend contract: what a device supplies to the engine's layer loop (engine.cpp), which is
// written once for every device. Every call only enqueues work on the backend's stream; nothing in
// a step synchronises with the host except download(). So a GPU backend keeps a whole step on the
// device: routing results, positions, cache writes and sampling stay there, and a decode step can
// be captured once as a CUDA graph and replayed (run_graph).
//
// - Memory: float* / int32_t* buffers passed to the ops are backend memory (host memory for the
//   CPU backend, device memory for a GPU backend), allocated with alloc().
// - Weights: bind() makes the checkpoint usable (a GPU backend uploads it; the CPU backend uses the
//   mapping in place) and ops name weights by the checkpoint's Tensor.
// - The step: begin_step() copies the step's rows (token ids, positions, sequence slots) and the
//   page table into buffers at fixed addresses that the ops read, so a captured graph stays valid
//   when a later step has other tokens and positions.
// - The KV cache belongs to the backend and has its own element type (bf16 on a GPU, f32 on the
//   CPU); the engine only hands out integers: a sequence slot per sequence, and page ids for the
//   paged (full-attention) layers. Paged layers: position p of slot s is row
//   page_table[s][p / page] * page + p % page; ring (sliding-window) layers: row s * ring + p % ring.
// - Prefix caching (engine.cpp) shares full pages between sequences; to resume a sequence at a
//   page boundary B the ring layers also need positions B - snap .. B - 1, so each page id has a
//   snapshot of `snap` rows per ring layer (kv_snapshot saves a slot's ring rows into it, or loads
//   them back into another slot's ring).
// This header includes nothing from cpu/ or cuda/.
#pragma once
#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "common/sample_params.h"
#include "engine/checkpoint.h"

namespace gptoss {

struct KVGeometry {
  int layers = 0;
  std::vector<bool> ring_layer;  // [layers]: true for sliding-window layers
  int kv_width = 0;              // Hkv * d values per position
  int kv_heads = 0;              // Hkv
  int page = 0;                  // positions per page (paged layers)
  int ring = 0;                  // slots per ring (ring layers)
  int snap = 0;                  // rows per page id in each ring layer's snapshot pool (0: none)
  // cache rows layer l needs for `pages` pages and `slots` sequences
  size_t rows(int l, int pages, int slots) const {
    return ring_layer[size_t(l)] ? size_t(slots) * ring : size_t(pages) * page;
  }
  // snapshot rows layer l needs for `pages` page ids (ring layers only)
  size_t snap_rows(int l, int pages) const {
    return ring_layer[size_t(l)] ? size_t(pages) * snap : 0;
  }
};

using SampleRow = SampleParams;  // per-row sampling parameters (common/sample_params.h)

// One step, as host arrays: n rows (token, position, sequence slot), the page table
// [slots, max_pages], and the m rows whose logits are wanted, with their sampling parameters.
struct StepRows {
  int n = 0;
  const int32_t* tokens = nullptr;
  const int32_t* pos = nullptr;
  const int32_t* slot = nullptr;
  const int32_t* page_table = nullptr;
  int slots = 0, max_pages = 0;
  int max_len = 0;  // an upper bound on the keys any row sees (for planning split-KV work)
  int m = 0;
  const int32_t* logit_rows = nullptr;  // [m] row indices
  const SampleRow* sample = nullptr;    // [m] or null
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string name() const = 0;
  virtual void* alloc(size_t bytes) = 0;
  virtual void release(void* p) = 0;
  // host -> backend, ordered on the backend's stream (src must stay valid until then)
  virtual void upload(void* dst, const void* src, size_t bytes) = 0;
  // backend -> host; waits for the work enqueued before it
  virtual void download(void* dst, const void* src, size_t bytes) = 0;

  virtual void bind(const Checkpoint& ck) = 0;
  // Instead of bind(): the same matrices as seeded random values made where the backend keeps
  // them (Options::random_device_weights); only a device backend can.
  virtual void bind_random(const Checkpoint& ck);
  // How the weights are held, for people (e.g. "experts repacked ...: mapped PATH"); may be empty.
  virtual std::string weights_note() const { return ""; }

  // KV cache: the geometry once, then room for at least `pages` pages and `slots` sequences.
  virtual void kv_init(const KVGeometry& g) = 0;
  virtual void kv_reserve(int pages, int slots) = 0;
  // Every ring layer: positions first .. first + snap - 1 of `slot` (ring rows) copied into the
  // snapshot of page id `page` (save), or from it into the slot's ring rows (load). Ordered on the
  // backend's stream like a step.
  virtual void kv_snapshot(int slot, int first, int page, bool save) = 0;
  // Every paged layer: the rows of page id src copied over those of page id dst (a sequence
  // continuing a cached partial page gets its own copy). Ordered on the backend's stream.
  virtual void kv_page_copy(int src, int dst) = 0;
  // Bytes of one element of the KV cache (4: float32, 2: bf16).
  virtual int kv_elem_bytes() const = 0;

  // The RoPE table: cos, sin [max_pos, half], already scaled by the YaRN concentration.
  virtual void rope_table(const float* cos, const float* sin, int max_pos, int half) = 0;

  // Copies the step's rows into the backend's step buffers (fixed addresses between steps unless
  // a step is larger than any before).
  virtual void begin_step(const StepRows& rows) = 0;

  // ---- the ops; each works on the n rows of the current step
  // x [n, H] = embedding rows of the step's tokens
  virtual void embed(const Tensor& emb, int n, float* x) = 0;
  // if y: x += y; then out [n, H] = rmsnorm(x) * w
  virtual void add_rmsnorm(float* x, const float* y, int n, int H, const float* w, float eps,
                           float* out) = 0;
  // out[t, r] (row stride ldo) = W[r, :] . x[t, :] + bias[r]; W is a bf16 matrix [R, K]
  virtual void linear(const float* x, int n, const Tensor& W, const float* bias, float* out,
                      int ldo) = 0;
  // RoPE on the query and key heads of qkv [n, (Hq + 2 Hkv) * d] in place, then the rows' keys
  // and values written into layer `layer`'s cache at (slot, pos)
  virtual void rope_kv_write(float* qkv, int n, int layer, int Hq, int Hkv, int d) = 0;
  // attention of the step's rows against layer `layer`'s cache (queries in qkv), out [n, Hq * d]
  virtual void attention(const float* qkv, int n, int layer, int Hq, int Hkv, int d, int window,
                         const float* sinks, float* out) = 0;
  // router logits [n, E] -> experts [n, k] and softmax weights [n, k] (backend memory)
  virtual void route(const float* logits, int n, int E, int k, int32_t* experts,
                     float* weights) = 0;
  // out [n, H] = sum_j weights[t, j] * expert(experts[t, j], x[t]) for layer L's experts
  virtual void moe(const LayerTensors& L, const float* w1_bias, const float* w2_bias,
                   const float* x, int n, int H, int I, int k, const int32_t* experts,
                   const float* weights, float alpha, float limit, float* out) = 0;
  // dst[i] = src[logit_rows[first + i]] for i < m (rows of width floats)
  virtual void gather_rows(const float* src, int width, int first, int m, float* dst) = 0;
  // tokens [m] (backend memory) sampled from logits [m, V] with the step's parameters of rows
  // first .. first + m - 1
  virtual void sample(const float* logits, int first, int m, int V, int32_t* tokens) = 0;
  // true when backend memory is host memory (outputs can be written straight to the caller)
  virtual bool host_memory() const = 0;

  // Runs `record` (a sequence of ops) now, or as a graph captured under `key` and replayed;
  // a backend without graphs simply calls it.
  virtual void run_graph(uint64_t /*key*/, const std::function<void()>& record) { record(); }
};

}  // namespace gptoss
