// Attention of short queries (decode, speculative verification) over the paged KV
// cache, reading keys and values in place through the block table. Each (sequence,
// KV head) pair is one task; the query heads sharing that KV head are served together,
// so every cached key and value row is converted to fp32 once.
#include <algorithm>
#include <cstring>
#include <limits>
#include <vector>

#include "cpu_kernels.h"

namespace llm_infer_cpu {
namespace {

struct Scratch {
  std::vector<float> q, scores, acc, row;
};

template <typename T>
void one_task(T* out, const T* q, const T* k_cache, const T* v_cache, const int64_t* table, int64_t q_first,
              int64_t q_len, int64_t seq_len, int64_t kvh, int64_t group, int64_t num_heads, int64_t num_kv_heads,
              int64_t head_dim, int64_t block_size, float scale, int64_t q_row_stride, Scratch& s) {
  s.q.resize(group * head_dim);
  s.scores.resize(group * seq_len);
  s.acc.resize(group * head_dim);
  s.row.resize(head_dim);
  float* qf = s.q.data();
  float* scores = s.scores.data();
  float* acc = s.acc.data();
  float* row = s.row.data();
  // Positions are walked block by block: one table lookup per block, then rows `row_step` apart.
  const int64_t row_step = num_kv_heads * head_dim;
  auto for_each_row = [&](const T* cache, int64_t visible, auto&& f) {
    for (int64_t p0 = 0, blk = 0; p0 < visible; p0 += block_size, ++blk) {
      const T* base = cache + (table[blk] * block_size * num_kv_heads + kvh) * head_dim;
      const int64_t n = std::min(block_size, visible - p0);
      for (int64_t j = 0; j < n; ++j) f(p0 + j, base + j * row_step);
    }
  };
  for (int64_t i = 0; i < q_len; ++i) {
    const int64_t token = q_first + i;
    const int64_t visible = seq_len - q_len + i + 1;  // causal: positions [0, visible)
    for (int64_t g = 0; g < group; ++g) {
      const T* qv = q + token * q_row_stride + (kvh * group + g) * head_dim;
      for (int64_t d = 0; d < head_dim; ++d) qf[g * head_dim + d] = load(qv, d) * scale;
    }
    for_each_row(k_cache, visible, [&](int64_t p, const T* kv) {
#pragma omp simd
      for (int64_t d = 0; d < head_dim; ++d) row[d] = load(kv, d);
      for (int64_t g = 0; g < group; ++g) {
        const float* qg = qf + g * head_dim;
        float dot = 0.f;
#pragma omp simd reduction(+ : dot)
        for (int64_t d = 0; d < head_dim; ++d) dot += qg[d] * row[d];
        scores[g * seq_len + p] = dot;
      }
    });
    for (int64_t g = 0; g < group; ++g) {
      float* sc = scores + g * seq_len;
      float mx = -std::numeric_limits<float>::infinity();
      for (int64_t p = 0; p < visible; ++p) mx = std::max(mx, sc[p]);
      float total = 0.f;
#pragma omp simd reduction(+ : total)
      for (int64_t p = 0; p < visible; ++p) {
        sc[p] = exp_approx(sc[p] - mx);
        total += sc[p];
      }
      const float inv = 1.0f / total;
      for (int64_t p = 0; p < visible; ++p) sc[p] *= inv;
    }
    std::fill(acc, acc + group * head_dim, 0.f);
    for_each_row(v_cache, visible, [&](int64_t p, const T* vv) {
#pragma omp simd
      for (int64_t d = 0; d < head_dim; ++d) row[d] = load(vv, d);
      for (int64_t g = 0; g < group; ++g) {
        const float w = scores[g * seq_len + p];
        float* ag = acc + g * head_dim;
#pragma omp simd
        for (int64_t d = 0; d < head_dim; ++d) ag[d] += w * row[d];
      }
    });
    for (int64_t g = 0; g < group; ++g) {
      T* o = out + (token * num_heads + kvh * group + g) * head_dim;
      for (int64_t d = 0; d < head_dim; ++d) store(o, d, acc[g * head_dim + d]);
    }
  }
}

}  // namespace

template <typename T>
void paged_attention(T* out, const T* q, const T* k_cache, const T* v_cache, const int64_t* block_tables,
                     const int64_t* q_start, const int64_t* q_lens, const int64_t* seq_lens, int64_t num_seqs,
                     int64_t max_blocks, int64_t num_heads, int64_t num_kv_heads, int64_t head_dim,
                     int64_t block_size, float scale, int64_t q_row_stride) {
  const int64_t group = num_heads / num_kv_heads;
  int64_t work = 0;
  for (int64_t b = 0; b < num_seqs; ++b) work += seq_lens[b] * q_lens[b];
  work *= num_heads * head_dim;
  // Small problems run on the calling thread: waking the pool costs more than they take.
#pragma omp parallel for collapse(2) schedule(dynamic) if (work > (1 << 18))
  for (int64_t b = 0; b < num_seqs; ++b) {
    for (int64_t kvh = 0; kvh < num_kv_heads; ++kvh) {
      thread_local Scratch scratch;
      one_task(out, q, k_cache, v_cache, block_tables + b * max_blocks, q_start[b], q_lens[b], seq_lens[b], kvh,
               group, num_heads, num_kv_heads, head_dim, block_size, scale, q_row_stride, scratch);
    }
  }
}

template <typename T>
void write_kv(const T* k, const T* v, T* k_cache, T* v_cache, const int64_t* slot_mapping, int64_t tokens,
              int64_t row, int64_t k_stride, int64_t v_stride) {
#pragma omp parallel for schedule(static) if (tokens * row > (1 << 16))
  for (int64_t t = 0; t < tokens; ++t) {
    std::memcpy(k_cache + slot_mapping[t] * row, k + t * k_stride, row * sizeof(T));
    std::memcpy(v_cache + slot_mapping[t] * row, v + t * v_stride, row * sizeof(T));
  }
}

template void write_kv<float>(const float*, const float*, float*, float*, const int64_t*, int64_t, int64_t, int64_t,
                              int64_t);
template void write_kv<uint16_t>(const uint16_t*, const uint16_t*, uint16_t*, uint16_t*, const int64_t*, int64_t,
                                 int64_t, int64_t, int64_t);
template void paged_attention<float>(float*, const float*, const float*, const float*, const int64_t*,
                                      const int64_t*, const int64_t*, const int64_t*, int64_t, int64_t, int64_t,
                                      int64_t, int64_t, int64_t, float, int64_t);
template void paged_attention<uint16_t>(uint16_t*, const uint16_t*, const uint16_t*, const uint16_t*,
                                        const int64_t*, const int64_t*, const int64_t*, const int64_t*, int64_t,
                                        int64_t, int64_t, int64_t, int64_t, int64_t, float, int64_t);

}  // namespace llm_infer_cpu
