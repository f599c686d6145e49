// CUDA kernels (layer 1): launch wrappers taking raw device pointers, sizes and a stream. Each
// wrapper checks its preconditions, computes the grid, launches and checks the launch; nothing
// else writes <<< >>>. This header includes no CUDA header, so the engine and the bindings can
// use it from plain C++. The same wrappers exist in a GPU build (nvcc) and in an emulated build
// (GPTOSS_CUDA_EMULATE: every kernel runs on the CPU through csrc/cuda/emu/).
//
// Conventions: activations f32 unless the name says bf16; bf16 values travel as uint16_t bits;
// shapes are given next to each pointer, row-major. No kernel writes its outputs with float
// atomics: every reduction has a fixed order, so results repeat bit for bit.
#pragma once
#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>

#include "common/sample_params.h"

namespace gptoss {
namespace cuda {

using Stream = void*;  // a cudaStream_t

// Usable devices; on failure 0 and the error text in *err. Under emulation: 1.
int device_count(std::string* err);
std::string device_name(int device);
bool emulated();  // true in a GPTOSS_CUDA_EMULATE build
int current_device();  // the calling thread's device (cudaGetDevice); 0 under emulation

// ------------------------------------------------------------------------------------ KV cache
// One layer's KV cache in device memory, bf16, a row of Hkv * d values per position.
// Paged layers (ring == 0): position p of the sequence in slot s lives in row
//   page_table[s * max_pages + p / page] * page + p % page.
// Ring layers (sliding window, ring > 0): row s * ring + p % ring.
struct KVLayer {
  uint16_t* k = nullptr;                // [rows, Hkv, d]
  uint16_t* v = nullptr;                // [rows, Hkv, d]
  const int32_t* page_table = nullptr;  // [slots, max_pages] (paged layers)
  int max_pages = 0;
  int page = 0;
  int ring = 0;
};

// ------------------------------------------------------------------------------------ dense
// x [n, H] = float(emb[tokens[i]]); emb bf16 [V, H].
void embed_bf16(const uint16_t* emb, const int32_t* tokens, int n, int H, float* x, Stream s);

// If y: x += y (the residual add, x updated in place). Then out [n, H] = x * rsqrt(mean(x^2) +
// eps) * w.
void f32_add_rmsnorm(float* x, const float* y, const float* w, int n, int H, float eps,
                     float* out, Stream s);

// Decode GEMV, n <= 8 rows of activations: out[t * ldo + r] = W[r, :] . x[t, :] + bias[r]
// (bias may be null). W bf16 [R, K] with row stride ldw elements (16-byte aligned rows), x f32 [n, K].
void f32_bf16w_gemv(const float* x, int n, int K, const uint16_t* W, size_t ldw, int R,
                    const float* bias, float* out, int ldo, Stream s);

// Prefill GEMM on tensor cores: the same product for any n >= 1, x f32 [n, K] rounded to bf16 as
// it is staged, f32 accumulation.
void f32_bf16w_gemm(const float* x, int n, int K, const uint16_t* W, size_t ldw, int R,
                     const float* bias, float* out, int ldo, Stream s);

// ------------------------------------------------------------------------------------ attention
// RoPE (half-split, tables already scaled by the YaRN concentration) on the Hq query heads and
// the Hkv key heads of each row of qkv [n, (Hq + 2 Hkv) * d] in place, then the row's key and
// value (bf16) written into the cache at (row_seq[t], pos[t]). cos, sin: [max_pos, d / 2].
void f32_rope_kv_write(float* qkv, int n, int Hq, int Hkv, int d, const int32_t* pos,
                       const int32_t* row_seq, const float* cos, const float* sin, KVLayer kv,
                       Stream s);

// Attention with sinks, GQA (query head h reads kv head h / (Hq / Hkv)) and window (0: none)
// for n query rows, each at its own (row_seq[t], pos[t]) seeing positions
// max(0, pos - window + 1) .. pos of its sequence; q [n, Hq, d] with row stride ldq floats;
// sinks [Hq]; out [n, Hq * d]. max_len: an upper bound (host) on the keys any row sees, which
// sizes the split-KV work; the kernels read the real lengths from pos on the device.
// workspace: attention_workspace_bytes(n, Hq, d, max_len) bytes.
// per_row: every row, for any n, takes the decode path with its keys in one split, so a row's
// result depends on its own position and the cache alone, never on n or max_len (the CUDA
// backend's batch-invariant mode; slower prefill and long-context decode; no workspace).
size_t attention_workspace_bytes(int n, int Hq, int d, int max_len);
void f32_bf16kv_attention(const float* q, int ldq, int n, const int32_t* pos,
                          const int32_t* row_seq, KVLayer kv, int Hq, int Hkv, int d, int window,
                          const float* sinks, int max_len, void* workspace, float* out,
                          Stream s, bool per_row = false);

// ------------------------------------------------------------------------------------ MoE
// Router: logits [n, E] -> the k largest (ties: lower index first) and their softmax.
void f32_topk_softmax(const float* logits, int n, int E, int k, int32_t* experts, float* weights,
                      Stream s);

// MoE for n tokens: y [n, H] = sum_j weights[t, j] * expert(experts[t, j], x[t]), the slots
// summed in order j = 0..k-1. W1: blocks [E, 2I, H/32, 16], scales [E, 2I, H/32], b1 f32 [E, 2I]
// (rows interleave gate and linear); W2: blocks [E, H, I/32, 16], scales [E, H, I/32], b2 [E, H].
// x f32 [n, H]. Small n: GEMVs over the routed experts; larger n: tokens grouped by expert on
// the device and tensor-core grouped GEMMs. No host synchronisation (graph-capturable).
// workspace: moe_workspace_bytes(n, H, I, E, k) bytes.
size_t moe_workspace_bytes(int n, int H, int I, int E, int k);
void mf4w_moe(const float* x, int n, int H, int I, int E, int k,
              const int32_t* experts, const float* weights, const uint8_t* w1_blocks,
              const uint8_t* w1_scales, const float* b1, const uint8_t* w2_blocks,
              const uint8_t* w2_scales, const float* b2, float alpha, float limit,
              void* workspace, float* y, Stream s);

// ------------------------------------------------------------------------------------ sampling
// Sampling parameters per row (device memory): common/sample_params.h.
using SampleParams = ::gptoss::SampleParams;
size_t sample_workspace_bytes(int n, int V);
void sample_tokens(const float* logits, int n, int V, const SampleParams* params, void* workspace,
                   int32_t* tokens, Stream s);

// ------------------------------------------------------------------------------------ MXFP4
// MXFP4 -> bf16. blocks [rows, nb, 16] u8, scales [rows, nb] u8 -> out [rows, nb * 32] bf16 bits.
void bf16_mf4_dequant(const uint8_t* blocks, const uint8_t* scales, size_t rows, size_t nb,
                      uint16_t* out, Stream s);

// ------------------------------------------------------------------------------------ random fill
// Seeded random weights in device memory (cuda/fill.cu; the host twin is gptoss.testing.hollow_fill):
// value i of a tensor is a function of (key, i) only. bf16: uniform on [-a, a); codes: uniform
// bytes; scales: base or base - 1.
void fill_random_bf16(uint16_t* dst, size_t n, uint64_t key, float a, Stream s);
void fill_random_codes(uint8_t* dst, size_t n, uint64_t key, Stream s);
void fill_random_scales(uint8_t* dst, size_t n, uint64_t key, int base, Stream s);

// ------------------------------------------------------------------------------------ memory
// Thin checked wrappers the engine and the bindings use (no CUDA header needed).
void* device_alloc(size_t bytes);
void device_free(void* p);
void copy_to_device(void* dst, const void* src, size_t bytes, Stream s);   // async on s
void copy_to_host(void* dst, const void* src, size_t bytes, Stream s);     // async on s
void memset_device(void* dst, int value, size_t bytes, Stream s);
void device_copy(void* dst, const void* src, size_t bytes, Stream s);       // device -> device
void synchronize(Stream s);
Stream stream_create();
void stream_destroy(Stream s);
// Median device milliseconds of `iters` runs of fn(stream) (one warm-up run first), timed with
// events on the stream: for benchmarks of device-resident work.
double time_ms(const std::function<void(Stream)>& fn, int iters, Stream s);

}  // namespace cuda
}  // namespace gptoss
