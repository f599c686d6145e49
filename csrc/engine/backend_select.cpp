// The CUDA backend where the build has none (csrc/cuda/backend_cuda.cu otherwise): asking
// for it is a clear error, not a fallback.
#include "engine/engine.h"

namespace gptoss {

#if !defined(GPTOSS_WITH_CUDA)
std::unique_ptr<Backend> make_cuda_backend(bool) {
  GPTOSS_CHECK(false, "device 'cuda': this build of gptoss has no CUDA backend (built without "
                      "nvcc, or with GPTOSS_CUDA=OFF; GPTOSS_CUDA=EMULATE builds an emulated one)");
  return nullptr;
}
bool cuda_backend_compiled() { return false; }
#endif

}  // namespace gptoss
