// Self-test kernels (see selftest.h). Each wrapper allocates, launches and copies back
// synchronously: these are tests, not part of any decode path.
#include "cuda/selftest.h"

#include <vector>

#include "cuda/kernels.h"
#include "cuda/mma.cuh"

namespace gptoss {
namespace cuda {
namespace {

struct Buf {
  void* p;
  size_t n;
  explicit Buf(size_t bytes) : p(device_alloc(bytes)), n(bytes) {}
  ~Buf() { cudaFree(p); }
  template <class T>
  T* as() { return static_cast<T*>(p); }
};

struct WarpSmem {
  int32_t partial[2];
};

__global__ void selftest_warp_kernel(const int32_t* in,  // [64]
                                     int32_t* out) {     // [64, 8]
  GPTOSS_DYNAMIC_SMEM(WarpSmem, sm);
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const int v = in[tid];
  int s = v;
  for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
  int32_t* o = out + tid * 8;
  o[0] = s;
  o[1] = __shfl_down_sync(0xffffffffu, v, 3);
  o[2] = __shfl_up_sync(0xffffffffu, v, 5);
  o[3] = __shfl_sync(0xffffffffu, v, 7);
  o[4] = int32_t(__ballot_sync(0xffffffffu, lane % 3 == 0));
  if (lane == 0) sm->partial[warp] = s;
  __syncthreads();
  o[5] = sm->partial[0] + sm->partial[1];
  o[6] = __syncthreads_count(tid & 1);
  o[7] = int32_t(__reduce_max_sync(0xffffffffu, unsigned(lane * 7 % 32)));
}

__device__ __forceinline__ uint32_t pair(const uint16_t* p) {
  return uint32_t(p[0]) | (uint32_t(p[1]) << 16);
}

__global__ void selftest_mma_kernel(const uint16_t* A,  // [16, 16]
                                    const uint16_t* B,  // [16, 8] (k, n)
                                    float* D) {         // [16, 8]
  const int lane = threadIdx.x, g = lane / 4, t = lane % 4;
  uint32_t a[4], b[2];
  for (int j = 0; j < 4; ++j) a[j] = pair(A + (g + 8 * (j & 1)) * 16 + 2 * t + 8 * (j >> 1));
  for (int j = 0; j < 2; ++j) {
    const int k = 2 * t + 8 * j;
    b[j] = uint32_t(B[k * 8 + g]) | (uint32_t(B[(k + 1) * 8 + g]) << 16);
  }
  float d[4] = {0.f, 0.f, 0.f, 0.f};
  mma_bf16_16816(d, a, b);
  for (int i = 0; i < 4; ++i) D[(g + 8 * (i >> 1)) * 8 + 2 * t + (i & 1)] = d[i];
}

struct TileSmem {
  uint16_t a[16 * 16];
  uint16_t w[8 * 16];
};

__global__ void selftest_mma_ldmatrix_kernel(const uint16_t* A,  // [16, 16]
                                             const uint16_t* W,  // [8, 16]
                                             float* D) {         // [16, 8]
  GPTOSS_DYNAMIC_SMEM(TileSmem, sm);
  const int lane = threadIdx.x, g = lane / 4, t = lane % 4;
  // 16 B chunks: A has 32, W 16
  cp_async_16(sm->a + lane * 8, A + lane * 8);
  if (lane < 16) cp_async_16(sm->w + lane * 8, W + lane * 8);
  cp_async_commit();
  cp_async_wait<0>();
  __syncwarp();
  uint32_t a[4], b[2];
  // A fragment: lanes 0-15 give rows 0-15 at column 0, lanes 16-31 rows 0-15 at column 8
  ldmatrix_x4(a, sm->a + (lane % 16) * 16 + (lane / 16) * 8);
  // W [n][k]: matrix j is W[0:8, 8j:8j+8], lanes 0-7 (j = 0) and 8-15 (j = 1) give its rows
  ldmatrix_x2(b, sm->w + (lane % 8) * 16 + ((lane / 8) % 2) * 8);
  float d[4] = {0.f, 0.f, 0.f, 0.f};
  mma_bf16_16816(d, a, b);
  for (int i = 0; i < 4; ++i) D[(g + 8 * (i >> 1)) * 8 + 2 * t + (i & 1)] = d[i];
}

struct LdSmem {
  uint16_t m[4 * 64];
};

__global__ void selftest_ldmatrix_kernel(const uint16_t* M,  // [4, 8, 8]
                                         int trans, uint32_t* out) {  // [32, 4]
  GPTOSS_DYNAMIC_SMEM(LdSmem, sm);
  const int lane = threadIdx.x;
  for (int i = lane; i < 4 * 64; i += 32) sm->m[i] = M[i];
  __syncwarp();
  uint32_t r[4];
  const uint16_t* row = sm->m + (lane / 8) * 64 + (lane % 8) * 8;
  if (trans)
    ldmatrix_x4_trans(r, row);
  else
    ldmatrix_x4(r, row);
  for (int j = 0; j < 4; ++j) out[lane * 4 + j] = r[j];
}

struct CpSmem {
  uint4 chunk[64];
};

__global__ void selftest_cp_async_kernel(const uint4* in, int n, int partial, uint4* out) {
  GPTOSS_DYNAMIC_SMEM(CpSmem, sm);
  const int i = threadIdx.x;
  if (i < n / 2) cp_async_16(&sm->chunk[i], &in[i]);
  cp_async_commit();
  if (i >= n / 2 && i < n) cp_async_16(&sm->chunk[i], &in[i], i == n - 1 ? 16 - partial : 16);
  cp_async_commit();
  cp_async_wait<1>();  // the first group has landed
  cp_async_wait<0>();  // and the second
  __syncthreads();
  if (i < n) out[i] = sm->chunk[i];
}

struct BadSmem {
  float v[64];
};

__global__ void bad_lane_exited_kernel(float* out) {
  if (threadIdx.x == 31) return;
  out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, float(threadIdx.x), 1);
}
__global__ void bad_divergent_barrier_kernel(float* out) {
  if (threadIdx.x < 16) {
    __syncthreads();
  } else {
    __syncthreads();
  }
  out[threadIdx.x] = 1.0f;
}
__global__ void bad_mixed_collectives_kernel(float* out) {
  if (threadIdx.x % 2)
    out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, 1.0f, 1);
  else
    out[threadIdx.x] = float(__ballot_sync(0xffffffffu, 1));
}
__global__ void bad_racy_kernel(float* out) {
  GPTOSS_DYNAMIC_SMEM(BadSmem, sm);
  sm->v[threadIdx.x] = float(threadIdx.x);
  // missing __syncthreads(): a neighbour's write races with this read
  out[threadIdx.x] = sm->v[(threadIdx.x + 1) % 64];
}
__global__ void bad_uninitialised_kernel(float* out) {
  GPTOSS_DYNAMIC_SMEM(BadSmem, sm);
  if (threadIdx.x == 0) sm->v[0] = 1.0f;
  __syncthreads();
  if (threadIdx.x == 0) out[0] = sm->v[1];
}
__global__ void bad_smem_limit_kernel(float* out) { out[threadIdx.x] = 0.0f; }

}  // namespace

void selftest_warp(const int32_t* in, int32_t* out) {
  Buf i(64 * 4), o(64 * 8 * 4);
  copy_to_device(i.p, in, 64 * 4, nullptr);
  GPTOSS_LAUNCH(selftest_warp_kernel, 1, 64, sizeof(WarpSmem), nullptr, i.as<int32_t>(),
                o.as<int32_t>());
  copy_to_host(out, o.p, 64 * 8 * 4, nullptr);
  synchronize(nullptr);
}

void selftest_mma(const uint16_t* A, const uint16_t* B, float* D) {
  Buf a(16 * 16 * 2), b(16 * 8 * 2), d(16 * 8 * 4);
  copy_to_device(a.p, A, a.n, nullptr);
  copy_to_device(b.p, B, b.n, nullptr);
  GPTOSS_LAUNCH(selftest_mma_kernel, 1, 32, 0, nullptr, a.as<const uint16_t>(),
                b.as<const uint16_t>(), d.as<float>());
  copy_to_host(D, d.p, d.n, nullptr);
  synchronize(nullptr);
}

void selftest_mma_ldmatrix(const uint16_t* A, const uint16_t* W, float* D) {
  Buf a(16 * 16 * 2), w(8 * 16 * 2), d(16 * 8 * 4);
  copy_to_device(a.p, A, a.n, nullptr);
  copy_to_device(w.p, W, w.n, nullptr);
  GPTOSS_LAUNCH(selftest_mma_ldmatrix_kernel, 1, 32, sizeof(TileSmem), nullptr,
                a.as<const uint16_t>(), w.as<const uint16_t>(), d.as<float>());
  copy_to_host(D, d.p, d.n, nullptr);
  synchronize(nullptr);
}

void selftest_ldmatrix(const uint16_t* M, bool trans, uint32_t* out) {
  Buf m(4 * 64 * 2), o(32 * 4 * 4);
  copy_to_device(m.p, M, m.n, nullptr);
  GPTOSS_LAUNCH(selftest_ldmatrix_kernel, 1, 32, sizeof(LdSmem), nullptr, m.as<const uint16_t>(),
                trans ? 1 : 0, o.as<uint32_t>());
  copy_to_host(out, o.p, o.n, nullptr);
  synchronize(nullptr);
}

void selftest_cp_async(const uint8_t* in, int n, int partial, uint8_t* out) {
  GPTOSS_CHECK(n >= 1 && n <= 64 && partial >= 0 && partial <= 16,
               "selftest_cp_async: n in [1, 64], partial in [0, 16]");
  Buf i(size_t(n) * 16), o(size_t(n) * 16);
  copy_to_device(i.p, in, i.n, nullptr);
  GPTOSS_LAUNCH(selftest_cp_async_kernel, 1, 64, sizeof(CpSmem), nullptr, i.as<const uint4>(), n,
                partial, o.as<uint4>());
  copy_to_host(out, o.p, o.n, nullptr);
  synchronize(nullptr);
}

void selftest_bad(const std::string& which, float* out) {
  Buf o(64 * 4);
  float* p = o.as<float>();
  if (which == "lane_exited")
    GPTOSS_LAUNCH(bad_lane_exited_kernel, 1, 32, 0, nullptr, p);
  else if (which == "divergent_barrier")
    GPTOSS_LAUNCH(bad_divergent_barrier_kernel, 1, 32, 0, nullptr, p);
  else if (which == "mixed_collectives")
    GPTOSS_LAUNCH(bad_mixed_collectives_kernel, 1, 32, 0, nullptr, p);
  else if (which == "racy")
    GPTOSS_LAUNCH(bad_racy_kernel, 1, 64, sizeof(BadSmem), nullptr, p);
  else if (which == "uninitialised_smem")
    GPTOSS_LAUNCH(bad_uninitialised_kernel, 1, 64, sizeof(BadSmem), nullptr, p);
  else if (which == "smem_limit")
    GPTOSS_LAUNCH(bad_smem_limit_kernel, 1, 32, 64 * 1024, nullptr, p);
  else
    GPTOSS_CHECK(false, "selftest_bad: unknown case '" << which << "'");
  copy_to_host(out, p, 4, nullptr);
  synchronize(nullptr);
}

}  // namespace cuda
}  // namespace gptoss
