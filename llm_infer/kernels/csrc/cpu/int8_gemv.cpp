// int8 weights with one fp32 scale per output row (the LM head, optionally):
// y[m, n] = s[n] * sum_k w[n, k] * x[m, k]. Weights are widened to fp32 in registers;
// activations are converted to fp32 once per call. Streamed like the other GEMVs.
#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <vector>

#include "cpu_kernels.h"

namespace llm_infer_cpu {
namespace {

template <int R>
void int8_rows(const float* x, const int8_t* w, const float* scales, float* out, int64_t n0, int64_t N, int64_t K) {
#if defined(__AVX512F__)
  __m512 acc[R];
  for (int r = 0; r < R; ++r) acc[r] = _mm512_setzero_ps();
  const bool ahead = n0 + 2 * R <= N;
  for (int64_t k = 0; k < K; k += 16) {
    const __mmask16 mask = K - k >= 16 ? 0xffff : static_cast<__mmask16>((1u << (K - k)) - 1);
    const __m512 xv = _mm512_maskz_loadu_ps(mask, x + k);
    for (int r = 0; r < R; ++r) {
      const int8_t* src = w + (n0 + r) * K + k;
      if (ahead && (k & 63) == 0) _mm_prefetch(reinterpret_cast<const char*>(src + R * K), _MM_HINT_T0);
      const __m512 wv = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(mask, src)));
      acc[r] = _mm512_fmadd_ps(wv, xv, acc[r]);
    }
  }
  for (int r = 0; r < R; ++r) out[n0 + r] = scales[n0 + r] * _mm512_reduce_add_ps(acc[r]);
#else
  for (int r = 0; r < R; ++r) {
    float s = 0.f;
    for (int64_t k = 0; k < K; ++k) s += static_cast<float>(w[(n0 + r) * K + k]) * x[k];
    out[n0 + r] = scales[n0 + r] * s;
  }
#endif
}

}  // namespace

template <typename T>
void int8_gemv(const T* x, const int8_t* w, const float* scales, T* y, int64_t M, int64_t N, int64_t K) {
  constexpr int R = 8;
  std::vector<float> xf(K), out(N);
  for (int64_t m = 0; m < M; ++m) {
    for (int64_t k = 0; k < K; ++k) xf[k] = load(x, m * K + k);
    const int64_t tiles = N / R;
#pragma omp parallel if (N * K > 16384)
    {
      const int64_t threads = omp_get_num_threads(), t = omp_get_thread_num();
      const int64_t per = (tiles + threads - 1) / threads;
      for (int64_t i = t * per; i < std::min(tiles, (t + 1) * per); ++i)
        int8_rows<R>(xf.data(), w, scales, out.data(), i * R, N, K);
    }
    for (int64_t n0 = tiles * R; n0 < N; ++n0) int8_rows<1>(xf.data(), w, scales, out.data(), n0, N, K);
    for (int64_t n = 0; n < N; ++n) store(y, m * N + n, out[n]);
  }
}

template void int8_gemv<float>(const float*, const int8_t*, const float*, float*, int64_t, int64_t, int64_t);
template void int8_gemv<uint16_t>(const uint16_t*, const int8_t*, const float*, uint16_t*, int64_t, int64_t,
                                  int64_t);

}  // namespace llm_infer_cpu
