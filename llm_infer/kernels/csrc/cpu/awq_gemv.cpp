// AWQ int4 weights on CPU: y = x W^T with W[n, k] = (q[n, k] - z[n, g]) * s[n, g], g = k / group.
//
// Layout (repacked once at load time from AutoAWQ's): `packed` [N, K/2] bytes. Each row is cut
// into 128-weight blocks of 64 bytes, byte i = q[128b + i] | q[128b + 64 + i] << 4, so the low
// nibbles are the block's first 64 weights and the high nibbles the next 64 (one per group of
// 64 or both in a group of 128). When K is an odd multiple of 64 the last block is a half block
// of 32 bytes (low nibbles weights 0..31, high 32..63). `scales` [N, G] fp32 and `zero_scales`
// [G, N] fp32 = scale * zero point, stored group-major so the zero-point term of all rows is one
// small vectorised product per call; the group size is a multiple of 64.
//
// bf16 activations take the W4A8 path, as llama.cpp does for its 4-bit formats: x is quantised
// to int8 per group (one scale per group of each row: x * (127 / max|x|) rounded to nearest
// even) and the products of 4-bit weights and 8-bit activations are summed exactly in int32:
// AVX512-VNNI `vpdpbusd`, 128 weights in six instructions; AVX2 `vpmaddubsw` (unsigned 4-bit x
// signed 8-bit, adjacent pairs summed in int16: at most 2 * 15 * 127 = 3810, so four of them
// still fit without saturating) then `vpmaddwd` by ones into int32; the scalar loop the same
// sums one by one. Every path computes the same int8 activations and exact integer sums, so
// they differ only in the order of the fp32 scaling. fp32 activations take the exact path
// (weights widened to fp32, FMA). Either way y += s * (q . x) per group, minus
// sum_g s * z * sum(x_g) with the exact sums of x: nothing is dequantised in memory.
#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "cpu_kernels.h"
#include "vec_avx2.h"

namespace llm_infer_cpu {
namespace {

#define LLM_UNROLL _Pragma("GCC unroll 16")

struct Awq {
  const uint8_t* packed;
  const float* scales;       // [N, G]
  const float* zero_scales;  // [G, N]
  int64_t N, K, G, group;
};

// x rows quantised per group: xq [M, K] int8, sx [M, G]; and exact per-group sums for the zeros.
struct QuantX {
  std::vector<int8_t> q;
  std::vector<float> scale, sum;
};

template <typename T>
QuantX quantize_x(const T* x, int64_t M, int64_t K, int64_t group, bool to_int8) {
  const int64_t G = K / group;
  QuantX out;
  out.sum.assign(M * G, 0.f);
  if (to_int8) {
    out.q.resize(M * K);
    out.scale.resize(M * G);
  }
  for (int64_t m = 0; m < M; ++m)
    for (int64_t g = 0; g < G; ++g) {
      const T* xg = x + m * K + g * group;
#if defined(__AVX512F__)
      if (sizeof(T) == 2 && to_int8) {  // the hot case, vectorised: group is a multiple of 64
        __m512 sum = _mm512_setzero_ps(), mx = _mm512_setzero_ps();
        for (int64_t i = 0; i < group; i += 16) {
          const __m512 v = _mm512_castsi512_ps(_mm512_slli_epi32(
              _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(xg + i))), 16));
          sum = _mm512_add_ps(sum, v);
          mx = _mm512_max_ps(mx, _mm512_abs_ps(v));
        }
        const float amax = _mm512_reduce_max_ps(mx);
        out.sum[m * G + g] = _mm512_reduce_add_ps(sum);
        out.scale[m * G + g] = amax / 127.f;
        const __m512 inv = _mm512_set1_ps(amax > 0.f ? 127.f / amax : 0.f);
        int8_t* dst = out.q.data() + m * K + g * group;
        for (int64_t i = 0; i < group; i += 16) {
          const __m512 v = _mm512_castsi512_ps(_mm512_slli_epi32(
              _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(xg + i))), 16));
          _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + i),
                           _mm512_cvtsepi32_epi8(_mm512_cvtps_epi32(_mm512_mul_ps(v, inv))));  // round to nearest even
        }
        continue;
      }
#elif defined(__AVX2__) && defined(__FMA__)
      if (sizeof(T) == 2 && to_int8) {  // as above, 8 lanes
        const uint16_t* xb = reinterpret_cast<const uint16_t*>(xg);
        const __m256 no_sign = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
        __m256 sum = _mm256_setzero_ps(), mx = _mm256_setzero_ps();
        for (int64_t i = 0; i < group; i += 8) {
          const __m256 v = avx2::load8(xb + i);
          sum = _mm256_add_ps(sum, v);
          mx = _mm256_max_ps(mx, _mm256_and_ps(v, no_sign));
        }
        const float amax = avx2::hmax(mx);
        out.sum[m * G + g] = avx2::hsum(sum);
        out.scale[m * G + g] = amax / 127.f;
        const __m256 inv = _mm256_set1_ps(amax > 0.f ? 127.f / amax : 0.f);
        int8_t* dst = out.q.data() + m * K + g * group;
        for (int64_t i = 0; i < group; i += 32) {  // 4 x 8 int32 -> 32 int8 (the packs work per 128-bit lane)
          __m256i q[4];
          for (int j = 0; j < 4; ++j) q[j] = _mm256_cvtps_epi32(_mm256_mul_ps(avx2::load8(xb + i + 8 * j), inv));
          const __m256i packed = _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
          _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + i),
                              _mm256_permutevar8x32_epi32(packed, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7)));
        }
        continue;
      }
#endif
      float mx = 0.f, s = 0.f;
      for (int64_t i = 0; i < group; ++i) {
        s += load(xg, i);
        mx = std::max(mx, std::fabs(load(xg, i)));
      }
      out.sum[m * G + g] = s;
      if (!to_int8) continue;
      const float inv = mx > 0.f ? 127.f / mx : 0.f;
      out.scale[m * G + g] = mx / 127.f;
      for (int64_t i = 0; i < group; ++i)
        out.q[m * K + g * group + i] = static_cast<int8_t>(std::lrintf(load(xg, i) * inv));
    }
  return out;
}

// Rows [n0, n0 + R) against activation rows [m0, m0 + MB); acc[m][r] includes the zero points.
template <int R, int MB, typename T>
void awq_tile(const Awq& w, const T* x, const QuantX& qx, float (&acc)[MB][R], int64_t m0, int64_t n0) {
  const int64_t K = w.K, G = w.G, group = w.group, row_bytes = K / 2;
  const bool ahead = n0 + 2 * R <= w.N;
#if defined(__AVX512VNNI__) && defined(__AVX512BW__) && defined(__AVX512VL__)
  __m512 total[MB][R];
  for (int m = 0; m < MB; ++m)
    for (int r = 0; r < R; ++r) total[m][r] = _mm512_setzero_ps();
  if constexpr (sizeof(T) == 2) {
    // weights scale times activation scale, per (activation row, weight row, group)
    thread_local std::vector<float> ws;
    ws.resize(MB * R * G);
    for (int m = 0; m < MB; ++m)
      for (int r = 0; r < R; ++r)
        for (int64_t g = 0; g < G; ++g)
          ws[(m * R + r) * G + g] = w.scales[(n0 + r) * G + g] * qx.scale[(m0 + m) * G + g];
    const __m512i low4 = _mm512_set1_epi8(0x0f);
    const int64_t full = K / 128;
    for (int64_t b = 0; b < full; ++b) {
      const int64_t g_lo = (128 * b) / group, g_hi = (128 * b + 64) / group;
      __m512i xlo[MB], xhi[MB];
      for (int m = 0; m < MB; ++m) {
        xlo[m] = _mm512_loadu_si512(qx.q.data() + (m0 + m) * K + 128 * b);
        xhi[m] = _mm512_loadu_si512(qx.q.data() + (m0 + m) * K + 128 * b + 64);
      }
      for (int r = 0; r < R; ++r) {
        const uint8_t* src = w.packed + (n0 + r) * row_bytes + 64 * b;
        if (ahead) _mm_prefetch(reinterpret_cast<const char*>(src + R * row_bytes), _MM_HINT_T0);
        const __m512i v = _mm512_loadu_si512(src);
        const __m512i lo = _mm512_and_si512(v, low4);
        const __m512i hi = _mm512_and_si512(_mm512_srli_epi16(v, 4), low4);
        for (int m = 0; m < MB; ++m) {
          const float* wsr = ws.data() + (m * R + r) * G;
          const __m512i dl = _mm512_dpbusd_epi32(_mm512_setzero_si512(), lo, xlo[m]);
          const __m512i dh = _mm512_dpbusd_epi32(_mm512_setzero_si512(), hi, xhi[m]);
          if (g_lo == g_hi) {
            total[m][r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_add_epi32(dl, dh)), _mm512_set1_ps(wsr[g_lo]),
                                          total[m][r]);
          } else {
            total[m][r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dl), _mm512_set1_ps(wsr[g_lo]), total[m][r]);
            total[m][r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dh), _mm512_set1_ps(wsr[g_hi]), total[m][r]);
          }
        }
      }
    }
    if (K % 128) {  // the half block: 32 bytes, one group
      const int64_t k = 128 * full, g = k / group;
      const __m256i low4_256 = _mm256_set1_epi8(0x0f);
      for (int r = 0; r < R; ++r) {
        const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w.packed + (n0 + r) * row_bytes + k / 2));
        const __m256i lo = _mm256_and_si256(v, low4_256);
        const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), low4_256);
        for (int m = 0; m < MB; ++m) {
          const int8_t* xr = qx.q.data() + (m0 + m) * K + k;
          __m256i d = _mm256_dpbusd_epi32(_mm256_setzero_si256(), lo, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xr)));
          d = _mm256_dpbusd_epi32(d, hi, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xr + 32)));
          const __m512 df = _mm512_zextps256_ps512(_mm256_cvtepi32_ps(d));  // upper lanes zero
          total[m][r] = _mm512_fmadd_ps(df, _mm512_set1_ps(ws[(m * R + r) * G + g]), total[m][r]);
        }
      }
    }
  } else {
    const __m512i low4 = _mm512_set1_epi32(0x0f);
    for (int64_t k = 0; k < K; k += 128) {
      const int64_t half = std::min<int64_t>(64, (K - k) / 2);  // 64 for a full block, 32 for the half block
      for (int r = 0; r < R; ++r) {
        const uint8_t* src = w.packed + (n0 + r) * row_bytes + k / 2;
        if (ahead) _mm_prefetch(reinterpret_cast<const char*>(src + R * row_bytes), _MM_HINT_T0);
        for (int64_t c = 0; c < half; c += 16) {  // 16 bytes: weights k+c.. (low) and k+half+c.. (high)
          const __m512i wide = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + c)));
          const __m512 lo = _mm512_cvtepi32_ps(_mm512_and_si512(wide, low4));
          const __m512 hi = _mm512_cvtepi32_ps(_mm512_srli_epi32(wide, 4));
          const float s_lo = w.scales[(n0 + r) * G + (k + c) / group];
          const float s_hi = w.scales[(n0 + r) * G + (k + half + c) / group];
          for (int m = 0; m < MB; ++m) {
            const float* xr = reinterpret_cast<const float*>(x) + (m0 + m) * K + k + c;
            total[m][r] = _mm512_fmadd_ps(_mm512_mul_ps(lo, _mm512_set1_ps(s_lo)), _mm512_loadu_ps(xr), total[m][r]);
            total[m][r] = _mm512_fmadd_ps(_mm512_mul_ps(hi, _mm512_set1_ps(s_hi)), _mm512_loadu_ps(xr + half),
                                          total[m][r]);
          }
        }
      }
    }
  }
  for (int r = 0; r < R; ++r)
    for (int m = 0; m < MB; ++m) acc[m][r] = _mm512_reduce_add_ps(total[m][r]);
#elif defined(__AVX2__) && defined(__FMA__)
  __m256 total[MB][R];
  for (int m = 0; m < MB; ++m)
    for (int r = 0; r < R; ++r) total[m][r] = _mm256_setzero_ps();
  if constexpr (sizeof(T) == 2) {
    thread_local std::vector<float> ws;  // as in the VNNI path
    ws.resize(MB * R * G);
    for (int m = 0; m < MB; ++m)
      for (int r = 0; r < R; ++r)
        for (int64_t g = 0; g < G; ++g)
          ws[(m * R + r) * G + g] = w.scales[(n0 + r) * G + g] * qx.scale[(m0 + m) * G + g];
    const __m256i low4 = _mm256_set1_epi8(0x0f), ones = _mm256_set1_epi16(1);
    // unsigned weights (first operand) times signed activations, adjacent pairs summed in int16
    auto dot = [](__m256i q, const int8_t* xq) {
      return _mm256_maddubs_epi16(q, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq)));
    };
    const int64_t full = K / 128;
    for (int64_t b = 0; b < full; ++b) {
      const int64_t g_lo = (128 * b) / group, g_hi = (128 * b + 64) / group;
      LLM_UNROLL for (int r = 0; r < R; ++r) {
        const uint8_t* src = w.packed + (n0 + r) * row_bytes + 64 * b;
        if (ahead) _mm_prefetch(reinterpret_cast<const char*>(src + R * row_bytes), _MM_HINT_T0);
        const __m256i v0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src));
        const __m256i v1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + 32));
        // weights 0-31, 32-63 (low nibbles) and 64-95, 96-127 (high nibbles) of the block
        const __m256i q0 = _mm256_and_si256(v0, low4), q1 = _mm256_and_si256(v1, low4);
        const __m256i q2 = _mm256_and_si256(_mm256_srli_epi16(v0, 4), low4);
        const __m256i q3 = _mm256_and_si256(_mm256_srli_epi16(v1, 4), low4);
        LLM_UNROLL for (int m = 0; m < MB; ++m) {
          const int8_t* xq = qx.q.data() + (m0 + m) * K + 128 * b;
          const float* wsr = ws.data() + (m * R + r) * G;
          const __m256i lo = _mm256_add_epi16(dot(q0, xq), dot(q1, xq + 32));        // |.| <= 7620
          const __m256i hi = _mm256_add_epi16(dot(q2, xq + 64), dot(q3, xq + 96));   // |.| <= 7620
          if (g_lo == g_hi) {
            const __m256i d = _mm256_madd_epi16(_mm256_add_epi16(lo, hi), ones);    // |.| <= 15240 before
            total[m][r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(d), _mm256_set1_ps(wsr[g_lo]), total[m][r]);
          } else {
            total[m][r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_madd_epi16(lo, ones)), _mm256_set1_ps(wsr[g_lo]),
                                          total[m][r]);
            total[m][r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_madd_epi16(hi, ones)), _mm256_set1_ps(wsr[g_hi]),
                                          total[m][r]);
          }
        }
      }
    }
    if (K % 128) {  // the half block: 32 bytes, one group
      const int64_t k = 128 * full, g = k / group;
      for (int r = 0; r < R; ++r) {
        const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w.packed + (n0 + r) * row_bytes + k / 2));
        const __m256i lo = _mm256_and_si256(v, low4);
        const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), low4);
        for (int m = 0; m < MB; ++m) {
          const int8_t* xq = qx.q.data() + (m0 + m) * K + k;
          const __m256i d = _mm256_madd_epi16(_mm256_add_epi16(dot(lo, xq), dot(hi, xq + 32)), ones);
          total[m][r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(d), _mm256_set1_ps(ws[(m * R + r) * G + g]), total[m][r]);
        }
      }
    }
  } else {
    const __m256i low4 = _mm256_set1_epi32(0x0f);
    for (int64_t k = 0; k < K; k += 128) {
      const int64_t half = std::min<int64_t>(64, (K - k) / 2);  // 64 for a full block, 32 for the half block
      for (int r = 0; r < R; ++r) {
        const uint8_t* src = w.packed + (n0 + r) * row_bytes + k / 2;
        if (ahead) _mm_prefetch(reinterpret_cast<const char*>(src + R * row_bytes), _MM_HINT_T0);
        const float* sr = w.scales + (n0 + r) * G;
        for (int64_t c = 0; c < half; c += 8) {  // 8 bytes: weights k+c.. (low) and k+half+c.. (high)
          const __m256i wide = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(src + c)));
          const __m256 lo = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_and_si256(wide, low4)),
                                          _mm256_set1_ps(sr[(k + c) / group]));
          const __m256 hi = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_srli_epi32(wide, 4)),
                                          _mm256_set1_ps(sr[(k + half + c) / group]));
          for (int m = 0; m < MB; ++m) {
            const float* xr = reinterpret_cast<const float*>(x) + (m0 + m) * K + k + c;
            total[m][r] = _mm256_fmadd_ps(lo, _mm256_loadu_ps(xr), total[m][r]);
            total[m][r] = _mm256_fmadd_ps(hi, _mm256_loadu_ps(xr + half), total[m][r]);
          }
        }
      }
    }
  }
  for (int r = 0; r < R; ++r)
    for (int m = 0; m < MB; ++m) acc[m][r] = avx2::hsum(total[m][r]);
#else
  (void)ahead;
  auto weight = [&](int64_t n, int64_t k) {  // q[n, k] from the packed layout
    const int64_t block = k / 128 * 128, half = std::min<int64_t>(64, (K - block) / 2), i = k - block;
    const uint8_t byte = w.packed[n * row_bytes + block / 2 + i % half];
    return i < half ? (byte & 0xf) : (byte >> 4);
  };
  for (int m = 0; m < MB; ++m)
    for (int r = 0; r < R; ++r) {
      float sum = 0.f;
      if constexpr (sizeof(T) == 2) {  // W4A8, as the vector paths: exact int32 sums per group
        for (int64_t g = 0; g < G; ++g) {
          int32_t d = 0;
          for (int64_t k = g * group; k < (g + 1) * group; ++k) d += weight(n0 + r, k) * qx.q[(m0 + m) * K + k];
          sum += w.scales[(n0 + r) * G + g] * qx.scale[(m0 + m) * G + g] * static_cast<float>(d);
        }
      } else {
        for (int64_t k = 0; k < K; ++k)
          sum += w.scales[(n0 + r) * G + k / group] * static_cast<float>(weight(n0 + r, k)) * load(x, (m0 + m) * K + k);
      }
      acc[m][r] = sum;
    }
#endif
}

// zero[m][n] = sum_g zero_scales[g][n] * sum(x[m] in group g): 16 rows per vector.
void zero_terms(const Awq& w, const QuantX& qx, int64_t M, float* zero) {
  for (int64_t m = 0; m < M; ++m) {
    const float* xs = qx.sum.data() + m * w.G;
    int64_t n = 0;
#if defined(__AVX512F__)
    for (; n + 16 <= w.N; n += 16) {
      __m512 z = _mm512_setzero_ps();
      for (int64_t g = 0; g < w.G; ++g)
        z = _mm512_fmadd_ps(_mm512_loadu_ps(w.zero_scales + g * w.N + n), _mm512_set1_ps(xs[g]), z);
      _mm512_storeu_ps(zero + m * w.N + n, z);
    }
#elif defined(__AVX2__) && defined(__FMA__)
    for (; n + 8 <= w.N; n += 8) {
      __m256 z = _mm256_setzero_ps();
      for (int64_t g = 0; g < w.G; ++g)
        z = _mm256_fmadd_ps(_mm256_loadu_ps(w.zero_scales + g * w.N + n), _mm256_set1_ps(xs[g]), z);
      _mm256_storeu_ps(zero + m * w.N + n, z);
    }
#endif
    for (; n < w.N; ++n) {
      float z = 0.f;
      for (int64_t g = 0; g < w.G; ++g) z += w.zero_scales[g * w.N + n] * xs[g];
      zero[m * w.N + n] = z;
    }
  }
}

template <int R, int MB, typename T>
void awq_rows(const Awq& w, const T* x, const QuantX& qx, const float* zero, const T* bias, T* y, int64_t M,
              int64_t n0) {
  auto emit = [&](int64_t m, int64_t r, float value) {
    const int64_t n = n0 + r;
    store(y, m * w.N + n, value - zero[m * w.N + n] + (bias ? load(bias, n) : 0.f));
  };
  int64_t m0 = 0;
  for (; m0 + MB <= M; m0 += MB) {
    float acc[MB][R];
    awq_tile<R, MB>(w, x, qx, acc, m0, n0);
    for (int m = 0; m < MB; ++m)
      for (int r = 0; r < R; ++r) emit(m0 + m, r, acc[m][r]);
  }
  for (; m0 < M; ++m0) {  // activation rows left over: one at a time
    float acc[1][R];
    awq_tile<R, 1>(w, x, qx, acc, m0, n0);
    for (int r = 0; r < R; ++r) emit(m0, r, acc[0][r]);
  }
}

template <typename T, int R, int MB>
void awq_gemv_impl(const Awq& w, const T* x, const T* bias, T* y, int64_t M) {
  const QuantX qx = quantize_x(x, M, w.K, w.group, sizeof(T) == 2);
  std::vector<float> zero(M * w.N);  // not thread_local: the team reads the caller's copy
  zero_terms(w, qx, M, zero.data());
  const float* zp = zero.data();
  const int64_t tiles = w.N / R;
#pragma omp parallel if (w.N * w.K > 32768)
  {
    const int64_t threads = omp_get_num_threads(), t = omp_get_thread_num();
    const int64_t per = (tiles + threads - 1) / threads;
    for (int64_t i = t * per; i < std::min(tiles, (t + 1) * per); ++i) awq_rows<R, MB>(w, x, qx, zp, bias, y, M, i * R);
  }
  for (int64_t n0 = tiles * R; n0 < w.N; ++n0) awq_rows<1, MB>(w, x, qx, zp, bias, y, M, n0);
}

}  // namespace

// Tiles: one row, 8 weight rows; several rows, 2 weight rows x 4 activation rows (AVX-512 VNNI,
// scalar) or 4 x 2 (AVX2: 8% faster than 2 x 4 on the default model's gate_up at 4 rows, 1 thread).
#if defined(__AVX2__) && defined(__FMA__) && !(defined(__AVX512VNNI__) && defined(__AVX512BW__) && defined(__AVX512VL__))
constexpr int kWeightRowsBatched = 4, kActivationRowsBatched = 2;
#else
constexpr int kWeightRowsBatched = 2, kActivationRowsBatched = 4;
#endif

template <typename T>
void awq_gemv(const T* x, const uint8_t* packed, const float* scales, const float* zero_scales, const T* bias, T* y,
              int64_t M, int64_t N, int64_t K, int64_t group) {
  const Awq w{packed, scales, zero_scales, N, K, K / group, group};
  if (M == 1) awq_gemv_impl<T, 8, 1>(w, x, bias, y, M);
  else awq_gemv_impl<T, kWeightRowsBatched, kActivationRowsBatched>(w, x, bias, y, M);
}

template <typename T>
void awq_dequantize(const uint8_t* packed, const float* scales, const float* zero_scales, T* out, int64_t N, int64_t K,
                    int64_t group) {
  const int64_t G = K / group, row_bytes = K / 2;
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t block = 0; block < K; block += 128) {
      const int64_t half = std::min<int64_t>(64, (K - block) / 2);
      const uint8_t* src = packed + n * row_bytes + block / 2;
      int64_t i = 0;
#if defined(__AVX512F__) && defined(__AVX512BF16__)
      // 16 bytes at a time: 16 low-nibble weights (k = block + i..) and 16 high (k = block + half + i..)
      for (; i + 16 <= half; i += 16) {
        const __m512i wide = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i)));
        const __m512i qs[2] = {_mm512_and_si512(wide, _mm512_set1_epi32(0x0f)), _mm512_srli_epi32(wide, 4)};
        for (int h = 0; h < 2; ++h) {
          const int64_t k = block + h * half + i, g = k / group;
          const __m512 v = _mm512_fmsub_ps(_mm512_cvtepi32_ps(qs[h]), _mm512_set1_ps(scales[n * G + g]),
                                           _mm512_set1_ps(zero_scales[g * N + n]));
          if constexpr (sizeof(T) == 2) {
            _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + n * K + k), (__m256i)_mm512_cvtneps_pbh(v));
          } else {
            _mm512_storeu_ps(reinterpret_cast<float*>(out) + n * K + k, v);
          }
        }
      }
#elif defined(__AVX2__) && defined(__FMA__)
      // 8 bytes at a time: 8 low-nibble weights (k = block + i..) and 8 high (k = block + half + i..)
      for (; i + 8 <= half; i += 8) {
        const __m256i wide = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(src + i)));
        const __m256i qs[2] = {_mm256_and_si256(wide, _mm256_set1_epi32(0x0f)), _mm256_srli_epi32(wide, 4)};
        for (int h = 0; h < 2; ++h) {
          const int64_t k = block + h * half + i, g = k / group;
          const __m256 v = _mm256_fmsub_ps(_mm256_cvtepi32_ps(qs[h]), _mm256_set1_ps(scales[n * G + g]),
                                           _mm256_set1_ps(zero_scales[g * N + n]));
          avx2::store8(out + n * K + k, v);  // bf16: rounded to nearest even
        }
      }
#endif
      for (; i < half; ++i) {
        const uint8_t byte = src[i];
        const int64_t k_lo = block + i, k_hi = block + half + i;
        store(out, n * K + k_lo,
              static_cast<float>(byte & 0xf) * scales[n * G + k_lo / group] - zero_scales[(k_lo / group) * N + n]);
        store(out, n * K + k_hi,
              static_cast<float>(byte >> 4) * scales[n * G + k_hi / group] - zero_scales[(k_hi / group) * N + n]);
      }
    }
  }
}

template void awq_gemv<float>(const float*, const uint8_t*, const float*, const float*, const float*, float*,
                              int64_t, int64_t, int64_t, int64_t);
template void awq_gemv<uint16_t>(const uint16_t*, const uint8_t*, const float*, const float*, const uint16_t*,
                                 uint16_t*, int64_t, int64_t, int64_t, int64_t);
template void awq_dequantize<float>(const uint8_t*, const float*, const float*, float*, int64_t, int64_t, int64_t);
template void awq_dequantize<uint16_t>(const uint8_t*, const float*, const float*, uint16_t*, int64_t, int64_t,
                                       int64_t);

const char* awq_gemv_isa() {
#if defined(__AVX512VNNI__) && defined(__AVX512BW__) && defined(__AVX512VL__)
  return "AVX-512 VNNI (W4A8, vpdpbusd)";
#elif defined(__AVX2__) && defined(__FMA__)
  return "AVX2 (W4A8, vpmaddubsw + vpmaddwd)";
#else
  return "scalar";
#endif
}

}  // namespace llm_infer_cpu
