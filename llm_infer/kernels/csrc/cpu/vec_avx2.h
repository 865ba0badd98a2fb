// Eight-lane fp32 helpers for the AVX2 + FMA paths (attention.cpp, elementwise.cpp, moe.cpp).
// AVX2 has no bf16 instructions: bf16 widens to fp32 with a 16-bit shift and narrows with the
// same round-to-nearest-even (NaN kept NaN) as f32_to_bf16 in cpu_kernels.h, lane for lane.
// Everything here is defined only when the build targets AVX2 and FMA.
#pragma once

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>

#include <cstdint>

namespace llm_infer_cpu {
namespace avx2 {

// 8 values of p[0:8] as fp32.
inline __m256 load8(const float* p) { return _mm256_loadu_ps(p); }
inline __m256 load8(const uint16_t* p) {
  const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(raw), 16));
}

// The bits of v rounded to bf16 (to nearest, ties to even), still in the high half of each lane;
// a NaN keeps its payload's top bits and gets the quiet bit, as f32_to_bf16.
inline __m256i round_bits(__m256 v) {
  const __m256i bits = _mm256_castps_si256(v);
  const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(bits, 16), _mm256_set1_epi32(1));
  const __m256i rounded = _mm256_add_epi32(bits, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7fff)));
  const __m256i quiet = _mm256_or_si256(bits, _mm256_set1_epi32(0x400000));
  const __m256 nan = _mm256_cmp_ps(v, v, _CMP_UNORD_Q);
  return _mm256_blendv_epi8(rounded, quiet, _mm256_castps_si256(nan));
}

// v rounded to the storage precision of T, as fp32 (round_to in cpu_kernels.h).
inline __m256 round8(const float*, __m256 v) { return v; }
inline __m256 round8(const uint16_t*, __m256 v) {
  return _mm256_castsi256_ps(_mm256_and_si256(round_bits(v), _mm256_set1_epi32(static_cast<int>(0xffff0000u))));
}

inline void store8(float* p, __m256 v) { _mm256_storeu_ps(p, v); }
inline void store8(uint16_t* p, __m256 v) {
  const __m256i hi = _mm256_srli_epi32(round_bits(v), 16);  // 0 .. 0xffff: packus keeps them as they are
  const __m128i packed = _mm_packus_epi32(_mm256_castsi256_si128(hi), _mm256_extracti128_si256(hi, 1));
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p), packed);
}

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}

inline float hmax(__m256 v) {
  __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_max_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_max_ss(s, _mm_movehdup_ps(s)));
}

// exp_approx (cpu_kernels.h) on eight lanes: the same clamp, split and polynomial.
inline __m256 exp8(__m256 x) {
  x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.0f)), _mm256_set1_ps(88.0f));
  const __m256 t = _mm256_mul_ps(x, _mm256_set1_ps(1.4426950408889634f));
  const __m256 n = _mm256_round_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m256 f = _mm256_sub_ps(t, n);
  __m256 p = _mm256_set1_ps(1.5353362e-4f);
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.3398874e-3f));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(9.6184374e-3f));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(5.5503324e-2f));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(2.4022648e-1f));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(6.9314720e-1f));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.0f));
  const __m256i scale = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(scale));
}

// v, kept in a register: for a vector loaded once and used several times. Without it GCC's Zen
// tuning folds the load into every use (one load per FMA), which measured 40% slower in the
// attention kernel.
inline __m256 in_register(__m256 v) {
  asm("" : "+x"(v));
  return v;
}

// Lanes [0, count) all ones, the others zero (count in 0 .. 8).
inline __m256 first_lanes(int64_t count) {
  const __m256i index = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  return _mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(count)), index));
}

}  // namespace avx2
}  // namespace llm_infer_cpu
#endif
