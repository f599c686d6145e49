// What SIMD the processor offers, read once at run time (x86: cpuid via the compiler builtins).
#pragma once
#include <cstdint>
#include <string>

namespace gptoss {
namespace cpu {

// Each level includes the ones before it, except avx2vnni. avx2: AVX2 + FMA; avx2vnni: those plus
// the VEX-encoded AVX-VNNI (vpdpbusd/vpdpwssd on 256 bits: e.g. Alder Lake and later Intel
// desktops without AVX-512), which the AVX-512 levels need not have (a Zen 4 has not), so it is
// asked for by isa_supported(), not by order; avx512bw: AVX-512 F/BW/DQ/VL (e.g. Skylake-SP);
// avx512: those plus VNNI (vpdpbusd); avx512bf16: plus BF16; amx: plus the AMX tiles with int8
// and bf16 dot products (AMX-TILE, AMX-INT8, AMX-BF16), enabled by the OS and granted to this
// process.
enum class Isa { Plain = 0, Avx2 = 1, Avx2Vnni = 2, Avx512Bw = 3, Avx512 = 4, Avx512Bf16 = 5, Amx = 6 };
constexpr Isa kIsas[] = {Isa::Plain,  Isa::Avx2,   Isa::Avx2Vnni,   Isa::Avx512Bw,
                         Isa::Avx512, Isa::Avx512Bf16, Isa::Amx};
constexpr const char* kIsaNames = "plain, avx2, avx2vnni, avx512bw, avx512, avx512bf16 or amx";

Isa detect_isa();                   // the best this processor supports
bool isa_supported(Isa isa);        // whether this processor can run that level's kernels
Isa active_isa();                   // what the kernels use now (detect_isa() unless forced)
void force_isa(Isa isa);
void check_simd_env();             // throws if GPTOSS_SIMD names an unknown or unsupported level
const char* isa_name(Isa isa);
int num_threads();
void set_num_threads(int n);

// The AMX kernels' ldtilecfg memory operand (palette 1): tile i has rows[i] rows of colsb[i] bytes.
struct alignas(64) AmxTileConfig {
  uint8_t palette = 1, start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

}  // namespace cpu
}  // namespace gptoss
