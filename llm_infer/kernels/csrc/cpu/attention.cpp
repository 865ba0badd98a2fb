// Attention of short queries (decode, speculative verification) over the paged KV
// cache, reading keys and values in place through the block table. Each (sequence,
// KV head) pair is one task; the query heads sharing that KV head are served together,
// so every cached key and value is converted once.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "cpu_kernels.h"

namespace llm_infer_cpu {

template <typename T>
void paged_attention(T* out, const T* q, const T* k_cache, const T* v_cache, const int64_t* block_tables,
                     const int64_t* q_start, const int64_t* q_lens, const int64_t* seq_lens, int64_t num_seqs,
                     int64_t max_blocks,
                     int64_t num_heads, int64_t num_kv_heads, int64_t head_dim, int64_t block_size, float scale,
                     int64_t q_row_stride) {
  const int64_t group = num_heads / num_kv_heads;
#pragma omp parallel for collapse(2) schedule(dynamic)
  for (int64_t b = 0; b < num_seqs; ++b) {
    for (int64_t kvh = 0; kvh < num_kv_heads; ++kvh) {
      const int64_t q_len = q_lens[b];
      const int64_t seq_len = seq_lens[b];
      const int64_t* table = block_tables + b * max_blocks;
      std::vector<float> qf(group * head_dim), scores(group * seq_len), acc(group * head_dim), row(head_dim);
      for (int64_t i = 0; i < q_len; ++i) {
        const int64_t token = q_start[b] + i;
        const int64_t visible = seq_len - q_len + i + 1;  // causal: positions [0, visible)
        for (int64_t g = 0; g < group; ++g) {
          const T* qv = q + token * q_row_stride + (kvh * group + g) * head_dim;
          for (int64_t d = 0; d < head_dim; ++d) qf[g * head_dim + d] = load(qv, d) * scale;
        }
        std::vector<float> mx(group, -std::numeric_limits<float>::infinity());
        for (int64_t p = 0; p < visible; ++p) {
          const T* kv = k_cache + ((table[p / block_size] * block_size + p % block_size) * num_kv_heads + kvh) * head_dim;
          for (int64_t d = 0; d < head_dim; ++d) row[d] = load(kv, d);
          for (int64_t g = 0; g < group; ++g) {
            float s = 0.f;
            for (int64_t d = 0; d < head_dim; ++d) s += qf[g * head_dim + d] * row[d];
            scores[g * seq_len + p] = s;
            mx[g] = std::max(mx[g], s);
          }
        }
        std::vector<float> total(group, 0.f);
        for (int64_t g = 0; g < group; ++g) {
          for (int64_t p = 0; p < visible; ++p) {
            const float e = std::exp(scores[g * seq_len + p] - mx[g]);
            scores[g * seq_len + p] = e;
            total[g] += e;
          }
        }
        std::fill(acc.begin(), acc.end(), 0.f);
        for (int64_t p = 0; p < visible; ++p) {
          const T* vv = v_cache + ((table[p / block_size] * block_size + p % block_size) * num_kv_heads + kvh) * head_dim;
          for (int64_t d = 0; d < head_dim; ++d) row[d] = load(vv, d);
          for (int64_t g = 0; g < group; ++g) {
            const float w = scores[g * seq_len + p];
            for (int64_t d = 0; d < head_dim; ++d) acc[g * head_dim + d] += w * row[d];
          }
        }
        for (int64_t g = 0; g < group; ++g) {
          T* o = out + (token * num_heads + kvh * group + g) * head_dim;
          const float inv = 1.0f / total[g];
          for (int64_t d = 0; d < head_dim; ++d) store(o, d, acc[g * head_dim + d] * inv);
        }
      }
    }
  }
}

template void paged_attention<float>(float*, const float*, const float*, const float*, const int64_t*,
                                      const int64_t*, const int64_t*, const int64_t*, int64_t, int64_t, int64_t,
                                      int64_t, int64_t, int64_t, float, int64_t);
template void paged_attention<uint16_t>(uint16_t*, const uint16_t*, const uint16_t*, const uint16_t*,
                                        const int64_t*, const int64_t*, const int64_t*, const int64_t*, int64_t,
                                        int64_t, int64_t, int64_t, int64_t, int64_t, float, int64_t);

}  // namespace llm_infer_cpu
