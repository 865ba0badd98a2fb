// Fused mixture-of-experts MLP: route the step's (token, slot) pairs to this rank's experts,
// then run each expert that received tokens once over all of them. A decode step therefore
// streams only the selected experts' weights (the activated parameters), and a prefill step
// reads each hit expert's weights once per tile of its tokens instead of once per token.
//
//   y[t] = sum_j weights[t, j] * down_e(silu(gate_e(x[t])) * up_e(x[t])),  e = ids[t, j] - first
//
// over the slots whose expert e is in [0, num_local); others (experts of other ranks) add
// nothing. Rounding points follow the torch reference (kernels/moe_torch.py): the projections
// and the activation round to T, the weighted sum accumulates in fp32 and rounds to T once.
#include <algorithm>
#include <cstring>
#include <vector>

#include "cpu_kernels.h"

namespace llm_infer_cpu {
namespace {

void gemv_t(const uint16_t* x, const uint16_t* w, uint16_t* y, int64_t M, int64_t N, int64_t K) {
  gemv_bf16(x, w, nullptr, y, M, N, K);
}
void gemv_t(const float* x, const float* w, float* y, int64_t M, int64_t N, int64_t K) {
  gemv_f32(x, w, nullptr, y, M, N, K);
}

}  // namespace

template <typename T>
void fused_moe(const T* x, const T* gate_up, const T* down, const float* weights, const int64_t* ids, T* y,
               int64_t tokens, int64_t top_k, int64_t num_local, int64_t first, int64_t hidden, int64_t inter) {
  // Counting sort of the (token, slot) pairs by local expert: pairs of expert e are
  // order[start[e] .. start[e + 1]), in token order (as the reference's index_add).
  std::vector<int64_t> start(num_local + 1, 0), order(tokens * top_k);
  for (int64_t p = 0; p < tokens * top_k; ++p) {
    const int64_t e = ids[p] - first;
    if (e >= 0 && e < num_local) ++start[e + 1];
  }
  for (int64_t e = 0; e < num_local; ++e) start[e + 1] += start[e];
  std::vector<int64_t> fill(start.begin(), start.end() - 1);
  for (int64_t p = 0; p < tokens * top_k; ++p) {
    const int64_t e = ids[p] - first;
    if (e >= 0 && e < num_local) order[fill[e]++] = p;
  }
  int64_t most = 0;
  for (int64_t e = 0; e < num_local; ++e) most = std::max(most, start[e + 1] - start[e]);

  std::vector<float> acc(tokens * hidden, 0.f);
  std::vector<T> xs(most * hidden), h(most * 2 * inter), act(most * inter), out(most * hidden);
  for (int64_t e = 0; e < num_local; ++e) {
    const int64_t n = start[e + 1] - start[e];
    if (n == 0) continue;  // an expert no token chose: its weights are never read
    const int64_t* pairs = order.data() + start[e];
    for (int64_t i = 0; i < n; ++i)
      std::copy_n(x + (pairs[i] / top_k) * hidden, hidden, xs.data() + i * hidden);
    gemv_t(xs.data(), gate_up + e * 2 * inter * hidden, h.data(), n, 2 * inter, hidden);
    silu_and_mul<T>(act.data(), h.data(), n, inter);
    gemv_t(act.data(), down + e * hidden * inter, out.data(), n, hidden, inter);
    for (int64_t i = 0; i < n; ++i) {
      const float w = weights[pairs[i]];
      float* dst = acc.data() + (pairs[i] / top_k) * hidden;
      const T* src = out.data() + i * hidden;
#pragma omp simd
      for (int64_t c = 0; c < hidden; ++c) dst[c] += load(src, c) * w;
    }
  }
  for (int64_t i = 0; i < tokens * hidden; ++i) store(y, i, acc[i]);
}

#define INSTANTIATE(T)                                                                                          \
  template void fused_moe<T>(const T*, const T*, const T*, const float*, const int64_t*, T*, int64_t, int64_t, \
                             int64_t, int64_t, int64_t, int64_t);
INSTANTIATE(float)
INSTANTIATE(uint16_t)

// Its matmuls are the GEMV tiles and its activation elementwise.cpp's SiLU; its own loops (the
// gather and the weighted sum) are left to the compiler. Scalar if either kernel it calls is.
const char* moe_isa() {
  if (std::strcmp(gemv_isa(), "scalar") == 0 || std::strcmp(elementwise_isa(), "scalar") == 0) return "scalar";
  return gemv_isa();
}

}  // namespace llm_infer_cpu
