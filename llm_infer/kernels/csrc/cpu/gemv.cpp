// Small-M matrix-vector products for decode: the weight matrix is streamed from
// memory once per call, which is what bounds decode speed at one row; with several rows
// the tiles are compute-bound, and reuse each loaded weight vector across the rows.
// Each thread streams one contiguous range of weight rows and prefetches the next
// tile's rows while it works on the current one (measured: ~22 -> ~29 GB/s on 2 cores).
// Paths: AVX-512 BF16 (vdpbf16ps), AVX-512F, AVX2 + FMA (bf16 widened by shifts), scalar.
// Each is batch-invariant on its own: every output is one accumulator vector per (row, weight
// row) fed in k order, then that path's one horizontal-sum tree, whatever the tile shape.
#include <immintrin.h>
#include <omp.h>

#include <algorithm>

#include "cpu_kernels.h"

namespace llm_infer_cpu {
namespace {

// Tile loops are fully unrolled so their accumulator arrays live in registers.
#define LLM_UNROLL _Pragma("GCC unroll 32")

// The weight rows of a tile: n0, n0 + step, ..., n0 + (R - 1) * step; each prefetched `ahead`
// elements further on as the tile goes (0: no prefetch).
struct WRows {
  int64_t n0, step, ahead;
  int64_t operator[](int r) const { return n0 + r * step; }
};

// The accumulators leave registers once, after the k loop: a[][] is only ever indexed by
// fully unrolled loops (so GCC keeps it in registers; taking its address would put it on the
// stack for the whole loop), then copied out and reduced by the path's hsum.
#define FINISH_TILE_OF(Vec, a, acc)                           \
  do {                                                        \
    alignas(64) Vec v_[MB * R];                               \
    LLM_UNROLL for (int m = 0; m < MB; ++m)                   \
      LLM_UNROLL for (int r = 0; r < R; ++r) v_[m * R + r] = a[m][r]; \
    hsum<MB * R>(v_, &acc[0][0]);                             \
  } while (0)

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

#define FINISH_TILE(a, acc) FINISH_TILE_OF(__m512, a, acc)
#elif defined(__AVX2__) && defined(__FMA__)
#define LLM_INLINE inline __attribute__((always_inline))
inline void prefetch(const void* p) { _mm_prefetch(static_cast<const char*>(p), _MM_HINT_T0); }

// The one horizontal-sum tree of the AVX2 path: lane i + lane i+4, then i + i+2, then 0 + 1.
// reduce8 sums 8 accumulators at once by that tree (transpose-and-add: each step one add for
// all 8), so a sum is bitwise the same whichever tile computed it. out[4 * (i % 2) + i / 2] is
// the sum of v[i]; each output lane depends on its own accumulator only.
inline void reduce8(const __m256* v, float* out) {
  __m256 u[4], w[2];
  for (int j = 0; j < 4; ++j)  // [a.lo + a.hi, b.lo + b.hi]
    u[j] = _mm256_add_ps(_mm256_permute2f128_ps(v[2 * j], v[2 * j + 1], 0x20),
                         _mm256_permute2f128_ps(v[2 * j], v[2 * j + 1], 0x31));
  for (int j = 0; j < 2; ++j) {  // per 128-bit half: lanes 0 + 2 and 1 + 3 of two sums
    const __m256d a = _mm256_castps_pd(u[2 * j]), b = _mm256_castps_pd(u[2 * j + 1]);
    w[j] = _mm256_add_ps(_mm256_castpd_ps(_mm256_unpacklo_pd(a, b)), _mm256_castpd_ps(_mm256_unpackhi_pd(a, b)));
  }
  _mm256_storeu_ps(out, _mm256_add_ps(_mm256_shuffle_ps(w[0], w[1], _MM_SHUFFLE(2, 0, 2, 0)),
                                      _mm256_shuffle_ps(w[0], w[1], _MM_SHUFFLE(3, 1, 3, 1))));
}

// s[i] = the horizontal sum of v[i], i < n, 8 at a time (a short last group padded with zeros).
template <int n>
inline void hsum(const __m256* v, float* s) {
  for (int g = 0; g < n; g += 8) {
    alignas(32) __m256 group[8];
    alignas(32) float out[8];
    for (int i = 0; i < 8; ++i) group[i] = g + i < n ? v[g + i] : _mm256_setzero_ps();
    reduce8(group, out);
    for (int i = 0; i < 8 && g + i < n; ++i) s[g + i] = out[4 * (i % 2) + i / 2];
  }
}

#define FINISH_TILE(a, acc) FINISH_TILE_OF(__m256, a, acc)

// bf16 without vdpbf16ps: a 32-bit lane of 16 loaded bf16 holds elements 2i (low half) and
// 2i + 1 (high half); as fp32 they are the lane shifted left by 16 and the lane with its low
// half cleared: two cheap ops, no shuffle. Every accumulator takes, per 16 elements, the even
// products and then the odd ones, whatever the tile shape (so its bits never depend on it).
LLM_INLINE __m256 bf16_even(__m256i v) { return _mm256_castsi256_ps(_mm256_slli_epi32(v, 16)); }
LLM_INLINE __m256 bf16_odd(__m256i v) {
  return _mm256_castsi256_ps(_mm256_and_si256(v, _mm256_set1_epi32(static_cast<int>(0xffff0000u))));
}
LLM_INLINE __m256i load256(const void* p) { return _mm256_loadu_si256(static_cast<const __m256i*>(p)); }

// One 16-element step of a tile: x row m at xp + m * xs, weight row r at wp + r * ws (prefetching
// `next` elements further on when `ahead`). With few x rows the x vectors stay in registers and
// the weights stream through; with more, R weight vectors stay and the x rows stream.
struct Bf16Step {
  static constexpr int width = 16;
  template <int R, int MB>
  LLM_INLINE static void run(__m256 (&a)[MB][R], const uint16_t* xp, int64_t xs, const uint16_t* wp, int64_t ws,
                             bool ahead, int64_t next) {
    if constexpr (2 * MB < R) {
      __m256 xe[MB], xo[MB];
      LLM_UNROLL for (int m = 0; m < MB; ++m) {
        const __m256i raw = load256(xp + m * xs);
        xe[m] = bf16_even(raw);
        xo[m] = bf16_odd(raw);
      }
      LLM_UNROLL for (int r = 0; r < R; ++r) {
        if (ahead) prefetch(wp + r * ws + next);
        const __m256i raw = load256(wp + r * ws);
        const __m256 we = bf16_even(raw), wo = bf16_odd(raw);
        LLM_UNROLL for (int m = 0; m < MB; ++m) {
          a[m][r] = _mm256_fmadd_ps(we, xe[m], a[m][r]);
          a[m][r] = _mm256_fmadd_ps(wo, xo[m], a[m][r]);
        }
      }
    } else {
      __m256 wv[R];
      LLM_UNROLL for (int r = 0; r < R; ++r) {
        if (ahead) prefetch(wp + r * ws + next);
        wv[r] = bf16_even(load256(wp + r * ws));
      }
      LLM_UNROLL for (int m = 0; m < MB; ++m) {
        const __m256 xe = bf16_even(load256(xp + m * xs));
        LLM_UNROLL for (int r = 0; r < R; ++r) a[m][r] = _mm256_fmadd_ps(wv[r], xe, a[m][r]);
      }
      LLM_UNROLL for (int r = 0; r < R; ++r) wv[r] = bf16_odd(load256(wp + r * ws));
      LLM_UNROLL for (int m = 0; m < MB; ++m) {
        const __m256 xo = bf16_odd(load256(xp + m * xs));
        LLM_UNROLL for (int r = 0; r < R; ++r) a[m][r] = _mm256_fmadd_ps(wv[r], xo, a[m][r]);
      }
    }
  }
};

// One 8-element step of an fp32 tile, laid out as Bf16Step's.
struct F32Step {
  static constexpr int width = 8;
  template <int R, int MB>
  LLM_INLINE static void run(__m256 (&a)[MB][R], const float* xp, int64_t xs, const float* wp, int64_t ws, bool ahead,
                             int64_t next) {
    if constexpr (MB < R) {
      __m256 xv[MB];
      LLM_UNROLL for (int m = 0; m < MB; ++m) xv[m] = _mm256_loadu_ps(xp + m * xs);
      LLM_UNROLL for (int r = 0; r < R; ++r) {
        if (ahead) prefetch(wp + r * ws + next);
        const __m256 wv = _mm256_loadu_ps(wp + r * ws);
        LLM_UNROLL for (int m = 0; m < MB; ++m) a[m][r] = _mm256_fmadd_ps(wv, xv[m], a[m][r]);
      }
    } else {
      __m256 wv[R];
      LLM_UNROLL for (int r = 0; r < R; ++r) {
        if (ahead) prefetch(wp + r * ws + next);
        wv[r] = _mm256_loadu_ps(wp + r * ws);
      }
      LLM_UNROLL for (int m = 0; m < MB; ++m) {
        const __m256 xv = _mm256_loadu_ps(xp + m * xs);
        LLM_UNROLL for (int r = 0; r < R; ++r) a[m][r] = _mm256_fmadd_ps(wv[r], xv, a[m][r]);
      }
    }
  }
};

// A tile of the AVX2 path: the steps over k, then the last K % width elements as one more step
// over the rows' tails copied into zero-padded buffers (zeros add nothing), the same for every tile.
template <typename Step, int R, int MB, typename T>
LLM_INLINE void tile_avx2(const T* x, const T* w, float (&acc)[MB][R], int64_t m0, WRows rows, int64_t K) {
  constexpr int S = Step::width;
  __m256 a[MB][R];
  LLM_UNROLL for (int m = 0; m < MB; ++m)
    LLM_UNROLL for (int r = 0; r < R; ++r) a[m][r] = _mm256_setzero_ps();
  const T* wk = w + rows.n0 * K;
  const int64_t ws = rows.step * K;
  const bool ahead = rows.ahead != 0;
  int64_t k = 0;
  for (; k + 2 * S <= K; k += 2 * S) {  // two steps: one 64-byte line per row, prefetched once
    Step::template run<R, MB>(a, x + m0 * K + k, K, wk + k, ws, ahead, rows.ahead);
    Step::template run<R, MB>(a, x + m0 * K + k + S, K, wk + k + S, ws, false, 0);
  }
  for (; k + S <= K; k += S) Step::template run<R, MB>(a, x + m0 * K + k, K, wk + k, ws, ahead, rows.ahead);
  if (k < K) {
    alignas(32) T xt[MB][S] = {}, wt[R][S] = {};
    for (int m = 0; m < MB; ++m) std::copy(x + (m0 + m) * K + k, x + (m0 + m) * K + K, xt[m]);
    for (int r = 0; r < R; ++r) std::copy(w + rows[r] * K + k, w + rows[r] * K + K, wt[r]);
    Step::template run<R, MB>(a, &xt[0][0], S, &wt[0][0], S, false, 0);
  }
  FINISH_TILE(a, acc);
}
#endif

// Weight rows `rows` of w against rows [m0, m0 + MB) of x; returns fp32 sums. R and MB are
// compile-time so the accumulators stay in registers; the driver covers tails with R or MB = 1.
template <int R, int MB>
void tile_bf16(const uint16_t* x, const uint16_t* w, float (&acc)[MB][R], int64_t m0, WRows rows, int64_t K) {
  constexpr int nr = R, mb = MB;
#if defined(__AVX512BF16__)
  __m512 a[MB][R];
  LLM_UNROLL for (int m = 0; m < MB; ++m)
    LLM_UNROLL for (int r = 0; r < R; ++r) a[m][r] = _mm512_setzero_ps();
  for (int64_t k = 0; k < K; k += 32) {
    const __mmask32 mask = tail_mask32(K - k);
    __m512bh wv[R];
    LLM_UNROLL for (int r = 0; r < nr; ++r) {
      const uint16_t* row = w + rows[r] * K + k;
      if (rows.ahead) prefetch(row + rows.ahead);
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
  for (int64_t k = 0; k < K; k += 16) {
    const __mmask16 mask = tail_mask16(K - k);
    __m512 wv[R];
    LLM_UNROLL for (int r = 0; r < nr; ++r) {
      const uint16_t* row = w + rows[r] * K + k;
      if (rows.ahead) prefetch(row + rows.ahead);
      wv[r] = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(mask, row)), 16));
    }
    LLM_UNROLL for (int m = 0; m < mb; ++m) {
      __m256i raw = _mm256_maskz_loadu_epi16(mask, x + (m0 + m) * K + k);
      const __m512 xv = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(raw), 16));
      LLM_UNROLL for (int r = 0; r < nr; ++r) a[m][r] = _mm512_fmadd_ps(wv[r], xv, a[m][r]);
    }
  }
  FINISH_TILE(a, acc);
#elif defined(__AVX2__) && defined(__FMA__)
  tile_avx2<Bf16Step, R, MB>(x, w, acc, m0, rows, K);
#else
  LLM_UNROLL for (int m = 0; m < mb; ++m)
    LLM_UNROLL for (int r = 0; r < nr; ++r) {
      float s = 0.f;
      for (int64_t k = 0; k < K; ++k) s += bf16_to_f32(w[rows[r] * K + k]) * bf16_to_f32(x[(m0 + m) * K + k]);
      acc[m][r] = s;
    }
#endif
}

template <int R, int MB>
void tile_f32(const float* x, const float* w, float (&acc)[MB][R], int64_t m0, WRows rows, int64_t K) {
  constexpr int nr = R, mb = MB;
#if defined(__AVX512F__)
  __m512 a[MB][R];
  LLM_UNROLL for (int m = 0; m < MB; ++m)
    LLM_UNROLL for (int r = 0; r < R; ++r) a[m][r] = _mm512_setzero_ps();
  for (int64_t k = 0; k < K; k += 16) {
    const __mmask16 mask = tail_mask16(K - k);
    __m512 wv[R];
    LLM_UNROLL for (int r = 0; r < nr; ++r) {
      const float* row = w + rows[r] * K + k;
      if (rows.ahead) prefetch(row + rows.ahead);
      wv[r] = _mm512_maskz_loadu_ps(mask, row);
    }
    LLM_UNROLL for (int m = 0; m < mb; ++m) {
      const __m512 xv = _mm512_maskz_loadu_ps(mask, x + (m0 + m) * K + k);
      LLM_UNROLL for (int r = 0; r < nr; ++r) a[m][r] = _mm512_fmadd_ps(wv[r], xv, a[m][r]);
    }
  }
  FINISH_TILE(a, acc);
#elif defined(__AVX2__) && defined(__FMA__)
  tile_avx2<F32Step, R, MB>(x, w, acc, m0, rows, K);
#else
  LLM_UNROLL for (int m = 0; m < mb; ++m)
    LLM_UNROLL for (int r = 0; r < nr; ++r) {
      float s = 0.f;
      for (int64_t k = 0; k < K; ++k) s += w[rows[r] * K + k] * x[(m0 + m) * K + k];
      acc[m][r] = s;
    }
#endif
}

struct Bf16Tiles {
  template <int R, int MB>
  static void tile(const uint16_t* x, const uint16_t* w, float (&acc)[MB][R], int64_t m0, WRows rows, int64_t K) {
    tile_bf16<R, MB>(x, w, acc, m0, rows, K);
  }
};

struct F32Tiles {
  template <int R, int MB>
  static void tile(const float* x, const float* w, float (&acc)[MB][R], int64_t m0, WRows rows, int64_t K) {
    tile_f32<R, MB>(x, w, acc, m0, rows, K);
  }
};

// x rows [m0, m0 + MB) against weight rows `rows`: one tile, then bias and store (y has N columns).
template <typename Tiles, int R, int MB, typename T>
void block(const T* x, const T* w, const T* bias, T* y, int64_t m0, WRows rows, int64_t N, int64_t K) {
  float acc[MB][R];
  Tiles::template tile<R, MB>(x, w, acc, m0, rows, K);
  LLM_UNROLL for (int m = 0; m < MB; ++m)
    LLM_UNROLL for (int r = 0; r < R; ++r)
      store(y, (m0 + m) * N + rows[r], acc[m][r] + (bias ? load(bias, rows[r]) : 0.f));
}

// All M x rows against weight rows `rows`: tiles of MB x rows, the last `M % MB` in one tile.
template <typename Tiles, int R, int MB, typename T>
void all_rows(const T* x, const T* w, const T* bias, T* y, int64_t M, WRows rows, int64_t N, int64_t K) {
  int64_t m0 = 0;
  for (; m0 + MB <= M; m0 += MB) block<Tiles, R, MB>(x, w, bias, y, m0, rows, N, K);
  if constexpr (MB > 1)
    if (m0 < M) all_rows<Tiles, R, MB - 1>(x + m0 * K, w, bias, y + m0 * N, M - m0, rows, N, K);
}

// Each thread streams one contiguous range of weight rows, split into R runs walked side by side:
// a tile takes the i-th row of each run, so each run is read in address order, one sequential
// stream the hardware prefetcher follows, and each row prefetches the next one of its run.
// Measured side by side (one thread, one x row, a 49152 x 576 bf16 LM head read from DRAM): 8
// consecutive rows interleaved 6.9 ms on AVX2 / 5.7 ms on AVX-512, 4 runs 2.4 / 2.8 ms.
template <typename Tiles, int R, int MB, typename T>
void gemv(const T* x, const T* w, const T* bias, T* y, int64_t M, int64_t N, int64_t K) {
#pragma omp parallel if (N * K > 16384)
  {
    const int64_t threads = omp_get_num_threads(), t = omp_get_thread_num();
    const int64_t per = (N + threads - 1) / threads, r0 = std::min(N, t * per), r1 = std::min(N, r0 + per);
    const int64_t run = (r1 - r0) / R;
    for (int64_t i = 0; i < run; ++i)
      all_rows<Tiles, R, MB>(x, w, bias, y, M, {r0 + i, run, i + 1 < run ? K : 0}, N, K);
    for (int64_t n = r0 + run * R; n < r1; ++n) all_rows<Tiles, 1, MB>(x, w, bias, y, M, {n, 1, 0}, N, K);
  }
}

// Any M through the same tiles (kBf16R/kF32R weight rows x kBf16MB/kF32MB x rows, below), blocked
// over x rows so a block of x stays in cache while the weights stream past it. Every output
// element is reduced exactly as `gemv` reduces it (the same accumulator lanes in the same k
// order, then the same horizontal sum), whatever M, the tile shape or the thread that computes it.
template <typename Tiles, int R, int MB, typename T>
void gemm(const T* x, const T* w, const T* bias, T* y, int64_t M, int64_t N, int64_t K) {
  constexpr int64_t kRowBlock = 64;
  const int64_t tiles = N / R, blocks = (M + kRowBlock - 1) / kRowBlock;
#pragma omp parallel for collapse(2) schedule(static) if (M * N * K > 16384)
  for (int64_t b = 0; b < blocks; ++b)
    for (int64_t g = 0; g <= tiles; ++g) {
      const int64_t m0 = b * kRowBlock, rows_here = std::min(kRowBlock, M - m0);
      if (g < tiles) {
        const WRows rows{g * R, 1, (g + 2) * R <= N ? R * K : 0};  // prefetch: the next tile
        all_rows<Tiles, R, MB>(x + m0 * K, w, bias, y + m0 * N, rows_here, rows, N, K);
      } else {
        for (int64_t n = tiles * R; n < N; ++n)
          all_rows<Tiles, 1, MB>(x + m0 * K, w, bias, y + m0 * N, rows_here, {n, 1, 0}, N, K);
      }
    }
}

}  // namespace

// The many-row tiles (weight rows x x rows) of each path. AVX-512 has 32 vector registers: 3 x 8
// (24 accumulators). AVX2 has 16: at most 9 accumulators in bf16 (3 x 3, beside the weight and x
// conversions) and 12 in fp32 (4 x 3); one more spills them to the stack and costs ~2x (measured).
#if defined(__AVX512F__)
constexpr int kBf16R = 3, kBf16MB = 8, kF32R = 3, kF32MB = 8;
#else
constexpr int kBf16R = 3, kBf16MB = 3, kF32R = 4, kF32MB = 3;
#endif

void gemm_bf16(const uint16_t* x, const uint16_t* w, const uint16_t* bias, uint16_t* y, int64_t M, int64_t N,
               int64_t K) {
  if (M <= 8) return gemv_bf16(x, w, bias, y, M, N, K);
  gemm<Bf16Tiles, kBf16R, kBf16MB>(x, w, bias, y, M, N, K);
}

void gemm_f32(const float* x, const float* w, const float* bias, float* y, int64_t M, int64_t N, int64_t K) {
  if (M <= 8) return gemv_f32(x, w, bias, y, M, N, K);
  gemm<F32Tiles, kF32R, kF32MB>(x, w, bias, y, M, N, K);
}

// Up to 8 x rows (a decode batch, or a speculative step's pending token and proposals) are
// covered by one tile, so each weight row is loaded once for all of them; the tile width R
// keeps MB * R accumulators within the vector registers.
void gemv_bf16(const uint16_t* x, const uint16_t* w, const uint16_t* bias, uint16_t* y, int64_t M, int64_t N,
               int64_t K) {
  if (M == 1) return gemv<Bf16Tiles, 4, 1>(x, w, bias, y, M, N, K);  // 4 runs: see gemv
#if defined(__AVX512F__)
  switch (M) {
    case 2: return gemv<Bf16Tiles, 8, 2>(x, w, bias, y, M, N, K);
    case 3: return gemv<Bf16Tiles, 6, 3>(x, w, bias, y, M, N, K);
    case 5: return gemv<Bf16Tiles, 4, 5>(x, w, bias, y, M, N, K);
    case 6: return gemv<Bf16Tiles, 3, 6>(x, w, bias, y, M, N, K);
    case 7: return gemv<Bf16Tiles, 3, 7>(x, w, bias, y, M, N, K);
    case 8: return gemv<Bf16Tiles, 2, 8>(x, w, bias, y, M, N, K);
    default: return gemv<Bf16Tiles, 4, 4>(x, w, bias, y, M, N, K);
  }
#else
  if (M == 2) return gemv<Bf16Tiles, 4, 2>(x, w, bias, y, M, N, K);
  gemv<Bf16Tiles, kBf16R, kBf16MB>(x, w, bias, y, M, N, K);
#endif
}

void gemv_f32(const float* x, const float* w, const float* bias, float* y, int64_t M, int64_t N, int64_t K) {
  if (M == 1) gemv<F32Tiles, 4, 1>(x, w, bias, y, M, N, K);
#if defined(__AVX512F__)
  else gemv<F32Tiles, 4, 4>(x, w, bias, y, M, N, K);
#else
  else if (M == 2) gemv<F32Tiles, 4, 2>(x, w, bias, y, M, N, K);
  else gemv<F32Tiles, kF32R, kF32MB>(x, w, bias, y, M, N, K);
#endif
}

const char* gemv_isa() {
#if defined(__AVX512BF16__)
  return "AVX-512 BF16 (vdpbf16ps)";
#elif defined(__AVX512F__)
  return "AVX-512F";
#elif defined(__AVX2__) && defined(__FMA__)
  return "AVX2 + FMA";
#else
  return "scalar";
#endif
}

}  // namespace llm_infer_cpu
