// Device queries and the checked memory helpers of kernels.h, for the engine and the bindings
// (which include no CUDA header). The same file builds for the GPU and for the emulation.
#include <algorithm>
#include <vector>

#include "cuda/kernels.h"
#include "cuda/runtime.cuh"

namespace gptoss {
namespace cuda {

int device_count(std::string* err) {
  int n = 0;
  cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) {
    if (err) *err = cudaGetErrorString(e);
    cudaGetLastError();  // clear the error so later queries start clean
    return 0;
  }
  return n;
}

std::string device_name(int device) {
  cudaDeviceProp p;
  GPTOSS_CUDA_CHECK(cudaGetDeviceProperties(&p, device));
  return p.name;
}

bool emulated() {
#if defined(GPTOSS_CUDA_EMULATE)
  return true;
#else
  return false;
#endif
}

int current_device() {
  int d = 0;
  GPTOSS_CUDA_CHECK(cudaGetDevice(&d));
  return d;
}

void* device_alloc(size_t bytes) {
  void* p = nullptr;
  GPTOSS_CUDA_CHECK(cudaMalloc(&p, bytes ? bytes : 1));
  return p;
}

void device_free(void* p) {
  if (p) GPTOSS_CUDA_CHECK(cudaFree(p));
}

void copy_to_device(void* dst, const void* src, size_t bytes, Stream s) {
  if (bytes)
    GPTOSS_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice,
                                      static_cast<cudaStream_t>(s)));
}

void copy_to_host(void* dst, const void* src, size_t bytes, Stream s) {
  if (bytes)
    GPTOSS_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost,
                                      static_cast<cudaStream_t>(s)));
}

void memset_device(void* dst, int value, size_t bytes, Stream s) {
  if (bytes) GPTOSS_CUDA_CHECK(cudaMemsetAsync(dst, value, bytes, static_cast<cudaStream_t>(s)));
}

void device_copy(void* dst, const void* src, size_t bytes, Stream s) {
  if (bytes)
    GPTOSS_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice,
                                      static_cast<cudaStream_t>(s)));
}

void synchronize(Stream s) {
  GPTOSS_CUDA_CHECK(cudaStreamSynchronize(static_cast<cudaStream_t>(s)));
  GPTOSS_CUDA_CHECK(cudaGetLastError());
}

Stream stream_create() {
  cudaStream_t s = nullptr;
  GPTOSS_CUDA_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  return s;
}

void stream_destroy(Stream s) {
  if (s) cudaStreamDestroy(static_cast<cudaStream_t>(s));
}

double time_ms(const std::function<void(Stream)>& fn, int iters, Stream s) {
  GPTOSS_CHECK(iters >= 1, "time_ms: iters must be >= 1");
  cudaStream_t st = static_cast<cudaStream_t>(s);
  cudaEvent_t e0, e1;
  GPTOSS_CUDA_CHECK(cudaEventCreate(&e0));
  GPTOSS_CUDA_CHECK(cudaEventCreate(&e1));
  std::vector<float> ms;
  try {
    for (int i = 0; i <= iters; ++i) {
      GPTOSS_CUDA_CHECK(cudaEventRecord(e0, st));
      fn(s);
      GPTOSS_CUDA_CHECK(cudaEventRecord(e1, st));
      GPTOSS_CUDA_CHECK(cudaEventSynchronize(e1));
      float t = 0;
      GPTOSS_CUDA_CHECK(cudaEventElapsedTime(&t, e0, e1));
      if (i > 0) ms.push_back(t);
    }
  } catch (...) {
    cudaEventDestroy(e0);
    cudaEventDestroy(e1);
    throw;
  }
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

}  // namespace cuda
}  // namespace gptoss
