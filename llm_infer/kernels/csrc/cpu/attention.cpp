// Attention of short queries (decode, speculative verification) over the paged KV cache,
// reading keys and values in place through the block table.
//
// Work is split flash-decoding style: each (sequence, KV head) is cut into chunks of whole
// blocks so that even one sequence gives every thread work; a chunk produces, per query row
// and head, its running max, softmax denominator and unnormalised output, and a final pass
// merges the chunks. The query heads sharing a KV head are served together, so every cached
// row is read and converted once per chunk.
//
// Paths: AVX-512F (16-lane conversions and weighted sums), AVX2 + FMA (8 lanes, exp through
// exp8), scalar otherwise; with either vector path the scores are taken eight keys at a time.
// On each path a row's result is computed by the same operations whatever the other rows, so
// fixed chunks keep it bitwise batch-invariant there.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif
#include "vec_avx2.h"

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
#elif defined(__AVX2__) && defined(__FMA__)
  if (d % 8 == 0) {
    for (int64_t i = 0; i < d; i += 8) _mm256_storeu_ps(row + i, avx2::load8(src + i));
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
#elif defined(__AVX2__) && defined(__FMA__)
  if (d % 8 == 0) {
    const __m256 av = _mm256_set1_ps(a);
    for (int64_t i = 0; i < d; i += 8)
      _mm256_storeu_ps(y + i, _mm256_fmadd_ps(av, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
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

// Positions of a job converted to fp32 at a time: a tile of keys or values that stays in L1
// while every query row of the job uses it. A multiple of 8 (the AVX2 scores' key groups).
constexpr int64_t kTile = 32;

// tile[0:m] = rows pos .. pos + m - 1 of KV head kvh of the paged cache, in fp32.
template <typename T>
void cache_rows_to_f32(float* tile, const T* cache, const int64_t* table, int64_t pos, int64_t m, int64_t kvh,
                       int64_t num_kv_heads, int64_t head_dim, int64_t block_size) {
  for (int64_t j = 0; j < m;) {  // one table lookup per cache block
    const int64_t in_block = (pos + j) % block_size, take = std::min(block_size - in_block, m - j);
    const T* src = cache + ((table[(pos + j) / block_size] * block_size + in_block) * num_kv_heads + kvh) * head_dim;
    for (int64_t t = 0; t < take; ++t) to_f32(tile + (j + t) * head_dim, src + t * num_kv_heads * head_dim, head_dim);
    j += take;
  }
}

// scores[j] = qf . keys[j] for j < m. With AVX2 (also in AVX-512 builds, where it measured
// faster than a 16-lane dot and reduction per key) eight keys at a time: rows up to the next
// multiple of 8 are read and their scores written, never used. A key's score is the same
// whatever m.
inline void scores_of(float* scores, const float* qf, const float* keys, int64_t m, int64_t d) {
#if defined(__AVX2__) && defined(__FMA__)
  if (d % 8 == 0) {
    for (int64_t j0 = 0; j0 < m; j0 += 8) {
      __m256 acc[8];
      for (int r = 0; r < 8; ++r) acc[r] = _mm256_setzero_ps();
      for (int64_t i = 0; i < d; i += 8) {
        const __m256 qv = _mm256_loadu_ps(qf + i);
        for (int r = 0; r < 8; ++r) acc[r] = _mm256_fmadd_ps(qv, _mm256_loadu_ps(keys + (j0 + r) * d + i), acc[r]);
      }
      // Horizontal sums of the eight accumulators at once: after two rounds of pairwise adds
      // lane r of the low half holds half of key r's sum (r < 4), the high half the other half.
      const __m256 s0123 = _mm256_hadd_ps(_mm256_hadd_ps(acc[0], acc[1]), _mm256_hadd_ps(acc[2], acc[3]));
      const __m256 s4567 = _mm256_hadd_ps(_mm256_hadd_ps(acc[4], acc[5]), _mm256_hadd_ps(acc[6], acc[7]));
      _mm256_storeu_ps(scores + j0, _mm256_add_ps(_mm256_permute2f128_ps(s0123, s4567, 0x20),
                                                  _mm256_permute2f128_ps(s0123, s4567, 0x31)));
    }
    return;
  }
#endif
  for (int64_t j = 0; j < m; ++j) scores[j] = dot(qf, keys + j * d, d);
}

// Query rows that share each load of a key or value vector: with AVX2, 3 rows x 4 keys (or x 4
// vectors of a value row) are 12 accumulators, which with the 3 rows' vectors and one load fill
// the 16 registers.
constexpr int kRowBlock = 3;

#if defined(__AVX2__) && defined(__FMA__)
// scores_of for R query rows at once (qf rows of d floats, scores rows of `stride`), four keys at
// a time (rows up to the next multiple of 4 read and written, never used). Each (row, key) sum
// runs in its own accumulator and is reduced in scores_of's tree, so its bits are the same
// whichever kernel and neighbours computed it.
template <int R>
void scores_rows(float* scores, int64_t stride, const float* qf, const float* keys, int64_t m, int64_t d) {
  for (int64_t j0 = 0; j0 < m; j0 += 4) {
    __m256 acc[R][4];
    for (int r = 0; r < R; ++r)
      for (int c = 0; c < 4; ++c) acc[r][c] = _mm256_setzero_ps();
    for (int64_t i = 0; i < d; i += 8) {
      __m256 qv[R];
      for (int r = 0; r < R; ++r) qv[r] = avx2::in_register(_mm256_loadu_ps(qf + r * d + i));
      for (int c = 0; c < 4; ++c) {
        const __m256 k = avx2::in_register(_mm256_loadu_ps(keys + (j0 + c) * d + i));
        for (int r = 0; r < R; ++r) acc[r][c] = _mm256_fmadd_ps(qv[r], k, acc[r][c]);
      }
    }
    for (int r = 0; r < R; ++r) {
      const __m256 h = _mm256_hadd_ps(_mm256_hadd_ps(acc[r][0], acc[r][1]), _mm256_hadd_ps(acc[r][2], acc[r][3]));
      _mm_storeu_ps(scores + r * stride + j0, _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1)));
    }
  }
}

// out[r][0:8 * NV] += sum_{j < n} w[r][j] * rows[j][0:8 * NV] for R rows at once, j in order
// (as add_weighted_sum: the same bits per lane).
template <int R, int NV>
void weighted_sums(float* const* out, const float* const* w, const float* rows, int64_t n, int64_t stride) {
  __m256 acc[R][NV];
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < NV; ++v) acc[r][v] = _mm256_loadu_ps(out[r] + v * 8);
  for (int64_t j = 0; j < n; ++j) {
    __m256 wj[R];
    for (int r = 0; r < R; ++r) wj[r] = avx2::in_register(_mm256_set1_ps(w[r][j]));
    for (int v = 0; v < NV; ++v) {
      const __m256 x = avx2::in_register(_mm256_loadu_ps(rows + j * stride + v * 8));
      for (int r = 0; r < R; ++r) acc[r][v] = _mm256_fmadd_ps(wj[r], x, acc[r][v]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < NV; ++v) _mm256_storeu_ps(out[r] + v * 8, acc[r][v]);
}

template <int R>
void weighted_sums_any(float* const* out, const float* const* w, const float* rows, int64_t n, int64_t d) {
  float* o[R];
  for (int64_t c = 0; c < d;) {  // in passes of 32 columns, then of 8
    const int64_t width = c + 32 <= d ? 32 : 8;
    for (int r = 0; r < R; ++r) o[r] = out[r] + c;
    if (width == 32) {
      weighted_sums<R, 4>(o, w, rows + c, n, d);
    } else {
      weighted_sums<R, 1>(o, w, rows + c, n, d);
    }
    c += width;
  }
}
#endif

inline float max_of(const float* x, int64_t n) {
  float mx = -std::numeric_limits<float>::infinity();
  int64_t j = 0;
#if defined(__AVX2__) && defined(__FMA__)
  __m256 m8 = _mm256_set1_ps(mx);
  for (; j + 8 <= n; j += 8) m8 = _mm256_max_ps(m8, _mm256_loadu_ps(x + j));
  mx = avx2::hmax(m8);
#endif
  for (; j < n; ++j) mx = std::max(mx, x[j]);
  return mx;
}

// scores[j] = exp(scores[j] - mx) for j < n; returns their sum.
inline float exp_and_sum(float* scores, int64_t n, float mx) {
#if !defined(__AVX512F__) && defined(__AVX2__) && defined(__FMA__)
  const __m256 m = _mm256_set1_ps(mx);
  __m256 total = _mm256_setzero_ps();
  for (int64_t j = 0; j < n; j += 8) {
    __m256 e = avx2::exp8(_mm256_sub_ps(_mm256_loadu_ps(scores + j), m));
    if (n - j < 8) e = _mm256_and_ps(e, avx2::first_lanes(n - j));
    _mm256_storeu_ps(scores + j, e);
    total = _mm256_add_ps(total, e);
  }
  return avx2::hsum(total);
#else
  float total = 0.f;
#pragma omp simd reduction(+ : total)
  for (int64_t j = 0; j < n; ++j) {
    scores[j] = exp_approx(scores[j] - mx);
    total += scores[j];
  }
  return total;
#endif
}

// out[0:D] += sum_j w[j] * rows[j][0:D], j in order, accumulated in registers (a running sum in
// memory would wait on its own store every row).
#if defined(__AVX512F__)
template <int DV>
void weighted_sum(float* out, const float* w, const float* rows, int64_t n) {
  __m512 acc[DV];
  for (int v = 0; v < DV; ++v) acc[v] = _mm512_loadu_ps(out + v * 16);
  for (int64_t j = 0; j < n; ++j) {
    const __m512 wj = _mm512_set1_ps(w[j]);
    for (int v = 0; v < DV; ++v) acc[v] = _mm512_fmadd_ps(wj, _mm512_loadu_ps(rows + j * DV * 16 + v * 16), acc[v]);
  }
  for (int v = 0; v < DV; ++v) _mm512_storeu_ps(out + v * 16, acc[v]);
}
#elif defined(__AVX2__) && defined(__FMA__)
// Columns [0, 8 * NV) of rows of `stride` floats: at most 8 accumulators, so that with the
// broadcast weight and a load they stay within AVX2's 16 registers.
template <int NV>
void weighted_sum(float* out, const float* w, const float* rows, int64_t n, int64_t stride) {
  __m256 acc[NV];
  for (int v = 0; v < NV; ++v) acc[v] = _mm256_loadu_ps(out + v * 8);
  for (int64_t j = 0; j < n; ++j) {
    const __m256 wj = _mm256_set1_ps(w[j]);
    for (int v = 0; v < NV; ++v) acc[v] = _mm256_fmadd_ps(wj, _mm256_loadu_ps(rows + j * stride + v * 8), acc[v]);
  }
  for (int v = 0; v < NV; ++v) _mm256_storeu_ps(out + v * 8, acc[v]);
}
#endif

inline void add_weighted_sum(float* out, const float* w, const float* rows, int64_t n, int64_t d) {
#if defined(__AVX512F__)
  if (d == 64) return weighted_sum<4>(out, w, rows, n);
  if (d == 128) return weighted_sum<8>(out, w, rows, n);
#elif defined(__AVX2__) && defined(__FMA__)
  if (d % 8 == 0) {  // in passes of 64, 32 and 8 columns
    int64_t c = 0;
    for (; c + 64 <= d; c += 64) weighted_sum<8>(out + c, w, rows + c, n, d);
    for (; c + 32 <= d; c += 32) weighted_sum<4>(out + c, w, rows + c, n, d);
    for (; c < d; c += 8) weighted_sum<1>(out + c, w, rows + c, n, d);
    return;
  }
#endif
  for (int64_t j = 0; j < n; ++j) axpy(out, w[j], rows + j * d, d);
}

// scores_of for `count` (<= kRowBlock) consecutive rows against keys [0, m).
inline void block_scores(float* scores, int64_t stride, const float* qf, int count, const float* keys, int64_t m,
                         int64_t d) {
#if defined(__AVX2__) && defined(__FMA__)
  if (d % 8 == 0 && count == 3) return scores_rows<3>(scores, stride, qf, keys, m, d);
  if (d % 8 == 0 && count == 2) return scores_rows<2>(scores, stride, qf, keys, m, d);
#endif
  for (int r = 0; r < count; ++r) scores_of(scores + r * stride, qf + r * d, keys, m, d);
}

// add_weighted_sum for `count` (<= kRowBlock) rows, row r over its own n[r] value rows: together
// up to the fewest, then each on its own.
inline void block_weighted_sums(float* const* out, const float* const* w, const int64_t* n, int count,
                                const float* rows, int64_t d) {
  int64_t shared = 0;
#if defined(__AVX2__) && defined(__FMA__)
  if (d % 8 == 0 && count >= 2) {
    shared = *std::min_element(n, n + count);
    if (count == 3) weighted_sums_any<3>(out, w, rows, shared, d);
    else weighted_sums_any<2>(out, w, rows, shared, d);
  }
#endif
  for (int r = 0; r < count; ++r)
    if (n[r] > shared) add_weighted_sum(out[r], w[r] + shared, rows + shared * d, n[r] - shared, d);
}

// One job: every query row of sequence job.seq against positions [job.begin, job.end) of KV
// head job.kvh, for the `group` query heads sharing it. Keys and values are converted a tile at a
// time and used by all those rows and heads while in L1 (kRowBlock of them per load): first all
// scores, then the softmax of each row, then the weighted sums of the values. A row's result
// depends on its query, the positions it sees (n_of) and the job's bounds only.
template <typename T>
void run_job(const Job& job, int64_t chunk_index, const T* q, const T* k_cache, const T* v_cache,
             const int64_t* table, int64_t q_first, int64_t q_len, int64_t seq_len, int64_t group,
             int64_t num_kv_heads, int64_t head_dim, int64_t block_size, float scale, int64_t q_row_stride,
             int64_t chunks, Partial* partials, float* outputs) {
  thread_local std::vector<float> qf, scores, tile;
  const int64_t reach = std::min(job.end, seq_len) - job.begin;  // positions the last query row sees
  const int64_t stride = (reach + 7) / 8 * 8;                  // a row's scores, padded for scores_of
  auto n_of = [&](int64_t i) {  // positions query row i sees (causal)
    return std::max<int64_t>(0, std::min(job.end, seq_len - q_len + i + 1) - job.begin);
  };
  auto slot_of = [&](int64_t i, int64_t g) {
    return (((q_first + i) * num_kv_heads + job.kvh) * group + g) * chunks + chunk_index;
  };
  qf.resize(q_len * group * head_dim);
  scores.resize(q_len * group * stride);
  tile.resize(kTile * head_dim);
  for (int64_t i = 0; i < q_len; ++i) {
    for (int64_t g = 0; g < group; ++g) {
      float* qr = qf.data() + (i * group + g) * head_dim;
      to_f32(qr, q + (q_first + i) * q_row_stride + (job.kvh * group + g) * head_dim, head_dim);
      for (int64_t d = 0; d < head_dim; ++d) qr[d] *= scale;
    }
  }
  const int64_t rows = q_len * group;  // row r: query row r / group, head r % group
  auto sees = [&](int64_t r, int64_t t0, int64_t m) {  // positions of tile [t0, t0 + m) row r sees
    return std::max<int64_t>(0, std::min(m, n_of(r / group) - t0));
  };
  // use(r0, count, t0, m) for each tile [t0, t0 + m) of `cache` converted into `tile` and each
  // block of rows r0 .. r0 + count - 1 of which at least the last sees some of it.
  auto over_tiles = [&](const T* cache, auto&& use) {
    for (int64_t t0 = 0; t0 < reach; t0 += kTile) {
      const int64_t m = std::min(kTile, reach - t0);
      cache_rows_to_f32(tile.data(), cache, table, job.begin + t0, m, job.kvh, num_kv_heads, head_dim, block_size);
      for (int64_t r0 = 0; r0 < rows; r0 += kRowBlock) {
        const int count = static_cast<int>(std::min<int64_t>(kRowBlock, rows - r0));
        if (sees(r0 + count - 1, t0, m) > 0) use(r0, count, t0, m);
      }
    }
  };
  over_tiles(k_cache, [&](int64_t r0, int count, int64_t t0, int64_t m) {
    block_scores(scores.data() + r0 * stride + t0, stride, qf.data() + r0 * head_dim, count, tile.data(),
                 sees(r0 + count - 1, t0, m), head_dim);
  });
  for (int64_t r = 0; r < rows; ++r) {
    float* sr = scores.data() + r * stride;
    const int64_t n = n_of(r / group);
    const float mx = max_of(sr, n);
    partials[slot_of(r / group, r % group)] = {mx, exp_and_sum(sr, n, mx)};
  }
  over_tiles(v_cache, [&](int64_t r0, int count, int64_t t0, int64_t m) {
    float* out[kRowBlock];
    const float* w[kRowBlock];
    int64_t n[kRowBlock];
    for (int k = 0; k < count; ++k) {
      out[k] = outputs + slot_of((r0 + k) / group, (r0 + k) % group) * head_dim;
      w[k] = scores.data() + (r0 + k) * stride + t0;
      n[k] = sees(r0 + k, t0, m);
    }
    block_weighted_sums(out, w, n, count, tile.data(), head_dim);
  });
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
#elif defined(__AVX2__) && defined(__FMA__)
  return "AVX2 + FMA";
#else
  return "scalar";
#endif
}

}  // namespace llm_infer_cpu
