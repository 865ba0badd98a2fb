// Fused element-wise kernels: (residual add +) RMSNorm, rotary embedding, SiLU-and-multiply.
//
// Paths: plain loops that the compiler vectorises for AVX-512 builds (and the scalar build);
// AVX2 intrinsics otherwise, since GCC leaves some of these loops scalar for AVX2 (SiLU's
// clamped exp, the bf16 rounding) or versions them behind aliasing checks. Both round where
// the torch reference (kernels/torch_ref.py) rounds, and reduce each row on its own.
#include <cmath>
#include <vector>

#include "cpu_kernels.h"
#include "vec_avx2.h"

#if !defined(__AVX512F__) && defined(__AVX2__) && defined(__FMA__)
#define LLM_INFER_ELEMENTWISE_AVX2 1
#endif

namespace llm_infer_cpu {
namespace {

#if defined(LLM_INFER_ELEMENTWISE_AVX2)
using avx2::load8;
using avx2::round8;
using avx2::store8;

// One row: res = round(x + res) when res is given (then the sum is normalised), and
// out = round(weight * round(v / rms(v))). out may be x (in place).
template <typename T>
void rms_norm_row(T* out, const T* x, T* res, const T* weight, float eps, int64_t dim) {
  const int64_t body = dim / 8 * 8;
  const T* v = res != nullptr ? res : x;  // what is normalised, once res holds the rounded sum
  __m256 acc = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i < body; i += 8) {
    __m256 vi = load8(x + i);
    if (res != nullptr) {
      vi = round8(res, _mm256_add_ps(vi, load8(res + i)));
      store8(res + i, vi);
    }
    acc = _mm256_fmadd_ps(vi, vi, acc);
  }
  float ss = avx2::hsum(acc);
  for (; i < dim; ++i) {
    float vi = load(x, i);
    if (res != nullptr) {
      vi = round_to(res, vi + load(res, i));
      store(res, i, vi);
    }
    ss += vi * vi;
  }
  const float inv = 1.0f / std::sqrt(ss / static_cast<float>(dim) + eps);
  const __m256 inv8 = _mm256_set1_ps(inv);
  for (i = 0; i < body; i += 8)
    store8(out + i, _mm256_mul_ps(load8(weight + i), round8(out, _mm256_mul_ps(load8(v + i), inv8))));
  for (; i < dim; ++i) store(out, i, load(weight, i) * round_to(out, load(v, i) * inv));
}

// One head, in place: the half-split rotation by cos c[0:head_dim] and sin s[0:head_dim].
template <typename T>
void rotate_head(T* v, const float* c, const float* s, int64_t half) {
  int64_t i = 0;
  for (; i + 8 <= half; i += 8) {
    const __m256 a = load8(v + i), b = load8(v + i + half);
    store8(v + i, _mm256_fmsub_ps(a, load8(c + i), _mm256_mul_ps(b, load8(s + i))));
    store8(v + i + half, _mm256_fmadd_ps(b, load8(c + i + half), _mm256_mul_ps(a, load8(s + i + half))));
  }
  for (; i < half; ++i) {
    const float a = load(v, i), b = load(v, i + half);
    store(v, i, a * c[i] - b * s[i]);
    store(v, i + half, b * c[i + half] + a * s[i + half]);
  }
}

template <typename T>
void silu_and_mul_row(T* o, const T* gate, const T* up, int64_t inter) {
  const __m256 one = _mm256_set1_ps(1.0f);
  int64_t i = 0;
  for (; i + 8 <= inter; i += 8) {
    const __m256 g = load8(gate + i);
    const __m256 act = _mm256_div_ps(g, _mm256_add_ps(one, avx2::exp8(_mm256_sub_ps(_mm256_setzero_ps(), g))));
    store8(o + i, _mm256_mul_ps(round8(o, act), load8(up + i)));
  }
  for (; i < inter; ++i) {
    const float g = load(gate, i);
    store(o, i, round_to(o, g / (1.0f + exp_approx(-g))) * load(up, i));
  }
}
#endif

}  // namespace

template <typename T>
void rms_norm(T* out, const T* x, T* residual, const T* weight, float eps, int64_t rows, int64_t dim,
              int64_t x_stride, int64_t out_stride) {
#pragma omp parallel for schedule(static) if (rows * dim > 65536)
  for (int64_t r = 0; r < rows; ++r) {
    const T* xr = x + r * x_stride;
    T* outr = out + r * out_stride;
#if defined(LLM_INFER_ELEMENTWISE_AVX2)
    rms_norm_row(outr, xr, residual != nullptr ? residual + r * dim : nullptr, weight, eps, dim);
#else
    std::vector<float> v(dim);
    if (residual != nullptr) {
      T* res = residual + r * dim;
      for (int64_t i = 0; i < dim; ++i) {
        v[i] = round_to(res, load(xr, i) + load(res, i));
        store(res, i, v[i]);
      }
    } else {
      for (int64_t i = 0; i < dim; ++i) v[i] = load(xr, i);
    }
    float ss = 0.f;
    for (int64_t i = 0; i < dim; ++i) ss += v[i] * v[i];
    const float inv = 1.0f / std::sqrt(ss / static_cast<float>(dim) + eps);
    for (int64_t i = 0; i < dim; ++i) store(outr, i, load(weight, i) * round_to(outr, v[i] * inv));
#endif
  }
}

template <typename T>
void rotary(T* x, const int64_t* positions, const float* cos_cache, const float* sin_cache, int64_t tokens,
            int64_t rot_heads, int64_t head_dim, int64_t row_stride) {
  const int64_t half = head_dim / 2;
#pragma omp parallel for schedule(static) if (tokens * rot_heads > 256)
  for (int64_t t = 0; t < tokens; ++t) {
    const float* c = cos_cache + positions[t] * head_dim;
    const float* s = sin_cache + positions[t] * head_dim;
    for (int64_t h = 0; h < rot_heads; ++h) {
      T* v = x + t * row_stride + h * head_dim;
#if defined(LLM_INFER_ELEMENTWISE_AVX2)
      rotate_head(v, c, s, half);
#else
      for (int64_t i = 0; i < half; ++i) {
        const float a = load(v, i), b = load(v, i + half);
        store(v, i, a * c[i] - b * s[i]);
        store(v, i + half, b * c[i + half] + a * s[i + half]);
      }
#endif
    }
  }
}

template <typename T>
void silu_and_mul(T* out, const T* x, int64_t tokens, int64_t inter) {
#pragma omp parallel for schedule(static) if (tokens * inter > 65536)
  for (int64_t t = 0; t < tokens; ++t) {
    const T* gate = x + t * 2 * inter;
    const T* up = gate + inter;
    T* o = out + t * inter;
#if defined(LLM_INFER_ELEMENTWISE_AVX2)
    silu_and_mul_row(o, gate, up, inter);
#else
#pragma omp simd
    for (int64_t i = 0; i < inter; ++i) {
      const float g = load(gate, i);
      // Round the activation as a separate torch op would before the multiply.
      store(o, i, round_to(o, g / (1.0f + exp_approx(-g))) * load(up, i));
    }
#endif
  }
}

#define LLM_INFER_INSTANTIATE(T)                                                                             \
  template void rms_norm<T>(T*, const T*, T*, const T*, float, int64_t, int64_t, int64_t, int64_t);         \
  template void rotary<T>(T*, const int64_t*, const float*, const float*, int64_t, int64_t, int64_t, int64_t); \
  template void silu_and_mul<T>(T*, const T*, int64_t, int64_t);

LLM_INFER_INSTANTIATE(float)
LLM_INFER_INSTANTIATE(uint16_t)

const char* elementwise_isa() {
#if defined(__AVX512F__)
  return "AVX-512F (compiler-vectorised)";
#elif defined(LLM_INFER_ELEMENTWISE_AVX2)
  return "AVX2 + FMA";
#else
  return "scalar";
#endif
}

}  // namespace llm_infer_cpu
