// Batched LoRA for CPU (BGMV): y[t] += each token's own adapter product, in place, for a step whose
// tokens use any mix of adapter slots (the contract and the torch reference: kernels/lora_torch.py).
//
// Shapes: y [T, N], x [T, K], a [S, n*R, K], b [S, R, N] (B transposed), slots [T] int64 (-1: none),
// offsets: n + 1 output boundaries of the sub-projections (q/k/v, gate/up). fp32 or bf16, fp32 sums.
//
// Two passes in one OpenMP region (a region costs more than either pass at decode sizes when the
// machine is busy): (1) shrink, u[t, j] = a[s_t, j, :] . x[t, :] (T * n*R dot
// products streaming a's rows); (2) expand, y[t, n0:n1] += sum_r u[t, i*R + r] * b[s_t, r, n0:n1]
// over chunks of outputs: contiguous multiply-adds, no horizontal sums. Zero-padded ranks give
// u == 0 exactly and their rows of b are skipped, so an adapter of rank r reads r rows, not R.
// Memory-bound at decode sizes: each token reads its adapter's A and B once.
#include <torch/extension.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

namespace {

inline float load(float v) { return v; }
inline float load(uint16_t v) {  // bf16 -> fp32: the high half of the float
  uint32_t u = static_cast<uint32_t>(v) << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}
inline void store(float* p, float v) { *p = v; }
inline void store(uint16_t* p, float v) {  // fp32 -> bf16, round to nearest even (finite values)
  uint32_t u;
  std::memcpy(&u, &v, sizeof u);
  u += 0x7FFFu + ((u >> 16) & 1u);
  *p = static_cast<uint16_t>(u >> 16);
}

constexpr int64_t kChunk = 256;  // outputs per expand task (an fp32 accumulator that stays in L1)

template <typename T>
void lora_add_impl(T* y, const T* x, const T* a, const T* b, const int64_t* slots, const std::vector<int64_t>& off,
                   int64_t tokens, int64_t n_out, int64_t k_in, int64_t rank, int64_t y_stride, int64_t x_stride) {
  const int64_t n_sub = static_cast<int64_t>(off.size()) - 1;
  const int64_t nr = n_sub * rank;
  std::vector<float> u(static_cast<size_t>(tokens * nr), 0.f);
  const int64_t chunks = (n_out + kChunk - 1) / kChunk;
#pragma omp parallel
  {
#pragma omp for collapse(2) schedule(static)
  for (int64_t t = 0; t < tokens; ++t) {
    for (int64_t j = 0; j < nr; ++j) {
      const int64_t s = slots[t];
      if (s < 0) continue;
      const T* arow = a + (s * nr + j) * k_in;
      const T* xrow = x + t * x_stride;
      float acc = 0.f;
#pragma omp simd reduction(+ : acc)
      for (int64_t k = 0; k < k_in; ++k) acc += load(arow[k]) * load(xrow[k]);
      u[t * nr + j] = acc;
    }
  }
  // the implicit barrier of the loop above: every u is written before any is read
#pragma omp for collapse(2) schedule(static)
  for (int64_t t = 0; t < tokens; ++t) {
    for (int64_t c = 0; c < chunks; ++c) {
      const int64_t s = slots[t];
      if (s < 0) continue;
      const int64_t n0 = c * kChunk, n1 = std::min(n_out, n0 + kChunk);
      float acc[kChunk] = {};
      for (int64_t i = 0; i < n_sub; ++i) {
        const int64_t lo = std::max(n0, off[i]), hi = std::min(n1, off[i + 1]);
        for (int64_t r = 0; lo < hi && r < rank; ++r) {
          const float w = u[t * nr + i * rank + r];
          if (w == 0.f) continue;  // a padded rank (or a zero product): nothing to add
          const T* brow = b + (s * rank + r) * n_out;
#pragma omp simd
          for (int64_t n = lo; n < hi; ++n) acc[n - n0] += w * load(brow[n]);
        }
      }
      T* yrow = y + t * y_stride;
      for (int64_t n = n0; n < n1; ++n) store(yrow + n, load(yrow[n]) + acc[n - n0]);
    }
  }
  }
}

void lora_add(torch::Tensor y, torch::Tensor x, torch::Tensor a, torch::Tensor b, torch::Tensor slots,
              std::vector<int64_t> offsets) {
  TORCH_CHECK(y.dim() == 2 && x.dim() == 2 && a.dim() == 3 && b.dim() == 3 && slots.dim() == 1, "lora_add: ranks");
  TORCH_CHECK(y.scalar_type() == x.scalar_type() && a.scalar_type() == y.scalar_type() &&
                  b.scalar_type() == y.scalar_type(), "lora_add: y, x, a, b must share a dtype");
  TORCH_CHECK(slots.scalar_type() == torch::kInt64 && slots.is_contiguous(), "lora_add: slots must be int64");
  TORCH_CHECK(a.is_contiguous() && b.is_contiguous(), "lora_add: a and b must be contiguous");
  TORCH_CHECK(y.stride(1) == 1 && x.stride(1) == 1, "lora_add: rows of y and x must be contiguous");
  const int64_t tokens = y.size(0), n_out = y.size(1), k_in = x.size(1), rank = b.size(1);
  TORCH_CHECK(offsets.size() >= 2 && offsets.front() == 0 && offsets.back() == n_out, "lora_add: offsets");
  TORCH_CHECK(x.size(0) == tokens && slots.size(0) == tokens && a.size(2) == k_in && b.size(2) == n_out &&
                  a.size(1) == static_cast<int64_t>(offsets.size() - 1) * rank && a.size(0) == b.size(0),
              "lora_add: shapes");
  const int64_t* s = slots.data_ptr<int64_t>();
  for (int64_t t = 0; t < tokens; ++t) TORCH_CHECK(s[t] < a.size(0), "lora_add: slot out of range");
  if (y.scalar_type() == torch::kFloat32) {
    lora_add_impl(y.data_ptr<float>(), x.data_ptr<float>(), a.data_ptr<float>(), b.data_ptr<float>(), s, offsets,
                  tokens, n_out, k_in, rank, y.stride(0), x.stride(0));
  } else {
    TORCH_CHECK(y.scalar_type() == torch::kBFloat16, "lora_add: float32 or bfloat16");
    auto p = [](torch::Tensor& t) { return reinterpret_cast<uint16_t*>(t.data_ptr<at::BFloat16>()); };
    lora_add_impl(p(y), p(x), p(a), p(b), s, offsets, tokens, n_out, k_in, rank, y.stride(0), x.stride(0));
  }
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("lora_add", &lora_add, "y += each token's LoRA product (its slot's B (A x)), in place");
}
