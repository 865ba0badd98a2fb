// Fused element-wise kernels: (residual add +) RMSNorm, rotary embedding, SiLU-and-multiply.
#include <cmath>
#include <vector>

#include "cpu_kernels.h"

namespace llm_infer_cpu {

template <typename T>
void rms_norm(T* out, const T* x, T* residual, const T* weight, float eps, int64_t rows, int64_t dim,
              int64_t x_stride, int64_t out_stride) {
#pragma omp parallel for schedule(static) if (rows * dim > 65536)
  for (int64_t r = 0; r < rows; ++r) {
    const T* xr = x + r * x_stride;
    T* outr = out + r * out_stride;
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
      for (int64_t i = 0; i < half; ++i) {
        const float a = load(v, i), b = load(v, i + half);
        store(v, i, a * c[i] - b * s[i]);
        store(v, i + half, b * c[i + half] + a * s[i + half]);
      }
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
#pragma omp simd
    for (int64_t i = 0; i < inter; ++i) {
      const float g = load(gate, i);
      // Round the activation as a separate torch op would before the multiply.
      store(o, i, round_to(o, g / (1.0f + exp_approx(-g))) * load(up, i));
    }
  }
}

#define LLM_INFER_INSTANTIATE(T)                                                                             \
  template void rms_norm<T>(T*, const T*, T*, const T*, float, int64_t, int64_t, int64_t, int64_t);         \
  template void rotary<T>(T*, const int64_t*, const float*, const float*, int64_t, int64_t, int64_t, int64_t); \
  template void silu_and_mul<T>(T*, const T*, int64_t, int64_t);

LLM_INFER_INSTANTIATE(float)
LLM_INFER_INSTANTIATE(uint16_t)

const char* elementwise_isa() {  // plain loops, vectorised by the compiler for the build's flags
#if defined(__AVX512F__)
  return "AVX-512F (compiler-vectorised)";
#elif defined(__AVX2__) && defined(__FMA__)
  return "AVX2 + FMA (compiler-vectorised)";
#else
  return "scalar";
#endif
}

}  // namespace llm_infer_cpu
