// int8 weights with one fp32 scale per output row (the LM head, optionally):
// y[m, n] = s[n] * sum_k w[n, k] * x[m, k]. Weights are widened to fp32 in registers;
// activations are converted to fp32 once per call. Streamed like the other GEMVs, 4 rows of
// activations per pass over the weights. AVX-512F: 16 weights per vector, K's tail masked;
// AVX2 + FMA: 8 per vector (vpmovsxbd + vcvtdq2ps + FMA), K's tail (K % 8) summed in scalar
// after the vector sum.
#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <vector>

#include "cpu_kernels.h"
#include "vec_avx2.h"

namespace llm_infer_cpu {
namespace {

#define LLM_UNROLL _Pragma("GCC unroll 32")

// Weight rows [n0, n0 + R) against fp32 activation rows [m0, m0 + MB): each weight vector is
// widened once and used for all MB rows. Every output is the same sequence of fused
// multiply-adds along K and the same horizontal sum whatever MB is, so a row's result does not
// depend on the rows beside it.
template <int R, int MB>
void int8_tile(const float* xf, const int8_t* w, const float* scales, float* out, int64_t m0, int64_t n0, int64_t N,
               int64_t K) {
#if defined(__AVX512F__)
  __m512 acc[MB][R];
  LLM_UNROLL for (int m = 0; m < MB; ++m)
    LLM_UNROLL for (int r = 0; r < R; ++r) acc[m][r] = _mm512_setzero_ps();
  const bool ahead = n0 + 2 * R <= N;
  for (int64_t k = 0; k < K; k += 16) {
    const __mmask16 mask = K - k >= 16 ? 0xffff : static_cast<__mmask16>((1u << (K - k)) - 1);
    __m512 wv[R];
    LLM_UNROLL for (int r = 0; r < R; ++r) {
      const int8_t* src = w + (n0 + r) * K + k;
      if (ahead && (k & 63) == 0) _mm_prefetch(reinterpret_cast<const char*>(src + R * K), _MM_HINT_T0);
      wv[r] = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(mask, src)));
    }
    LLM_UNROLL for (int m = 0; m < MB; ++m) {
      const __m512 xv = _mm512_maskz_loadu_ps(mask, xf + (m0 + m) * K + k);
      LLM_UNROLL for (int r = 0; r < R; ++r) acc[m][r] = _mm512_fmadd_ps(wv[r], xv, acc[m][r]);
    }
  }
  LLM_UNROLL for (int m = 0; m < MB; ++m)
    LLM_UNROLL for (int r = 0; r < R; ++r)
      out[(m0 + m) * N + n0 + r] = scales[n0 + r] * _mm512_reduce_add_ps(acc[m][r]);
#elif defined(__AVX2__) && defined(__FMA__)
  __m256 acc[MB][R];
  LLM_UNROLL for (int m = 0; m < MB; ++m)
    LLM_UNROLL for (int r = 0; r < R; ++r) acc[m][r] = _mm256_setzero_ps();
  const bool ahead = n0 + 2 * R <= N;
  const int64_t K8 = K & ~int64_t{7};
  for (int64_t k = 0; k < K8; k += 8) {
    __m256 wv[R];
    LLM_UNROLL for (int r = 0; r < R; ++r) {
      const int8_t* src = w + (n0 + r) * K + k;
      if (ahead && (k & 63) == 0) _mm_prefetch(reinterpret_cast<const char*>(src + R * K), _MM_HINT_T0);
      wv[r] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(src))));
    }
    LLM_UNROLL for (int m = 0; m < MB; ++m) {
      const __m256 xv = _mm256_loadu_ps(xf + (m0 + m) * K + k);
      LLM_UNROLL for (int r = 0; r < R; ++r) acc[m][r] = _mm256_fmadd_ps(wv[r], xv, acc[m][r]);
    }
  }
  for (int m = 0; m < MB; ++m)
    for (int r = 0; r < R; ++r) {
      float s = avx2::hsum(acc[m][r]);
      for (int64_t k = K8; k < K; ++k) s += static_cast<float>(w[(n0 + r) * K + k]) * xf[(m0 + m) * K + k];
      out[(m0 + m) * N + n0 + r] = scales[n0 + r] * s;
    }
#else
  for (int m = 0; m < MB; ++m)
    for (int r = 0; r < R; ++r) {
      float s = 0.f;
      for (int64_t k = 0; k < K; ++k) s += static_cast<float>(w[(n0 + r) * K + k]) * xf[(m0 + m) * K + k];
      out[(m0 + m) * N + n0 + r] = scales[n0 + r] * s;
    }
#endif
}

// Weight rows [n0, n0 + R) against every activation row: MB at a time, then one by one.
template <int R, int MB>
void int8_rows(const float* xf, const int8_t* w, const float* scales, float* out, int64_t M, int64_t n0, int64_t N,
               int64_t K) {
  int64_t m0 = 0;
  for (; m0 + MB <= M; m0 += MB) int8_tile<R, MB>(xf, w, scales, out, m0, n0, N, K);
  for (; m0 < M; ++m0) int8_tile<R, 1>(xf, w, scales, out, m0, n0, N, K);
}

template <int R, int MB>
void int8_matmul(const float* xf, const int8_t* w, const float* scales, float* out, int64_t M, int64_t N, int64_t K) {
  const int64_t tiles = N / R;
#pragma omp parallel if (N * K > 16384)
  {
    const int64_t threads = omp_get_num_threads(), t = omp_get_thread_num();
    const int64_t per = (tiles + threads - 1) / threads;
    for (int64_t i = t * per; i < std::min(tiles, (t + 1) * per); ++i)
      int8_rows<R, MB>(xf, w, scales, out, M, i * R, N, K);
  }
  for (int64_t n0 = tiles * R; n0 < N; ++n0) int8_rows<1, MB>(xf, w, scales, out, M, n0, N, K);
}

}  // namespace

// One row: 8 weight rows per tile. Several rows: 4 activation rows per tile, so the weights
// stream once per 4 rows instead of once per row, beside 4 weight rows (AVX-512: 16 accumulators
// of its 32 registers) or 2 (AVX2: 8 of its 16).
#if defined(__AVX512F__) || !defined(__AVX2__)
constexpr int kRowsPerTileBatched = 4;
#else
constexpr int kRowsPerTileBatched = 2;
#endif

template <typename T>
void int8_gemv(const T* x, const int8_t* w, const float* scales, T* y, int64_t M, int64_t N, int64_t K) {
  std::vector<float> xf(M * K), out(M * N);
  for (int64_t i = 0; i < M * K; ++i) xf[i] = load(x, i);
  if (M == 1) int8_matmul<8, 1>(xf.data(), w, scales, out.data(), M, N, K);
  else int8_matmul<kRowsPerTileBatched, 4>(xf.data(), w, scales, out.data(), M, N, K);
  for (int64_t i = 0; i < M * N; ++i) store(y, i, out[i]);
}

template void int8_gemv<float>(const float*, const int8_t*, const float*, float*, int64_t, int64_t, int64_t);
template void int8_gemv<uint16_t>(const uint16_t*, const int8_t*, const float*, uint16_t*, int64_t, int64_t,
                                  int64_t);

const char* int8_gemv_isa() {
#if defined(__AVX512F__)
  return "AVX-512F";
#elif defined(__AVX2__) && defined(__FMA__)
  return "AVX2 + FMA";
#else
  return "scalar";
#endif
}

}  // namespace llm_infer_cpu
