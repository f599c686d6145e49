// What SIMD the processor offers, read once at run time (x86: cpuid via the compiler builtins).
#pragma once
#include <string>

namespace gptoss {
namespace cpu {

enum class Isa { Plain = 0, Avx2 = 1, Avx512 = 2, Avx512Bf16 = 3 };

Isa detect_isa();                   // the best this processor supports
Isa active_isa();                   // what the kernels use now (detect_isa() unless forced)
void force_isa(Isa isa);
void check_simd_env();             // throws if GPTOSS_SIMD names an unknown or unsupported level            // tests force each variant; fails if unsupported here
const char* isa_name(Isa isa);
int num_threads();
void set_num_threads(int n);

}  // namespace cpu
}  // namespace gptoss
