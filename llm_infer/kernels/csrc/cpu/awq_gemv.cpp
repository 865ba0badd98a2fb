// AWQ int4 weights on CPU: y = x W^T with W[n, k] = (q[n, k] - z[n, g]) * s[n, g], g = k / group.
//
// Layout (repacked once at load time from AutoAWQ's): `packed` [N, K/2] bytes, row n holding
// 32-weight blocks of 16 bytes, byte j of a block = q[32b + j] | q[32b + 16 + j] << 4, so the low
// nibbles are the block's first 16 weights and the high nibbles the next 16; `scales` [N, G] fp16
// and `zeros` [N, G] uint8. Per group: y += s * (q . x) - s * z * sum(x), with q . x taken exactly
// (integers 0..15 are exact in bf16) and accumulated in fp32; nothing is dequantised in memory.
#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <vector>

#include "cpu_kernels.h"

namespace llm_infer_cpu {
namespace {

inline float half_to_float(uint16_t h) { return _cvtsh_ss(h); }

// Rows [n0, n0 + nr) against rows [m0, m0 + mb) of x; adds into acc[m][r].
template <int R, int MB, typename T>
void awq_tile(const T* x, const float* xsum, const uint8_t* packed, const uint16_t* scales, const uint8_t* zeros,
              float (&acc)[MB][R], int64_t m0, int mb, int64_t n0, int nr, int64_t N, int64_t K, int64_t group) {
  const int64_t G = K / group;
  const int64_t row_bytes = K / 2;
  float zero_terms[MB][R] = {};
#if defined(__AVX512BF16__) && defined(__AVX512F__)
  __m512 total[MB][R];
  for (int m = 0; m < MB; ++m)
    for (int r = 0; r < R; ++r) total[m][r] = _mm512_setzero_ps();
  const bool ahead = n0 + nr + R <= N;
  if constexpr (sizeof(T) == 2) {
    alignas(64) static const uint16_t table_bits[32] = {
        0x0000, 0x3f80, 0x4000, 0x4040, 0x4080, 0x40a0, 0x40c0, 0x40e0, 0x4100, 0x4110, 0x4120,
        0x4130, 0x4140, 0x4150, 0x4160, 0x4170, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0};
    const __m512i table = _mm512_load_si512(table_bits);  // bf16 of 0..15
    const __m256i low4 = _mm256_set1_epi16(0x000f);
    for (int64_t g = 0; g < G; ++g) {
      __m512 part[MB][R];
      for (int m = 0; m < MB; ++m)
        for (int r = 0; r < R; ++r) part[m][r] = _mm512_setzero_ps();
      for (int64_t k = g * group; k < (g + 1) * group; k += 32) {
        __m512bh qv[R];
        for (int r = 0; r < nr; ++r) {
          const uint8_t* src = packed + (n0 + r) * row_bytes + k / 2;
          if (ahead) _mm_prefetch(reinterpret_cast<const char*>(src + R * row_bytes), _MM_HINT_T0);
          const __m256i wide = _mm256_cvtepu8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src)));
          const __m512i idx = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_and_si256(wide, low4)),
                                                 _mm256_srli_epi16(wide, 4), 1);
          qv[r] = (__m512bh)_mm512_permutexvar_epi16(idx, table);
        }
        for (int m = 0; m < mb; ++m) {
          const __m512bh xv = (__m512bh)_mm512_loadu_si512(x + (m0 + m) * K + k);
          for (int r = 0; r < nr; ++r) part[m][r] = _mm512_dpbf16_ps(part[m][r], qv[r], xv);
        }
      }
      for (int r = 0; r < nr; ++r) {
        const float s = half_to_float(scales[(n0 + r) * G + g]);
        const float zs = s * static_cast<float>(zeros[(n0 + r) * G + g]);
        const __m512 sv = _mm512_set1_ps(s);
        for (int m = 0; m < mb; ++m) {
          total[m][r] = _mm512_fmadd_ps(sv, part[m][r], total[m][r]);
          zero_terms[m][r] += zs * xsum[(m0 + m) * G + g];
        }
      }
    }
  } else {
    const __m512 table = _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    const __m512i low4 = _mm512_set1_epi32(0x0f);
    for (int64_t g = 0; g < G; ++g) {
      __m512 part[MB][R];
      for (int m = 0; m < MB; ++m)
        for (int r = 0; r < R; ++r) part[m][r] = _mm512_setzero_ps();
      for (int64_t k = g * group; k < (g + 1) * group; k += 32) {
        __m512 qlo[R], qhi[R];
        for (int r = 0; r < nr; ++r) {
          const uint8_t* src = packed + (n0 + r) * row_bytes + k / 2;
          if (ahead) _mm_prefetch(reinterpret_cast<const char*>(src + R * row_bytes), _MM_HINT_T0);
          const __m512i wide = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src)));
          qlo[r] = _mm512_permutexvar_ps(_mm512_and_si512(wide, low4), table);
          qhi[r] = _mm512_permutexvar_ps(_mm512_srli_epi32(wide, 4), table);
        }
        for (int m = 0; m < mb; ++m) {
          const float* xr = reinterpret_cast<const float*>(x) + (m0 + m) * K + k;
          const __m512 x0 = _mm512_loadu_ps(xr), x1 = _mm512_loadu_ps(xr + 16);
          for (int r = 0; r < nr; ++r)
            part[m][r] = _mm512_fmadd_ps(qhi[r], x1, _mm512_fmadd_ps(qlo[r], x0, part[m][r]));
        }
      }
      for (int r = 0; r < nr; ++r) {
        const float s = half_to_float(scales[(n0 + r) * G + g]);
        const float zs = s * static_cast<float>(zeros[(n0 + r) * G + g]);
        const __m512 sv = _mm512_set1_ps(s);
        for (int m = 0; m < mb; ++m) {
          total[m][r] = _mm512_fmadd_ps(sv, part[m][r], total[m][r]);
          zero_terms[m][r] += zs * xsum[(m0 + m) * G + g];
        }
      }
    }
  }
  for (int m = 0; m < mb; ++m)
    for (int r = 0; r < nr; ++r) acc[m][r] = _mm512_reduce_add_ps(total[m][r]) - zero_terms[m][r];
#else
  for (int m = 0; m < mb; ++m)
    for (int r = 0; r < nr; ++r) {
      float sum = 0.f;
      for (int64_t g = 0; g < G; ++g) {
        float dot = 0.f;
        for (int64_t k = g * group; k < (g + 1) * group; ++k) {
          const uint8_t byte = packed[(n0 + r) * row_bytes + (k / 32) * 16 + (k % 16)];
          const int q = (k % 32) < 16 ? (byte & 0xf) : (byte >> 4);
          dot += static_cast<float>(q) * load(x, (m0 + m) * K + k);
        }
        const float s = half_to_float(scales[(n0 + r) * G + g]);
        sum += s * dot - s * static_cast<float>(zeros[(n0 + r) * G + g]) * xsum[(m0 + m) * G + g];
      }
      acc[m][r] = sum;
    }
  (void)zero_terms;
#endif
}

template <typename T, int R, int MB>
void awq_gemv_impl(const T* x, const uint8_t* packed, const uint16_t* scales, const uint8_t* zeros, const T* bias,
                   T* y, int64_t M, int64_t N, int64_t K, int64_t group) {
  const int64_t G = K / group;
  std::vector<float> xsum(M * G);
  for (int64_t m = 0; m < M; ++m)
    for (int64_t g = 0; g < G; ++g) {
      float s = 0.f;
      for (int64_t k = g * group; k < (g + 1) * group; ++k) s += load(x, m * K + k);
      xsum[m * G + g] = s;
    }
  const int64_t tiles = (N + R - 1) / R;
#pragma omp parallel if (N * K > 32768)
  {
    const int64_t threads = omp_get_num_threads(), t = omp_get_thread_num();
    const int64_t per = (tiles + threads - 1) / threads;
    for (int64_t i = t * per; i < std::min(tiles, (t + 1) * per); ++i) {
      const int64_t n0 = i * R;
      const int nr = static_cast<int>(std::min<int64_t>(R, N - n0));
      for (int64_t m0 = 0; m0 < M; m0 += MB) {
        const int mb = static_cast<int>(std::min<int64_t>(MB, M - m0));
        float acc[MB][R];
        awq_tile<R, MB>(x, xsum.data(), packed, scales, zeros, acc, m0, mb, n0, nr, N, K, group);
        for (int m = 0; m < mb; ++m)
          for (int r = 0; r < nr; ++r)
            store(y, (m0 + m) * N + n0 + r, acc[m][r] + (bias ? load(bias, n0 + r) : 0.f));
      }
    }
  }
}

}  // namespace

template <typename T>
void awq_gemv(const T* x, const uint8_t* packed, const uint16_t* scales, const uint8_t* zeros, const T* bias, T* y,
              int64_t M, int64_t N, int64_t K, int64_t group) {
  if (M == 1) awq_gemv_impl<T, 4, 1>(x, packed, scales, zeros, bias, y, M, N, K, group);
  else awq_gemv_impl<T, 2, 4>(x, packed, scales, zeros, bias, y, M, N, K, group);
}

template <typename T>
void awq_dequantize(const uint8_t* packed, const uint16_t* scales, const uint8_t* zeros, T* w, int64_t N, int64_t K,
                    int64_t group) {
  const int64_t G = K / group;
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t g = 0; g < G; ++g) {
      const float s = half_to_float(scales[n * G + g]);
      const float z = static_cast<float>(zeros[n * G + g]);
      for (int64_t k = g * group; k < (g + 1) * group; ++k) {
        const uint8_t byte = packed[n * (K / 2) + (k / 32) * 16 + (k % 16)];
        const float q = static_cast<float>((k % 32) < 16 ? (byte & 0xf) : (byte >> 4));
        store(w, n * K + k, (q - z) * s);
      }
    }
  }
}

template void awq_gemv<float>(const float*, const uint8_t*, const uint16_t*, const uint8_t*, const float*, float*,
                              int64_t, int64_t, int64_t, int64_t);
template void awq_gemv<uint16_t>(const uint16_t*, const uint8_t*, const uint16_t*, const uint8_t*, const uint16_t*,
                                 uint16_t*, int64_t, int64_t, int64_t, int64_t);
template void awq_dequantize<float>(const uint8_t*, const uint16_t*, const uint8_t*, float*, int64_t, int64_t,
                                    int64_t);
template void awq_dequantize<uint16_t>(const uint8_t*, const uint16_t*, const uint8_t*, uint16_t*, int64_t, int64_t,
                                       int64_t);

}  // namespace llm_infer_cpu
