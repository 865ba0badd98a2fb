// AWQ int4 weights on CPU: y = x W^T with W[n, k] = (q[n, k] - z[n, g]) * s[n, g], g = k / group.
//
// Layout (repacked once at load time from AutoAWQ's): `packed` [N, K/2] bytes; each 64-weight
// superblock of a row is 32 bytes, byte i = q[64b + i] | q[64b + 32 + i] << 4, so one 32-byte load
// gives two 32-lane vectors of weights in natural order. `scales` [N, G] fp32 and `zeros` [N, G]
// uint8 (group a multiple of 64). Per group: y += s * (q . x) - s * z * sum(x).
//
// bf16 activations: a nibble OR 0x4300 is the bf16 number 128 + q, exact, so the weights become
// bf16 without a table lookup; the 128 * sum(x) this adds is removed with the zero point. The dot
// products accumulate in fp32 (AVX512-BF16), nothing is dequantised in memory.
#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <vector>

#include "cpu_kernels.h"

namespace llm_infer_cpu {
namespace {

constexpr float kBias = 128.0f;  // bf16 0x4300 | q == 128 + q

// Rows [n0, n0 + R) against rows [m0, m0 + mb) of x; writes acc[m][r]. R is a compile-time
// constant so the accumulators stay in registers (a runtime row count made them spill).
template <int R, int MB, typename T>
void awq_tile(const T* x, const float* xsum, const uint8_t* packed, const float* scales, const uint8_t* zeros,
              float (&acc)[MB][R], int64_t m0, int64_t n0, int64_t N, int64_t K, int64_t group) {
  constexpr int nr = R, mb = MB;
  const int64_t G = K / group;
  const int64_t row_bytes = K / 2;
#if defined(__AVX512BF16__)
  constexpr bool bf16 = sizeof(T) == 2;
  const float offset = bf16 ? kBias : 0.0f;
  __m512 total[MB][R];
  for (int m = 0; m < MB; ++m)
    for (int r = 0; r < R; ++r) total[m][r] = _mm512_setzero_ps();
  const bool ahead = n0 + nr + R <= N;
  const __m512i low4_16 = _mm512_set1_epi16(0x000f), bias_bits = _mm512_set1_epi16(0x4300);
  const __m512i low4_32 = _mm512_set1_epi32(0x0f);
  for (int64_t g = 0; g < G; ++g) {
    __m512 part[MB][R];
    for (int m = 0; m < MB; ++m)
      for (int r = 0; r < R; ++r) part[m][r] = _mm512_setzero_ps();
    for (int64_t k = g * group; k < (g + 1) * group; k += 64) {
      if constexpr (bf16) {
        __m512bh x0[MB], x1[MB];  // the activations of this superblock, loaded once for all rows
        for (int m = 0; m < mb; ++m) {
          const uint16_t* xr = reinterpret_cast<const uint16_t*>(x) + (m0 + m) * K + k;
          x0[m] = (__m512bh)_mm512_loadu_si512(xr);
          x1[m] = (__m512bh)_mm512_loadu_si512(xr + 32);
        }
        for (int r = 0; r < nr; ++r) {
          const uint8_t* src = packed + (n0 + r) * row_bytes + k / 2;
          if (ahead) _mm_prefetch(reinterpret_cast<const char*>(src + R * row_bytes), _MM_HINT_T0);
          const __m512i wide = _mm512_cvtepu8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(src)));
          const __m512bh lo = (__m512bh)_mm512_or_si512(_mm512_and_si512(wide, low4_16), bias_bits);
          const __m512bh hi = (__m512bh)_mm512_or_si512(_mm512_srli_epi16(wide, 4), bias_bits);
          for (int m = 0; m < mb; ++m) {
            part[m][r] = _mm512_dpbf16_ps(part[m][r], lo, x0[m]);
            part[m][r] = _mm512_dpbf16_ps(part[m][r], hi, x1[m]);
          }
        }
      } else {
        for (int r = 0; r < nr; ++r) {
          const uint8_t* src = packed + (n0 + r) * row_bytes + k / 2;
          if (ahead) _mm_prefetch(reinterpret_cast<const char*>(src + R * row_bytes), _MM_HINT_T0);
          for (int c = 0; c < 2; ++c) {  // 16 bytes: weights 16c..16c+15 (low) and 32+16c.. (high)
            const __m512i wide = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + 16 * c)));
            const __m512 lo = _mm512_cvtepi32_ps(_mm512_and_si512(wide, low4_32));
            const __m512 hi = _mm512_cvtepi32_ps(_mm512_srli_epi32(wide, 4));
            for (int m = 0; m < mb; ++m) {
              const float* xr = reinterpret_cast<const float*>(x) + (m0 + m) * K + k + 16 * c;
              part[m][r] = _mm512_fmadd_ps(lo, _mm512_loadu_ps(xr), part[m][r]);
              part[m][r] = _mm512_fmadd_ps(hi, _mm512_loadu_ps(xr + 32), part[m][r]);
            }
          }
        }
      }
    }
    for (int r = 0; r < nr; ++r) {
      const __m512 sv = _mm512_set1_ps(scales[(n0 + r) * G + g]);
      for (int m = 0; m < mb; ++m) total[m][r] = _mm512_fmadd_ps(sv, part[m][r], total[m][r]);
    }
  }
  // The zero points (and the bf16 bias of 128), once per row rather than once per group.
  for (int r = 0; r < nr; ++r) {
    const float* s = scales + (n0 + r) * G;
    const uint8_t* z = zeros + (n0 + r) * G;
    for (int m = 0; m < mb; ++m) {
      float zt = 0.f;
      for (int64_t g = 0; g < G; ++g) zt += s[g] * (static_cast<float>(z[g]) + offset) * xsum[(m0 + m) * G + g];
      acc[m][r] = _mm512_reduce_add_ps(total[m][r]) - zt;
    }
  }
#else
  for (int m = 0; m < mb; ++m)
    for (int r = 0; r < nr; ++r) {
      float sum = 0.f;
      for (int64_t g = 0; g < G; ++g) {
        float dot = 0.f;
        for (int64_t k = g * group; k < (g + 1) * group; ++k) {
          const uint8_t byte = packed[(n0 + r) * row_bytes + (k / 64) * 32 + (k % 32)];
          const int q = (k % 64) < 32 ? (byte & 0xf) : (byte >> 4);
          dot += static_cast<float>(q) * load(x, (m0 + m) * K + k);
        }
        const float s = scales[(n0 + r) * G + g];
        sum += s * dot - s * static_cast<float>(zeros[(n0 + r) * G + g]) * xsum[(m0 + m) * G + g];
      }
      acc[m][r] = sum;
    }
#endif
}

template <int R, int MB, typename T>
void awq_rows(const T* x, const float* xsum, const uint8_t* packed, const float* scales, const uint8_t* zeros,
              const T* bias, T* y, int64_t M, int64_t n0, int64_t N, int64_t K, int64_t group) {
  int64_t m0 = 0;
  for (; m0 + MB <= M; m0 += MB) {
    float acc[MB][R];
    awq_tile<R, MB>(x, xsum, packed, scales, zeros, acc, m0, n0, N, K, group);
    for (int m = 0; m < MB; ++m)
      for (int r = 0; r < R; ++r) store(y, (m0 + m) * N + n0 + r, acc[m][r] + (bias ? load(bias, n0 + r) : 0.f));
  }
  for (; m0 < M; ++m0) {  // activation rows left over: one at a time
    float acc[1][R];
    awq_tile<R, 1>(x, xsum, packed, scales, zeros, acc, m0, n0, N, K, group);
    for (int r = 0; r < R; ++r) store(y, m0 * N + n0 + r, acc[0][r] + (bias ? load(bias, n0 + r) : 0.f));
  }
}

template <typename T, int R, int MB>
void awq_gemv_impl(const T* x, const uint8_t* packed, const float* scales, const uint8_t* zeros, const T* bias, T* y,
                   int64_t M, int64_t N, int64_t K, int64_t group) {
  const int64_t G = K / group;
  std::vector<float> xsum(M * G);
  for (int64_t m = 0; m < M; ++m)
    for (int64_t g = 0; g < G; ++g) {
      float s = 0.f;
      for (int64_t k = g * group; k < (g + 1) * group; ++k) s += load(x, m * K + k);
      xsum[m * G + g] = s;
    }
  const int64_t tiles = N / R;
#pragma omp parallel if (N * K > 32768)
  {
    const int64_t threads = omp_get_num_threads(), t = omp_get_thread_num();
    const int64_t per = (tiles + threads - 1) / threads;
    for (int64_t i = t * per; i < std::min(tiles, (t + 1) * per); ++i)
      awq_rows<R, MB>(x, xsum.data(), packed, scales, zeros, bias, y, M, i * R, N, K, group);
  }
  for (int64_t n0 = tiles * R; n0 < N; ++n0)  // rows left over: one at a time
    awq_rows<1, MB>(x, xsum.data(), packed, scales, zeros, bias, y, M, n0, N, K, group);
}

}  // namespace

template <typename T>
void awq_gemv(const T* x, const uint8_t* packed, const float* scales, const uint8_t* zeros, const T* bias, T* y,
              int64_t M, int64_t N, int64_t K, int64_t group) {
  if (M == 1) awq_gemv_impl<T, 4, 1>(x, packed, scales, zeros, bias, y, M, N, K, group);
  else awq_gemv_impl<T, 2, 4>(x, packed, scales, zeros, bias, y, M, N, K, group);
}

template <typename T>
void awq_dequantize(const uint8_t* packed, const float* scales, const uint8_t* zeros, T* w, int64_t N, int64_t K,
                    int64_t group) {
  const int64_t G = K / group;
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t g = 0; g < G; ++g) {
      const float s = scales[n * G + g];
      const float z = static_cast<float>(zeros[n * G + g]);
      for (int64_t k = g * group; k < (g + 1) * group; ++k) {
        const uint8_t byte = packed[n * (K / 2) + (k / 64) * 32 + (k % 32)];
        const float q = static_cast<float>((k % 64) < 32 ? (byte & 0xf) : (byte >> 4));
        store(w, n * K + k, (q - z) * s);
      }
    }
  }
}

template void awq_gemv<float>(const float*, const uint8_t*, const float*, const uint8_t*, const float*, float*,
                              int64_t, int64_t, int64_t, int64_t);
template void awq_gemv<uint16_t>(const uint16_t*, const uint8_t*, const float*, const uint8_t*, const uint16_t*,
                                 uint16_t*, int64_t, int64_t, int64_t, int64_t);
template void awq_dequantize<float>(const uint8_t*, const float*, const uint8_t*, float*, int64_t, int64_t,
                                    int64_t);
template void awq_dequantize<uint16_t>(const uint8_t*, const float*, const uint8_t*, uint16_t*, int64_t, int64_t,
                                       int64_t);

}  // namespace llm_infer_cpu
