// Small-M matrix-vector products for decode: the weight matrix is streamed from
// memory once per call (once per 4 rows of x), which is what bounds decode speed.
// Each thread streams one contiguous range of weight rows and prefetches the next
// tile's rows while it works on the current one (measured: ~22 -> ~29 GB/s on 2 cores).
#include <immintrin.h>
#include <omp.h>

#include <algorithm>

#include "cpu_kernels.h"

namespace llm_infer_cpu {
namespace {

// Tile loops are fully unrolled so their accumulator arrays live in registers.
#define LLM_UNROLL _Pragma("GCC unroll 32")

#if defined(__AVX512F__)
inline __mmask16 tail_mask16(int64_t n) { return n >= 16 ? 0xffff : static_cast<__mmask16>((1u << n) - 1); }
inline __mmask32 tail_mask32(int64_t n) { return n >= 32 ? 0xffffffffu : static_cast<__mmask32>((1u << n) - 1); }
inline void prefetch(const void* p) { _mm_prefetch(static_cast<const char*>(p), _MM_HINT_T0); }

// The horizontal sums of V = 16 (or 8) accumulators at once, each reduced by exactly the tree of
// `_mm512_reduce_add_ps` (GCC's: lane i + lane i+8, then i + i+4, then i + i+2, then 0 + 1), so a
// sum is bitwise the same whichever way it is computed: the lanes of the accumulators are
// interleaved by shuffles (transpose-and-add) so that each step of the tree is one add for all.
// out[4 * q + p] is the sum of v[4 * p + q].
template <int V>
inline void reduce_many(const __m512* v, float* out) {
  static_assert(V == 16 || V == 8);
  __m512 u[V / 2], w[V / 4], x[2];
  for (int j = 0; j < V / 2; ++j) {  // [a.lo256 + a.hi256, b.lo256 + b.hi256]
    const __m512 a = v[2 * j], b = v[2 * j + 1];
    u[j] = _mm512_add_ps(_mm512_shuffle_f32x4(a, b, _MM_SHUFFLE(3, 2, 3, 2)),
                         _mm512_shuffle_f32x4(a, b, _MM_SHUFFLE(1, 0, 1, 0)));
  }
  for (int j = 0; j < V / 4; ++j) {  // 128-bit quarter q: the 4-lane sum of v[4j + q]
    const __m512 a = u[2 * j], b = u[2 * j + 1];
    w[j] = _mm512_add_ps(_mm512_shuffle_f32x4(a, b, _MM_SHUFFLE(3, 1, 3, 1)),
                         _mm512_shuffle_f32x4(a, b, _MM_SHUFFLE(2, 0, 2, 0)));
  }
  for (int j = 0; j < V / 8; ++j) {  // quarter q: lanes 0 + 2 and 1 + 3 of v[8j + q], then of v[8j + 4 + q]
    const __m512d a = _mm512_castps_pd(w[2 * j]), b = _mm512_castps_pd(w[2 * j + 1]);
    x[j] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(a, b)), _mm512_castpd_ps(_mm512_unpackhi_pd(a, b)));
  }
  if constexpr (V == 8) x[1] = x[0];  // lanes 2 and 3 of each quarter repeat 0 and 1
  _mm512_storeu_ps(out, _mm512_add_ps(_mm512_shuffle_ps(x[0], x[1], _MM_SHUFFLE(2, 0, 2, 0)),
                                      _mm512_shuffle_ps(x[0], x[1], _MM_SHUFFLE(3, 1, 3, 1))));
}

// s[i] = the horizontal sum of v[i], i < n: 16 at a time, then 8, then one by one.
template <int n>
inline void hsum(const __m512* v, float* s) {
  constexpr int n16 = n / 16 * 16, n8 = n16 + (n % 16 >= 8 ? 8 : 0);
  for (int g = 0; g < n / 16; ++g) {
    alignas(64) float out[16];
    reduce_many<16>(v + 16 * g, out);
    for (int i = 0; i < 16; ++i) s[16 * g + i] = out[4 * (i % 4) + i / 4];
  }
  if constexpr (n8 > n16) {
    alignas(64) float out[16];
    reduce_many<8>(v + n16, out);
    for (int i = 0; i < 8; ++i) s[n16 + i] = out[4 * (i % 4) + i / 4];
  }
  for (int i = n8; i < n; ++i) s[i] = _mm512_reduce_add_ps(v[i]);
}

// The accumulators leave registers once, after the k loop: a[][] is only ever indexed by
// fully unrolled loops (so GCC keeps it in registers; taking its address would put it on the
// stack for the whole loop), then copied out and reduced.
#define FINISH_TILE(a, acc)                                   \
  do {                                                        \
    alignas(64) __m512 v_[MB * R];                            \
    LLM_UNROLL for (int m = 0; m < MB; ++m)                   \
      LLM_UNROLL for (int r = 0; r < R; ++r) v_[m * R + r] = a[m][r]; \
    hsum<MB * R>(v_, &acc[0][0]);                             \
  } while (0)
#endif

// Rows [n0, n0 + R) of w against rows [m0, m0 + MB) of x; returns fp32 sums. R and MB are
// compile-time so the accumulators stay in registers; the driver covers tails with R or MB = 1.
template <int R, int MB>
void tile_bf16(const uint16_t* x, const uint16_t* w, float (&acc)[MB][R], int64_t m0, int64_t n0, int64_t N,
               int64_t K) {
  constexpr int nr = R, mb = MB;
#if defined(__AVX512BF16__)
  __m512 a[MB][R];
  LLM_UNROLL for (int m = 0; m < MB; ++m)
    LLM_UNROLL for (int r = 0; r < R; ++r) a[m][r] = _mm512_setzero_ps();
  const bool ahead = n0 + nr + R <= N;
  for (int64_t k = 0; k < K; k += 32) {
    const __mmask32 mask = tail_mask32(K - k);
    __m512bh wv[R];
    LLM_UNROLL for (int r = 0; r < nr; ++r) {
      const uint16_t* row = w + (n0 + r) * K + k;
      if (ahead) prefetch(row + R * K);
      wv[r] = (__m512bh)_mm512_maskz_loadu_epi16(mask, row);
    }
    LLM_UNROLL for (int m = 0; m < mb; ++m) {
      const __m512bh xv = (__m512bh)_mm512_maskz_loadu_epi16(mask, x + (m0 + m) * K + k);
      LLM_UNROLL for (int r = 0; r < nr; ++r) a[m][r] = _mm512_dpbf16_ps(a[m][r], wv[r], xv);
    }
  }
  FINISH_TILE(a, acc);
#elif defined(__AVX512F__)
  __m512 a[MB][R];
  LLM_UNROLL for (int m = 0; m < MB; ++m)
    LLM_UNROLL for (int r = 0; r < R; ++r) a[m][r] = _mm512_setzero_ps();
  const bool ahead = n0 + nr + R <= N;
  for (int64_t k = 0; k < K; k += 16) {
    const __mmask16 mask = tail_mask16(K - k);
    __m512 wv[R];
    LLM_UNROLL for (int r = 0; r < nr; ++r) {
      const uint16_t* row = w + (n0 + r) * K + k;
      if (ahead) prefetch(row + R * K);
      wv[r] = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(mask, row)), 16));
    }
    LLM_UNROLL for (int m = 0; m < mb; ++m) {
      __m256i raw = _mm256_maskz_loadu_epi16(mask, x + (m0 + m) * K + k);
      const __m512 xv = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(raw), 16));
      LLM_UNROLL for (int r = 0; r < nr; ++r) a[m][r] = _mm512_fmadd_ps(wv[r], xv, a[m][r]);
    }
  }
  FINISH_TILE(a, acc);
#else
  LLM_UNROLL for (int m = 0; m < mb; ++m)
    LLM_UNROLL for (int r = 0; r < nr; ++r) {
      float s = 0.f;
      for (int64_t k = 0; k < K; ++k) s += bf16_to_f32(w[(n0 + r) * K + k]) * bf16_to_f32(x[(m0 + m) * K + k]);
      acc[m][r] = s;
    }
#endif
}

template <int R, int MB>
void tile_f32(const float* x, const float* w, float (&acc)[MB][R], int64_t m0, int64_t n0, int64_t N, int64_t K) {
  constexpr int nr = R, mb = MB;
#if defined(__AVX512F__)
  __m512 a[MB][R];
  LLM_UNROLL for (int m = 0; m < MB; ++m)
    LLM_UNROLL for (int r = 0; r < R; ++r) a[m][r] = _mm512_setzero_ps();
  const bool ahead = n0 + nr + R <= N;
  for (int64_t k = 0; k < K; k += 16) {
    const __mmask16 mask = tail_mask16(K - k);
    __m512 wv[R];
    LLM_UNROLL for (int r = 0; r < nr; ++r) {
      const float* row = w + (n0 + r) * K + k;
      if (ahead) prefetch(row + R * K);
      wv[r] = _mm512_maskz_loadu_ps(mask, row);
    }
    LLM_UNROLL for (int m = 0; m < mb; ++m) {
      const __m512 xv = _mm512_maskz_loadu_ps(mask, x + (m0 + m) * K + k);
      LLM_UNROLL for (int r = 0; r < nr; ++r) a[m][r] = _mm512_fmadd_ps(wv[r], xv, a[m][r]);
    }
  }
  FINISH_TILE(a, acc);
#else
  LLM_UNROLL for (int m = 0; m < mb; ++m)
    LLM_UNROLL for (int r = 0; r < nr; ++r) {
      float s = 0.f;
      for (int64_t k = 0; k < K; ++k) s += w[(n0 + r) * K + k] * x[(m0 + m) * K + k];
      acc[m][r] = s;
    }
#endif
}

struct Bf16Tiles {
  template <int R, int MB>
  static void tile(const uint16_t* x, const uint16_t* w, float (&acc)[MB][R], int64_t m0, int64_t n0, int64_t N,
                   int64_t K) {
    tile_bf16<R, MB>(x, w, acc, m0, n0, N, K);
  }
};

struct F32Tiles {
  template <int R, int MB>
  static void tile(const float* x, const float* w, float (&acc)[MB][R], int64_t m0, int64_t n0, int64_t N,
                   int64_t K) {
    tile_f32<R, MB>(x, w, acc, m0, n0, N, K);
  }
};

template <typename Tiles, int R, int MB, typename T>
void rows(const T* x, const T* w, const T* bias, T* y, int64_t M, int64_t n0, int64_t N, int64_t K) {
  int64_t m0 = 0;
  for (; m0 + MB <= M; m0 += MB) {
    float acc[MB][R];
    Tiles::template tile<R, MB>(x, w, acc, m0, n0, N, K);
    LLM_UNROLL for (int m = 0; m < MB; ++m)
      LLM_UNROLL for (int r = 0; r < R; ++r) store(y, (m0 + m) * N + n0 + r, acc[m][r] + (bias ? load(bias, n0 + r) : 0.f));
  }
  for (; m0 < M; ++m0) {
    float acc[1][R];
    Tiles::template tile<R, 1>(x, w, acc, m0, n0, N, K);
    LLM_UNROLL for (int r = 0; r < R; ++r) store(y, m0 * N + n0 + r, acc[0][r] + (bias ? load(bias, n0 + r) : 0.f));
  }
}

// One x row: 8 weight rows per tile. Several x rows: 4 x 4 tiles (16 accumulators).
template <typename Tiles, int R, int MB, typename T>
void gemv(const T* x, const T* w, const T* bias, T* y, int64_t M, int64_t N, int64_t K) {
  const int64_t tiles = N / R;
#pragma omp parallel if (N * K > 16384)
  {
    const int64_t threads = omp_get_num_threads(), t = omp_get_thread_num();
    const int64_t per = (tiles + threads - 1) / threads;
    for (int64_t g = t * per; g < std::min(tiles, (t + 1) * per); ++g)
      rows<Tiles, R, MB>(x, w, bias, y, M, g * R, N, K);
  }
  for (int64_t n0 = tiles * R; n0 < N; ++n0) rows<Tiles, 1, MB>(x, w, bias, y, M, n0, N, K);
}

// Any M through the same tiles (3 weight rows x 8 x rows; 24 accumulators, reduced 16 + 8 at once), blocked over x rows so a block of x
// stays in cache while the weights stream past it. Every output element is reduced exactly as
// `gemv` reduces it (the same accumulator lanes in the same k order, then the same horizontal
// sum), whatever M, the tile shape or the thread that computes it.
template <typename Tiles, int R, int MB, typename T>
void gemm(const T* x, const T* w, const T* bias, T* y, int64_t M, int64_t N, int64_t K) {
  constexpr int64_t kRowBlock = 64;
  const int64_t tiles = N / R, blocks = (M + kRowBlock - 1) / kRowBlock;
#pragma omp parallel for collapse(2) schedule(static) if (M * N * K > 16384)
  for (int64_t b = 0; b < blocks; ++b)
    for (int64_t g = 0; g <= tiles; ++g) {
      const int64_t m0 = b * kRowBlock, rows_here = std::min(kRowBlock, M - m0);
      if (g < tiles) rows<Tiles, R, MB>(x + m0 * K, w, bias, y + m0 * N, rows_here, g * R, N, K);
      else
        for (int64_t n0 = tiles * R; n0 < N; ++n0) rows<Tiles, 1, MB>(x + m0 * K, w, bias, y + m0 * N, rows_here, n0, N, K);
    }
}

}  // namespace

void gemm_bf16(const uint16_t* x, const uint16_t* w, const uint16_t* bias, uint16_t* y, int64_t M, int64_t N,
               int64_t K) {
  if (M <= 8) return gemv_bf16(x, w, bias, y, M, N, K);
  gemm<Bf16Tiles, 3, 8>(x, w, bias, y, M, N, K);
}

void gemm_f32(const float* x, const float* w, const float* bias, float* y, int64_t M, int64_t N, int64_t K) {
  if (M <= 8) return gemv_f32(x, w, bias, y, M, N, K);
  gemm<F32Tiles, 3, 8>(x, w, bias, y, M, N, K);
}

// Up to 8 x rows (a decode batch, or a speculative step's pending token and proposals) are
// covered by one tile, so each weight row is loaded once for all of them; the tile width R
// keeps MB * R accumulators within the 32 vector registers.
void gemv_bf16(const uint16_t* x, const uint16_t* w, const uint16_t* bias, uint16_t* y, int64_t M, int64_t N,
               int64_t K) {
  switch (M) {
    case 1: return gemv<Bf16Tiles, 8, 1>(x, w, bias, y, M, N, K);
    case 2: return gemv<Bf16Tiles, 8, 2>(x, w, bias, y, M, N, K);
    case 3: return gemv<Bf16Tiles, 6, 3>(x, w, bias, y, M, N, K);
    case 5: return gemv<Bf16Tiles, 4, 5>(x, w, bias, y, M, N, K);
    case 6: return gemv<Bf16Tiles, 3, 6>(x, w, bias, y, M, N, K);
    case 7: return gemv<Bf16Tiles, 3, 7>(x, w, bias, y, M, N, K);
    case 8: return gemv<Bf16Tiles, 2, 8>(x, w, bias, y, M, N, K);
    default: return gemv<Bf16Tiles, 4, 4>(x, w, bias, y, M, N, K);
  }
}

void gemv_f32(const float* x, const float* w, const float* bias, float* y, int64_t M, int64_t N, int64_t K) {
  if (M == 1) gemv<F32Tiles, 8, 1>(x, w, bias, y, M, N, K);
  else gemv<F32Tiles, 4, 4>(x, w, bias, y, M, N, K);
}

const char* gemv_isa() {
#if defined(__AVX512BF16__)
  return "AVX-512 BF16 (vdpbf16ps)";
#elif defined(__AVX512F__)
  return "AVX-512F";
#else
  return "scalar";
#endif
}

}  // namespace llm_infer_cpu
