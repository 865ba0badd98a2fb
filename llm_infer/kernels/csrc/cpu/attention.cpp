// Attention of short queries (decode, speculative verification) over the paged KV cache,
// reading keys and values in place through the block table.
//
// Work is split flash-decoding style: each (sequence, KV head) is cut into chunks of whole
// blocks so that even one sequence gives every thread work; a chunk produces, per query row
// and head, its running max, softmax denominator and unnormalised output, and a final pass
// merges the chunks. The query heads sharing a KV head are served together, so every cached
// row is read and converted once per chunk.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include <omp.h>

#include "cpu_kernels.h"

namespace llm_infer_cpu {
namespace {

constexpr int64_t kMinChunk = 64;  // positions; smaller chunks cost more in merging than they save

// row[0:d] = cache row converted to fp32
template <typename T>
inline void to_f32(float* row, const T* src, int64_t d) {
#if defined(__AVX512F__)
  if (d % 16 == 0) {
    for (int64_t i = 0; i < d; i += 16) {
      if constexpr (sizeof(T) == 2) {
        const __m256i raw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + i));
        _mm512_storeu_ps(row + i, _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(raw), 16)));
      } else {
        _mm512_storeu_ps(row + i, _mm512_loadu_ps(reinterpret_cast<const float*>(src) + i));
      }
    }
    return;
  }
#endif
  for (int64_t i = 0; i < d; ++i) row[i] = load(src, i);
}

inline float dot(const float* a, const float* b, int64_t d) {
#if defined(__AVX512F__)
  if (d % 16 == 0) {
    __m512 acc = _mm512_setzero_ps();
    for (int64_t i = 0; i < d; i += 16) acc = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), acc);
    return _mm512_reduce_add_ps(acc);
  }
#endif
  float s = 0.f;
  for (int64_t i = 0; i < d; ++i) s += a[i] * b[i];
  return s;
}

inline void axpy(float* y, float a, const float* x, int64_t d) {
#if defined(__AVX512F__)
  if (d % 16 == 0) {
    const __m512 av = _mm512_set1_ps(a);
    for (int64_t i = 0; i < d; i += 16)
      _mm512_storeu_ps(y + i, _mm512_fmadd_ps(av, _mm512_loadu_ps(x + i), _mm512_loadu_ps(y + i)));
    return;
  }
#endif
  for (int64_t i = 0; i < d; ++i) y[i] += a * x[i];
}

struct Partial {  // one chunk's contribution for one (query row, head)
  float max, sum;
};

struct Job {
  int64_t seq, kvh, begin, end;  // positions [begin, end) of sequence seq, KV head kvh
};

// out[0:D] = sum_j w[j] * rows[j][0:D], accumulated in registers (a running sum in memory
// would wait on its own store every row).
template <int DV>
void weighted_sum(float* out, const float* w, const float* rows, int64_t n) {
#if defined(__AVX512F__)
  __m512 acc[DV];
  for (int v = 0; v < DV; ++v) acc[v] = _mm512_setzero_ps();
  for (int64_t j = 0; j < n; ++j) {
    const __m512 wj = _mm512_set1_ps(w[j]);
    for (int v = 0; v < DV; ++v) acc[v] = _mm512_fmadd_ps(wj, _mm512_loadu_ps(rows + j * DV * 16 + v * 16), acc[v]);
  }
  for (int v = 0; v < DV; ++v) _mm512_storeu_ps(out + v * 16, acc[v]);
#else
  for (int d = 0; d < DV * 16; ++d) {
    float s = 0.f;
    for (int64_t j = 0; j < n; ++j) s += w[j] * rows[j * DV * 16 + d];
    out[d] = s;
  }
#endif
}

inline void weighted_sum_any(float* out, const float* w, const float* rows, int64_t n, int64_t d) {
  if (d == 64) return weighted_sum<4>(out, w, rows, n);
  if (d == 128) return weighted_sum<8>(out, w, rows, n);
  std::fill(out, out + d, 0.f);
  for (int64_t j = 0; j < n; ++j) axpy(out, w[j], rows + j * d, d);
}

template <typename T>
void run_job(const Job& job, int64_t chunk_index, const T* q, const T* k_cache, const T* v_cache,
             const int64_t* table, int64_t q_first, int64_t q_len, int64_t seq_len, int64_t group,
             int64_t num_kv_heads, int64_t head_dim, int64_t block_size, float scale, int64_t q_row_stride,
             int64_t chunks, Partial* partials, float* outputs) {
  thread_local std::vector<float> qf, scores, keys, values;
  const int64_t span = job.end - job.begin;
  const int64_t reach = std::min(job.end, seq_len) - job.begin;  // rows any query row may see
  qf.resize(head_dim);
  scores.resize(span);
  keys.resize(span * head_dim);
  values.resize(span * head_dim);
  // The chunk's keys and values in fp32, read block by block (one table lookup per block).
  const int64_t row_step = num_kv_heads * head_dim;
  for (int64_t j0 = 0; j0 < reach; j0 += block_size) {
    const int64_t offset = (table[(job.begin + j0) / block_size] * block_size * num_kv_heads + job.kvh) * head_dim;
    const int64_t m = std::min(block_size, reach - j0);
    for (int64_t j = 0; j < m; ++j) {
      to_f32(keys.data() + (j0 + j) * head_dim, k_cache + offset + j * row_step, head_dim);
      to_f32(values.data() + (j0 + j) * head_dim, v_cache + offset + j * row_step, head_dim);
    }
  }
  for (int64_t i = 0; i < q_len; ++i) {
    const int64_t token = q_first + i;
    const int64_t visible = std::min(job.end, seq_len - q_len + i + 1);  // causal
    const int64_t n = std::max<int64_t>(0, visible - job.begin);
    for (int64_t g = 0; g < group; ++g) {
      to_f32(qf.data(), q + token * q_row_stride + (job.kvh * group + g) * head_dim, head_dim);
      for (int64_t d = 0; d < head_dim; ++d) qf[d] *= scale;
      float mx = -std::numeric_limits<float>::infinity();
      for (int64_t j = 0; j < n; ++j) {
        scores[j] = dot(qf.data(), keys.data() + j * head_dim, head_dim);
        mx = std::max(mx, scores[j]);
      }
      float total = 0.f;
#pragma omp simd reduction(+ : total)
      for (int64_t j = 0; j < n; ++j) {
        scores[j] = exp_approx(scores[j] - mx);
        total += scores[j];
      }
      const int64_t slot = ((token * num_kv_heads + job.kvh) * group + g) * chunks + chunk_index;
      partials[slot] = {mx, total};
      weighted_sum_any(outputs + slot * head_dim, scores.data(), values.data(), n, head_dim);
    }
  }
}

}  // namespace

template <typename T>
void paged_attention(T* out, const T* q, const T* k_cache, const T* v_cache, const int64_t* block_tables,
                     const int64_t* q_start, const int64_t* q_lens, const int64_t* seq_lens, int64_t num_seqs,
                     int64_t max_blocks, int64_t num_heads, int64_t num_kv_heads, int64_t head_dim,
                     int64_t block_size, float scale, int64_t q_row_stride, int64_t fixed_chunk) {
  const int64_t group = num_heads / num_kv_heads;
  int64_t longest = 0, tokens_end = 0, work = 0;
  for (int64_t b = 0; b < num_seqs; ++b) {
    longest = std::max(longest, seq_lens[b]);
    tokens_end = std::max(tokens_end, q_start[b] + q_lens[b]);
    work += seq_lens[b] * q_lens[b];
  }
  work *= num_heads * head_dim;
  const int threads = omp_get_max_threads();
  const bool parallel = threads > 1 && work > (1 << 15);
  // Enough chunks that every thread has two jobs, but none shorter than kMinChunk (in whole blocks).
  // Deterministic mode: chunks at fixed positions, so each row's reduction order is its own.
  int64_t chunks = 1, chunk_len;
  if (fixed_chunk > 0) {
    chunk_len = (fixed_chunk + block_size - 1) / block_size * block_size;
    chunks = std::max<int64_t>(1, (longest + chunk_len - 1) / chunk_len);
  } else {
    if (parallel) {
      const int64_t wanted = (2 * threads + num_seqs * num_kv_heads - 1) / (num_seqs * num_kv_heads);
      chunks = std::max<int64_t>(1, std::min(wanted, longest / kMinChunk));
    }
    chunk_len = ((longest + chunks - 1) / chunks + block_size - 1) / block_size * block_size;
  }
  std::vector<Job> jobs;
  for (int64_t b = 0; b < num_seqs; ++b)
    for (int64_t h = 0; h < num_kv_heads; ++h)
      for (int64_t c = 0; c < chunks; ++c) jobs.push_back({b, h, c * chunk_len, std::min(seq_lens[b], (c + 1) * chunk_len)});
  const int64_t slots = tokens_end * num_kv_heads * group * chunks;
  std::vector<Partial> partials(slots, Partial{-std::numeric_limits<float>::infinity(), 0.f});
  std::vector<float> outputs(slots * head_dim, 0.f);
#pragma omp parallel for schedule(dynamic) if (parallel)
  for (size_t i = 0; i < jobs.size(); ++i) {
    const Job& job = jobs[i];
    if (job.begin >= job.end) continue;
    run_job(job, static_cast<int64_t>(i % chunks), q, k_cache, v_cache, block_tables + job.seq * max_blocks,
            q_start[job.seq], q_lens[job.seq], seq_lens[job.seq], group, num_kv_heads, head_dim, block_size, scale,
            q_row_stride, chunks, partials.data(), outputs.data());
  }
  // Merge the chunks of every (query row, head) of the listed sequences.
  for (int64_t b = 0; b < num_seqs; ++b) {
    for (int64_t token = q_start[b]; token < q_start[b] + q_lens[b]; ++token) {
      for (int64_t h = 0; h < num_heads; ++h) {
        const int64_t base = ((token * num_kv_heads + h / group) * group + h % group) * chunks;
        float mx = -std::numeric_limits<float>::infinity();
        for (int64_t c = 0; c < chunks; ++c) mx = std::max(mx, partials[base + c].max);
        float total = 0.f;
        std::vector<float> acc(head_dim, 0.f);
        for (int64_t c = 0; c < chunks; ++c) {
          const Partial& p = partials[base + c];
          if (p.sum == 0.f) continue;
          const float w = std::exp(p.max - mx);
          total += w * p.sum;
          axpy(acc.data(), w, outputs.data() + (base + c) * head_dim, head_dim);
        }
        T* o = out + (token * num_heads + h) * head_dim;
        const float inv = 1.0f / total;
        for (int64_t d = 0; d < head_dim; ++d) store(o, d, acc[d] * inv);
      }
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
                                      int64_t, int64_t, int64_t, float, int64_t, int64_t);
template void paged_attention<uint16_t>(uint16_t*, const uint16_t*, const uint16_t*, const uint16_t*,
                                        const int64_t*, const int64_t*, const int64_t*, const int64_t*, int64_t,
                                        int64_t, int64_t, int64_t, int64_t, int64_t, float, int64_t, int64_t);

const char* attention_isa() {
#if defined(__AVX512F__)
  return "AVX-512F";
#else
  return "scalar";
#endif
}

}  // namespace llm_infer_cpu
