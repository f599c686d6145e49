// The backend interface: the kernels and the allocator a device supplies to the engine. The layer
// loop (engine.cpp) calls only these, so it is written once for every device. All float* buffers
// are backend memory (host memory for the CPU backend, device memory for a GPU backend); weights
// are named by the checkpoint's Tensor, which a backend may have copied or repacked in bind().
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

#include "cpu/kernels.h"
#include "engine/checkpoint.h"

namespace gptoss {

class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string name() const = 0;
  virtual void* alloc(size_t bytes) = 0;
  virtual void release(void* p) = 0;
  virtual void from_host(void* dst, const void* src, size_t bytes) = 0;
  virtual void to_host(void* dst, const void* src, size_t bytes) = 0;

  // Make the checkpoint's tensors usable by this backend (a GPU backend uploads them here).
  virtual void bind(const Checkpoint& ck) = 0;

  // x [n, H] = embedding rows of tokens (host ids, already range-checked)
  virtual void embed(const Tensor& emb, const int32_t* tokens, int n, float* x) = 0;
  // out [n, H] = rmsnorm(x) * w
  virtual void rmsnorm(const float* x, int n, int H, const float* w, float eps, float* out) = 0;
  // out[t, r] (row stride ldo) = W[r, :] . x[t, :] + bias[r]; W is a bf16 matrix [R, K]
  virtual void linear(const float* x, int n, const Tensor& W, const float* bias, float* out,
                      int ldo) = 0;
  // RoPE in place on `heads` heads of width d at the start of each row (row stride ld)
  virtual void rope(float* x, int n, int heads, int d, int ld, const float* cos,
                    const float* sin) = 0;
  // copy rows: dst[i * dst_ld : + width] = src[i * src_ld : + width] for i < rows
  virtual void copy_rows(float* dst, int dst_ld, const float* src, int src_ld, int rows,
                         int width) = 0;
  // kv: one cache view per query row (rows of a batch may belong to different sequences)
  virtual void attention(const float* q, int n, int ldq, const int32_t* qpos,
                         const cpu::KVView* kv, int Hq, int Hkv, int d, int window,
                         const float* sinks, float* out) = 0;
  // x += y
  virtual void add(float* x, const float* y, size_t count) = 0;
  // router logits [n, E] -> experts [n, k] and their softmax weights [n, k] (host arrays)
  virtual void route(const float* logits, int n, int E, int k, int32_t* experts,
                     float* weights) = 0;
  // out [n, H] = sum_j weights[t, j] * expert(experts[t, j], t[t]) for layer L's experts;
  // levels: how finely activations are quantized for the MXFP4 products (2: float32-class, 1: int8)
  virtual void moe(const LayerTensors& L, const float* w1_bias, const float* w2_bias,
                   const float* t, int n, int H, int I, int k, const int32_t* experts,
                   const float* weights, float alpha, float limit, int levels, float* out) = 0;
};

}  // namespace gptoss
