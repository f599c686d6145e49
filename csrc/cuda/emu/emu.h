// Host emulation of the CUDA execution model: the subset of CUDA C++ and of the runtime API that
// gptoss's kernels use, so the same .cu source compiles with a host C++ compiler
// (GPTOSS_CUDA_EMULATE) and runs on CPU threads. Included through cuda/runtime.cuh, never directly.
//
// What is emulated, and how faithfully:
// - A block's threads run concurrently: each CUDA thread is a fiber (a stack of its own, switched
//   only at barriers and warp collectives) or, under ThreadSanitizer or GPTOSS_EMU_THREADS=1, an
//   OS thread. Blocks run one after another in a shuffled order (an order assumption shows).
// - __syncthreads is a real barrier over the block's live threads (threads that returned leave it,
//   as on sm_70+); reaching it from two different lines at once is an error. Warp collectives
//   (__shfl*_sync, __ballot_sync, __any/__all_sync, __reduce_*_sync, __syncwarp, mma, ldmatrix)
//   exchange values among the lanes named in the mask, which must all arrive: a named lane that
//   exited, lanes at different collectives, or a deadlock is a launch failure with the kernel,
//   block, thread and collective named, never a hang.
// - Dynamic shared memory belongs to one block, is an exact-size allocation filled with 0xff bytes
//   (NaN as floats) so a read before a write shows; above 48 KB it needs cudaFuncSetAttribute.
//   Device allocations are exact-size host allocations, also filled with 0xff, so
//   AddressSanitizer reports an out-of-bounds access at the kernel line (the emulated memcheck),
//   and with OS threads ThreadSanitizer reports a missing barrier as a data race (the racecheck).
// - cp.async poisons its destination when issued and copies at the cp_async_wait that covers it.
// - Atomics are atomic. Streams are synchronous; errors are returned by the next
//   cudaGetLastError. Stream capture records launches and async copies into a graph that
//   cudaGraphLaunch replays; a synchronous call during capture fails as on the GPU.
// What is not: speed, occupancy, bank conflicts, the memory model's finer points, FMA contraction
// and the approximate intrinsics (compare floats with tolerances), wgmma and TMA (kept out of the
// kernels).
#pragma once
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <tuple>
#include <type_traits>
#include <utility>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__
#define __launch_bounds__(...)
#define __align__(n) alignas(n)
// __shared__ is deliberately left undefined: kernels take shared memory from GPTOSS_DYNAMIC_SMEM.

// ------------------------------------------------------------------------------ vector types
struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct uint3 {
  unsigned x, y, z;
};
#define GPTOSS_EMU_VEC2(T, N, A)                                          \
  struct alignas(A) N {                                                   \
    T x, y;                                                               \
  };                                                                      \
  inline N make_##N(T x, T y) { return N{x, y}; }
#define GPTOSS_EMU_VEC4(T, N, A)                                          \
  struct alignas(A) N {                                                   \
    T x, y, z, w;                                                         \
  };                                                                      \
  inline N make_##N(T x, T y, T z, T w) { return N{x, y, z, w}; }
GPTOSS_EMU_VEC2(float, float2, 8)
GPTOSS_EMU_VEC4(float, float4, 16)
GPTOSS_EMU_VEC2(int, int2, 8)
GPTOSS_EMU_VEC4(int, int4, 16)
GPTOSS_EMU_VEC2(unsigned, uint2, 8)
GPTOSS_EMU_VEC4(unsigned, uint4, 16)
GPTOSS_EMU_VEC2(unsigned short, ushort2, 4)
GPTOSS_EMU_VEC4(unsigned short, ushort4, 8)
#undef GPTOSS_EMU_VEC2
#undef GPTOSS_EMU_VEC4

// The built-in variables, per emulated thread (set by the emulator before a thread runs).
extern thread_local uint3 threadIdx;
extern thread_local uint3 blockIdx;
extern thread_local dim3 blockDim;
extern thread_local dim3 gridDim;
constexpr int warpSize = 32;

// ------------------------------------------------------------------------------ runtime API
enum cudaError_t {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorMemoryAllocation = 2,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorInvalidDevicePointer = 17,
  cudaErrorNoDevice = 100,
  cudaErrorInvalidResourceHandle = 400,
  cudaErrorIllegalAddress = 700,
  cudaErrorLaunchFailure = 719,
  cudaErrorNotSupported = 801,
  cudaErrorStreamCaptureUnsupported = 900,
  cudaErrorStreamCaptureInvalidated = 901,
};
enum cudaMemcpyKind {
  cudaMemcpyHostToHost = 0,
  cudaMemcpyHostToDevice = 1,
  cudaMemcpyDeviceToHost = 2,
  cudaMemcpyDeviceToDevice = 3,
  cudaMemcpyDefault = 4
};
enum cudaStreamCaptureMode {
  cudaStreamCaptureModeGlobal = 0,
  cudaStreamCaptureModeThreadLocal = 1,
  cudaStreamCaptureModeRelaxed = 2
};
enum cudaStreamCaptureStatus {
  cudaStreamCaptureStatusNone = 0,
  cudaStreamCaptureStatusActive = 1,
  cudaStreamCaptureStatusInvalidated = 2
};
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };
enum cudaDeviceAttr { cudaDevAttrMultiProcessorCount = 16, cudaDevAttrMaxSharedMemoryPerBlockOptin = 97 };
constexpr unsigned cudaStreamNonBlocking = 1;

struct cudaDeviceProp {
  char name[256];
  size_t totalGlobalMem;
  size_t sharedMemPerBlock;
  size_t sharedMemPerBlockOptin;
  int warpSize;
  int maxThreadsPerBlock;
  int multiProcessorCount;
  int major, minor;
  int memoryBusWidth;
  int l2CacheSize;
};

struct CUstream_st;
struct CUevent_st;
struct CUgraph_st;
struct CUgraphExec_st;
typedef CUstream_st* cudaStream_t;
typedef CUevent_st* cudaEvent_t;
typedef CUgraph_st* cudaGraph_t;
typedef CUgraphExec_st* cudaGraphExec_t;

cudaError_t cudaMalloc(void** p, size_t bytes);
template <class T>
inline cudaError_t cudaMalloc(T** p, size_t bytes) {
  return cudaMalloc(reinterpret_cast<void**>(p), bytes);
}
cudaError_t cudaFree(void* p);
cudaError_t cudaMallocHost(void** p, size_t bytes);
cudaError_t cudaFreeHost(void* p);
cudaError_t cudaMemcpy(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind);
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind,
                            cudaStream_t s = nullptr);
cudaError_t cudaMemset(void* dst, int value, size_t bytes);
cudaError_t cudaMemsetAsync(void* dst, int value, size_t bytes, cudaStream_t s = nullptr);
cudaError_t cudaMemGetInfo(size_t* free_bytes, size_t* total_bytes);
cudaError_t cudaStreamCreate(cudaStream_t* s);
cudaError_t cudaStreamCreateWithFlags(cudaStream_t* s, unsigned flags);
cudaError_t cudaStreamDestroy(cudaStream_t s);
cudaError_t cudaStreamSynchronize(cudaStream_t s);
cudaError_t cudaDeviceSynchronize();
cudaError_t cudaGetLastError();
cudaError_t cudaPeekAtLastError();
const char* cudaGetErrorString(cudaError_t e);
const char* cudaGetErrorName(cudaError_t e);
cudaError_t cudaGetDeviceCount(int* n);
cudaError_t cudaGetDevice(int* d);
cudaError_t cudaSetDevice(int d);
cudaError_t cudaGetDeviceProperties(cudaDeviceProp* p, int d);
cudaError_t cudaDeviceGetAttribute(int* v, cudaDeviceAttr a, int d);
cudaError_t cudaFuncSetAttribute(const void* func, cudaFuncAttribute a, int value);
template <class... P>
inline cudaError_t cudaFuncSetAttribute(void (*func)(P...), cudaFuncAttribute a, int value) {
  return cudaFuncSetAttribute(reinterpret_cast<const void*>(func), a, value);
}
cudaError_t cudaEventCreate(cudaEvent_t* e);
cudaError_t cudaEventDestroy(cudaEvent_t e);
cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t s = nullptr);
cudaError_t cudaEventSynchronize(cudaEvent_t e);
cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t a, cudaEvent_t b);
cudaError_t cudaStreamBeginCapture(cudaStream_t s, cudaStreamCaptureMode mode);
cudaError_t cudaStreamEndCapture(cudaStream_t s, cudaGraph_t* g);
cudaError_t cudaStreamIsCapturing(cudaStream_t s, cudaStreamCaptureStatus* status);
cudaError_t cudaGraphInstantiate(cudaGraphExec_t* exec, cudaGraph_t g, unsigned long long flags = 0);
cudaError_t cudaGraphLaunch(cudaGraphExec_t exec, cudaStream_t s);
cudaError_t cudaGraphExecDestroy(cudaGraphExec_t exec);
cudaError_t cudaGraphDestroy(cudaGraph_t g);

namespace gptoss_emu {

// ------------------------------------------------------------------------------ the emulator
// Runs (or, on a capturing stream, records) a grid of `body` with the given configuration.
void launch_body(const char* name, const void* kernel, dim3 grid, dim3 block, size_t smem,
                 cudaStream_t s, std::function<void()> body);

template <class... P, class... A>
void launch(const char* name, void (*kernel)(P...), dim3 grid, dim3 block, size_t smem,
            cudaStream_t s, A&&... args) {
  static_assert(sizeof...(P) == sizeof...(A), "kernel launched with the wrong number of arguments");
  // Arguments are converted to the parameter types and copied, as a real launch does.
  std::tuple<std::decay_t<P>...> params(std::forward<A>(args)...);
  launch_body(name, reinterpret_cast<const void*>(kernel), grid, block, smem, s,
              [kernel, params]() { std::apply(kernel, params); });
}

unsigned char* dynamic_smem();  // this block's dynamic shared memory

void block_barrier(const char* file, int line);
int block_barrier_count(const char* file, int line, int pred);  // __syncthreads_count
// All lanes named in mask exchange `bytes` (<= 64) bytes: out receives every lane's data,
// lane i at out + i * bytes (lanes outside the mask: 0xff bytes).
void warp_gather(unsigned mask, const void* mine, size_t bytes, void* out, const char* what);
unsigned lane_id();
[[noreturn]] void trap(const char* what);

void mma_bf16_16816(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]);
void ldmatrix(uint32_t* r, int nmat, bool trans, const void* smem_row);
void cp_async(void* smem, const void* gmem, int bytes, int src_bytes);
void cp_async_commit();
void cp_async_wait(int n);

bool fibers();  // how this process runs emulated threads (false: OS threads)

template <class T>
inline T shfl_from(unsigned mask, T v, int src_of_lane[32], const char* what) {
  static_assert(sizeof(T) <= 8 && std::is_trivially_copyable<T>::value, "shuffle of a large type");
  unsigned char all[32 * sizeof(T)];
  warp_gather(mask, &v, sizeof(T), all, what);
  const int src = src_of_lane[lane_id()];
  if (!(mask >> src & 1u)) trap("a shuffle read a lane that is not in its mask");
  T r;
  std::memcpy(&r, all + size_t(src) * sizeof(T), sizeof(T));
  return r;
}

}  // namespace gptoss_emu

// ------------------------------------------------------------------------------ device functions
#define __syncthreads() ::gptoss_emu::block_barrier(__FILE__, __LINE__)
#define __syncthreads_count(p) ::gptoss_emu::block_barrier_count(__FILE__, __LINE__, (p) ? 1 : 0)
#define __syncthreads_or(p) (::gptoss_emu::block_barrier_count(__FILE__, __LINE__, (p) ? 1 : 0) != 0)
#define __syncthreads_and(p) \
  (::gptoss_emu::block_barrier_count(__FILE__, __LINE__, (p) ? 0 : 1) == 0)

inline void __syncwarp(unsigned mask = 0xffffffffu) {
  ::gptoss_emu::warp_gather(mask, nullptr, 0, nullptr, "__syncwarp");
}

template <class T>
inline T __shfl_sync(unsigned mask, T v, int src, int width = 32) {
  int s[32];
  for (int l = 0; l < 32; ++l) s[l] = (l & ~(width - 1)) + (src & (width - 1));
  return ::gptoss_emu::shfl_from(mask, v, s, "__shfl_sync");
}
template <class T>
inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
  int s[32];
  for (int l = 0; l < 32; ++l) {
    const int t = l ^ lane_mask;
    s[l] = (t & ~(width - 1)) == (l & ~(width - 1)) ? t : l;
  }
  return ::gptoss_emu::shfl_from(mask, v, s, "__shfl_xor_sync");
}
template <class T>
inline T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32) {
  int s[32];
  for (int l = 0; l < 32; ++l) s[l] = (l & (width - 1)) + int(delta) < width ? l + int(delta) : l;
  return ::gptoss_emu::shfl_from(mask, v, s, "__shfl_down_sync");
}
template <class T>
inline T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = 32) {
  int s[32];
  for (int l = 0; l < 32; ++l) s[l] = (l & (width - 1)) >= int(delta) ? l - int(delta) : l;
  return ::gptoss_emu::shfl_from(mask, v, s, "__shfl_up_sync");
}
inline unsigned __ballot_sync(unsigned mask, int pred) {
  unsigned char all[32];
  const unsigned char mine = pred ? 1 : 0;
  ::gptoss_emu::warp_gather(mask, &mine, 1, all, "__ballot_sync");
  unsigned r = 0;
  for (int l = 0; l < 32; ++l)
    if ((mask >> l & 1u) && all[l]) r |= 1u << l;
  return r;
}
inline int __any_sync(unsigned mask, int pred) { return __ballot_sync(mask, pred) != 0; }
inline int __all_sync(unsigned mask, int pred) { return __ballot_sync(mask, pred) == mask; }
#define GPTOSS_EMU_REDUCE(NAME, T, OP)                                         \
  inline T NAME(unsigned mask, T v) {                                          \
    T all[32];                                                                 \
    ::gptoss_emu::warp_gather(mask, &v, sizeof(T), all, #NAME);                \
    bool first = true;                                                         \
    T r = 0;                                                                   \
    for (int l = 0; l < 32; ++l)                                               \
      if (mask >> l & 1u) {                                                    \
        r = first ? all[l] : OP;                                               \
        first = false;                                                         \
      }                                                                        \
    return r;                                                                  \
  }
GPTOSS_EMU_REDUCE(__reduce_add_sync, unsigned, r + all[l])
GPTOSS_EMU_REDUCE(__reduce_min_sync, unsigned, (all[l] < r ? all[l] : r))
GPTOSS_EMU_REDUCE(__reduce_max_sync, unsigned, (all[l] > r ? all[l] : r))
GPTOSS_EMU_REDUCE(__reduce_add_sync, int, r + all[l])
GPTOSS_EMU_REDUCE(__reduce_min_sync, int, (all[l] < r ? all[l] : r))
GPTOSS_EMU_REDUCE(__reduce_max_sync, int, (all[l] > r ? all[l] : r))
#undef GPTOSS_EMU_REDUCE

inline void __trap() { ::gptoss_emu::trap("__trap()"); }
inline void __threadfence() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
inline void __threadfence_block() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }

// Atomics (sequentially consistent; ThreadSanitizer understands them).
template <class T>
inline T atomicAdd(T* p, T v) {
  if constexpr (std::is_floating_point<T>::value) {
    T old = __atomic_load_n(p, __ATOMIC_SEQ_CST);
    while (!__atomic_compare_exchange_n(p, &old, T(old + v), false, __ATOMIC_SEQ_CST,
                                        __ATOMIC_SEQ_CST)) {
    }
    return old;
  } else {
    return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST);
  }
}
template <class T>
inline T atomicSub(T* p, T v) { return __atomic_fetch_sub(p, v, __ATOMIC_SEQ_CST); }
template <class T>
inline T atomicExch(T* p, T v) { return __atomic_exchange_n(p, v, __ATOMIC_SEQ_CST); }
template <class T>
inline T atomicOr(T* p, T v) { return __atomic_fetch_or(p, v, __ATOMIC_SEQ_CST); }
template <class T>
inline T atomicAnd(T* p, T v) { return __atomic_fetch_and(p, v, __ATOMIC_SEQ_CST); }
template <class T>
inline T atomicCAS(T* p, T cmp, T v) {
  __atomic_compare_exchange_n(p, &cmp, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
  return cmp;
}
template <class T>
inline T atomicMax(T* p, T v) {
  T old = __atomic_load_n(p, __ATOMIC_SEQ_CST);
  while (old < v &&
         !__atomic_compare_exchange_n(p, &old, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST)) {
  }
  return old;
}
template <class T>
inline T atomicMin(T* p, T v) {
  T old = __atomic_load_n(p, __ATOMIC_SEQ_CST);
  while (v < old &&
         !__atomic_compare_exchange_n(p, &old, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST)) {
  }
  return old;
}

// Intrinsics: the exact host functions (the GPU's approximate ones differ in the last bits).
inline float __expf(float x) { return expf(x); }
inline float __logf(float x) { return logf(x); }
inline float __sinf(float x) { return sinf(x); }
inline float __cosf(float x) { return cosf(x); }
inline float __powf(float a, float b) { return powf(a, b); }
inline float __fdividef(float a, float b) { return a / b; }
inline float __frcp_rn(float x) { return 1.0f / x; }
inline float __fsqrt_rn(float x) { return sqrtf(x); }
inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
inline float __saturatef(float x) { return x < 0.0f ? 0.0f : (x > 1.0f ? 1.0f : x); }
inline float __fmaf_rn(float a, float b, float c) { return fmaf(a, b, c); }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline void __sincosf(float x, float* s, float* c) { *s = sinf(x); *c = cosf(x); }
inline float __int_as_float(int i) { float f; std::memcpy(&f, &i, 4); return f; }
inline int __float_as_int(float f) { int i; std::memcpy(&i, &f, 4); return i; }
inline float __uint_as_float(unsigned u) { float f; std::memcpy(&f, &u, 4); return f; }
inline unsigned __float_as_uint(float f) { unsigned u; std::memcpy(&u, &f, 4); return u; }
inline int __float2int_rn(float x) { return int(lrintf(x)); }
inline int __float2int_rz(float x) { return int(x); }
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
inline int __clz(unsigned x) { return x ? __builtin_clz(x) : 32; }
inline int __clzll(unsigned long long x) { return x ? __builtin_clzll(x) : 64; }
inline int __ffs(unsigned x) { return __builtin_ffs(int(x)); }
inline unsigned __brev(unsigned x) {
  unsigned r = 0;
  for (int i = 0; i < 32; ++i) r |= ((x >> i) & 1u) << (31 - i);
  return r;
}
inline unsigned __umulhi(unsigned a, unsigned b) {
  return unsigned((unsigned long long)a * b >> 32);
}
inline unsigned long long __umul64hi(unsigned long long a, unsigned long long b) {
  return (unsigned long long)(((unsigned __int128)a * b) >> 64);
}
template <class T>
inline T __ldg(const T* p) { return *p; }

inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }
inline unsigned long long min(unsigned long long a, unsigned long long b) { return a < b ? a : b; }
inline unsigned long long max(unsigned long long a, unsigned long long b) { return a > b ? a : b; }
inline float min(float a, float b) { return fminf(a, b); }
inline float max(float a, float b) { return fmaxf(a, b); }
