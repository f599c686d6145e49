// float32 -> bf16 in AVX-512, shared by the AMX kernels' activation terms (gemm_bf16.cpp,
// mxfp4_r16.cpp).
#pragma once
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>

namespace gptoss {
namespace cpu {

// bf16(v) rounded to nearest even in the low 16 bits of each lane, a NaN a quiet NaN: the bits
// f32_to_bf16 (common/numeric.h) gives
__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq"), always_inline)) inline __m512i
bf16_rne_avx512(__m512 v) {
  const __m512i u = _mm512_castps_si512(v);
  const __m512i r = _mm512_srli_epi32(
      _mm512_add_epi32(_mm512_add_epi32(u, _mm512_set1_epi32(0x7fff)),
                       _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1))),
      16);
  return _mm512_mask_mov_epi32(r, _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q), _mm512_set1_epi32(0x7fc0));
}

// n floats (a multiple of 16) to their bf16 bits, as bf16_rne_avx512
__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq"))) inline void bf16_round_avx512(
    const float* x, size_t n, uint16_t* out) {
  for (size_t i = 0; i < n; i += 16)
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + i),
                        _mm512_cvtepi32_epi16(bf16_rne_avx512(_mm512_loadu_ps(x + i))));
}

}  // namespace cpu
}  // namespace gptoss
#endif
