#include "cpu/cpu_features.h"

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <string>

#include "gptoss/error.h"
#if defined(GPTOSS_OPENMP)
#include <omp.h>
#endif
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <cpuid.h>
#endif
#if defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#endif

namespace gptoss {
namespace cpu {

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
// AMX needs three things: the CPU's AMX-TILE, AMX-INT8 and AMX-BF16 (cpuid leaf 7: edx bits 24,
// 25 and 22), the OS saving the tile state (XCR0 bits 17 and 18), and, on Linux, this process's
// permission to use the tile data (arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA); asked once, for the whole
// process). Any of them missing: no AMX, and the kernels below it run.
static bool amx_usable() {
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return false;
  if (!((d >> 22) & 1) || !((d >> 24) & 1) || !((d >> 25) & 1)) return false;  // BF16, TILE, INT8
  if (!__get_cpuid(1, &a, &b, &c, &d) || !((c >> 27) & 1)) return false;  // OSXSAVE
  unsigned lo = 0, hi = 0;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  if ((lo & (3u << 17)) != (3u << 17)) return false;
#if defined(__linux__)
  constexpr long kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
  static const bool granted = ::syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
  return granted;
#else
  return false;  // elsewhere the permission step is not known to us: stay with AVX-512
#endif
}
#endif

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
// AVX-VNNI, the VEX forms of vpdpbusd/vpdpwssd: cpuid leaf 7 subleaf 1, eax bit 4 (the OS's YMM
// state is what AVX2 already needs)
static bool avx_vnni() {
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (!__get_cpuid_count(7, 1, &a, &b, &c, &d)) return false;
  return ((a >> 4) & 1) && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}
#endif

Isa detect_isa() {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  __builtin_cpu_init();
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  // the AVX-512 kernels use F, BW, DQ and VL; with VNNI the MXFP4 integer dot products take
  // vpdpbusd, without it vpmaddubsw + vpmaddwd
  const bool avx512bw = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
  const bool avx512 = avx512bw && __builtin_cpu_supports("avx512vnni");
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 11
  const bool bf16 = avx512 && __builtin_cpu_supports("avx512bf16");
#else
  const bool bf16 = false;
#endif
  if (bf16 && amx_usable()) return Isa::Amx;
  if (bf16) return Isa::Avx512Bf16;
  if (avx512) return Isa::Avx512;
  if (avx512bw) return Isa::Avx512Bw;
  if (avx2 && avx_vnni()) return Isa::Avx2Vnni;
  if (avx2) return Isa::Avx2;
#endif
  return Isa::Plain;
}

bool isa_supported(Isa isa) {
  if (int(isa) > int(detect_isa())) return false;
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  if (isa == Isa::Avx2Vnni) return avx_vnni();
#endif
  return true;
}

static std::atomic<int> g_forced{-1};

// GPTOSS_SIMD=plain|avx2|avx2vnni|avx512bw|avx512|avx512bf16|amx in the environment pins the kernels for a process
// (tests, or a user comparing variants). Kernels may first ask from inside a parallel region,
// where nothing may throw, so a bad value falls back to the best level here and is reported by
// check_simd_env(), which the engine calls when it is created.
static std::string g_env_error;

static Isa initial_isa() {
  const Isa best = detect_isa();
  const char* env = std::getenv("GPTOSS_SIMD");
  if (!env || !*env) return best;
  for (Isa i : kIsas) {
    if (std::strcmp(env, isa_name(i)) == 0) {
      if (isa_supported(i)) return i;
      g_env_error = std::string("GPTOSS_SIMD=") + env + ": this processor does not support it (best: " +
                    isa_name(best) + ")";
      return best;
    }
  }
  g_env_error = std::string("GPTOSS_SIMD=") + env + ": must be " + kIsaNames;
  return best;
}

Isa active_isa() {
  static const Isa initial = initial_isa();
  const int f = g_forced.load();
  return f < 0 ? initial : Isa(f);
}

void check_simd_env() {
  active_isa();
  GPTOSS_CHECK(g_env_error.empty(), g_env_error);
}

void force_isa(Isa isa) {
  GPTOSS_CHECK(isa_supported(isa),
               "this processor does not support the " << isa_name(isa) << " kernels (best: "
                                                       << isa_name(detect_isa()) << ")");
  g_forced.store(int(isa));
}

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::Plain: return "plain";
    case Isa::Avx2: return "avx2";
    case Isa::Avx2Vnni: return "avx2vnni";
    case Isa::Avx512Bw: return "avx512bw";
    case Isa::Avx512: return "avx512";
    case Isa::Avx512Bf16: return "avx512bf16";
    case Isa::Amx: return "amx";
  }
  return "?";
}

int num_threads() {
#if defined(GPTOSS_OPENMP)
  return omp_get_max_threads();
#else
  return 1;
#endif
}

void set_num_threads(int n) {
  GPTOSS_CHECK(n >= 1, "thread count must be at least 1, got " << n);
#if defined(GPTOSS_OPENMP)
  omp_set_num_threads(n);
#endif
}

}  // namespace cpu
}  // namespace gptoss
