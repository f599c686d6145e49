// GPTOSS_CUDA_CHECK: every CUDA call goes through it; a failure throws gptoss::Error naming the
// call, the CUDA error and the file and line.
#pragma once
#include <cuda_runtime.h>

#include "gptoss/error.h"

#define GPTOSS_CUDA_CHECK(call)                                                           \
  do {                                                                                    \
    cudaError_t gptoss_err_ = (call);                                                     \
    if (gptoss_err_ != cudaSuccess) {                                                     \
      ::gptoss::fail(__FILE__, __LINE__, std::string(#call) + ": " +                      \
                                             cudaGetErrorString(gptoss_err_));           \
    }                                                                                     \
  } while (0)
