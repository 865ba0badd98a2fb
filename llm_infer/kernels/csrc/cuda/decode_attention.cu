// Decode attention (short queries) over the paged KV cache, flash-decoding style.
//
// Pass 1, grid (split s, KV head kvh, sequence b): the context of sequence b is cut into
// chunks of ceil(seq_len / splits) positions rounded up to whole cache blocks; thread block
// (s, kvh, b) serves every (query row i, head h of kvh's group) pair over chunk s. The chunk is
// staged through shared memory kTile positions at a time (K and V converted to fp32 once, shared
// by all pairs); one warp per pair, lanes splitting head_dim, computes the scores with warp
// shuffle reductions and keeps an online softmax (running max, sum, unnormalised output) in
// registers. Blocks have at most kMaxWarps warps: with more pairs than warps the chunk is walked
// once per round of kMaxWarps pairs. Each pair's partial (max, sum, output[head_dim], fp32) goes
// to the workspace; chunks past the sequence write empty partials (max -inf, sum 0).
//
// Pass 2, grid (b * max_q_len + i, h): merges the splits of each (query row, head), rescaling
// every partial to the common maximum (merge_split_partials, host_device.cuh), and writes the
// normalised output in the dtype.
//
// Workspace (fp32), with r = ((b * max_q_len + i) * heads + h) * splits + s:
//   out_part [R, head_dim] | max_part [R] | sum_part [R],   R = num_seqs * max_q_len * heads * splits.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "cuda_kernels.h"
#include "device_utils.cuh"
#include "host_device.cuh"
#include "paged_kv.cuh"

namespace llm_infer_cuda {
namespace {

constexpr int kTile = 32;  // positions per shared-memory tile; equals the warp size (lane j owns score j)
constexpr int kMaxWarps = 8;

struct Workspace {
  float* out;  // [R, head_dim]
  float* max;  // [R]
  float* sum;  // [R]
};

__host__ __device__ inline int64_t partial_rows(int num_seqs, int max_q_len, int heads, int splits) {
  return static_cast<int64_t>(num_seqs) * max_q_len * heads * splits;
}

// Online-softmax state of one (query row, head) pair, held by one warp; lane owns dims
// lane + 32 * e. m and l are the same in every lane.
template <int D>
struct PairState {
  static constexpr int E = D / 32;
  float q[E];    // query, pre-multiplied by the scale
  float acc[E];  // unnormalised output
  float m, l;    // running max and sum
  int visible;   // positions < visible are seen (causal limit, clipped to the chunk end)
};

// Folds positions [n0, n0 + kTile) of the staged tile into the state.
template <int D>
__device__ void attend_tile(PairState<D>& st, const float (*k_s)[D], const float (*v_s)[D], int n0, int lane) {
  constexpr int E = PairState<D>::E;
  const int n = min(kTile, st.visible - n0);  // warp-uniform
  if (n <= 0) return;
  float score = -INFINITY;  // lane j: score of position n0 + j
  for (int j = 0; j < n; ++j) {
    float part = 0.f;
#pragma unroll
    for (int e = 0; e < E; ++e) part += st.q[e] * k_s[j][lane + 32 * e];
    part = warp_sum(part);
    if (lane == j) score = part;
  }
  const float m_new = fmaxf(st.m, warp_max(score));  // finite: n >= 1
  const float correction = expf(st.m - m_new);       // 0 on the first tile (m = -inf)
  const float weight = expf(score - m_new);          // 0 for lanes >= n
  st.l = st.l * correction + warp_sum(weight);
  st.m = m_new;
#pragma unroll
  for (int e = 0; e < E; ++e) st.acc[e] *= correction;
  for (int j = 0; j < n; ++j) {
    const float w = __shfl_sync(kFullMask, weight, j);
#pragma unroll
    for (int e = 0; e < E; ++e) st.acc[e] += w * v_s[j][lane + 32 * e];
  }
}

template <typename T, int D>
__device__ void init_pair(PairState<D>& st, const PagedAttention& p, int b, int i, int h, int q_len, int seq_len,
                          int chunk_end, int lane) {
  const T* q = static_cast<const T*>(p.q) + static_cast<int64_t>(p.q_start[b] + i) * p.q_stride + h * D;
#pragma unroll
  for (int e = 0; e < PairState<D>::E; ++e) {
    st.q[e] = to_f32(q[lane + 32 * e]) * p.scale;
    st.acc[e] = 0.f;
  }
  st.m = -INFINITY;
  st.l = 0.f;
  st.visible = min(seq_len - q_len + i + 1, chunk_end);
}

template <int D>
__device__ void store_pair(const PairState<D>& st, const Workspace& ws, int64_t r, int lane) {
#pragma unroll
  for (int e = 0; e < PairState<D>::E; ++e) ws.out[r * D + lane + 32 * e] = st.acc[e];
  if (lane == 0) {
    ws.max[r] = st.m;
    ws.sum[r] = st.l;
  }
}

// Workspace row of pair (query row i, head h) of sequence b, split s.
__device__ __forceinline__ int64_t partial_row(int b, int i, int h, int s, int max_q_len, int heads, int splits) {
  return ((static_cast<int64_t>(b) * max_q_len + i) * heads + h) * splits + s;
}

// minBlocks 1 lets ptxas take the registers it needs (without it, it spills a few bytes on sm_90).
template <typename T, int D>
__global__ void __launch_bounds__(kMaxWarps * 32, 1)
    decode_partial_kernel(PagedAttention p, int max_q_len, int splits, Workspace ws) {
  const int s = blockIdx.x, kvh = blockIdx.y, b = blockIdx.z;
  const int seq_len = p.seq_lens[b], q_len = p.q_lens[b];
  const int group = p.heads / p.kv_heads;
  const int pairs = group * q_len;  // pair -> (row pair / group, head kvh * group + pair % group)
  const int chunk = (seq_len + splits - 1) / splits;
  const int chunk_len = (chunk + p.block_size - 1) / p.block_size * p.block_size;
  const int begin = s * chunk_len;
  const int end = min(begin + chunk_len, seq_len);
  if (begin >= end) {
    for (int pair = threadIdx.x; pair < pairs; pair += blockDim.x) {
      const int64_t r = partial_row(b, pair / group, kvh * group + pair % group, s, max_q_len, p.heads, splits);
      ws.max[r] = -INFINITY;
      ws.sum[r] = 0.f;
    }
    return;
  }
  __shared__ __align__(16) float k_s[kTile][D];
  __shared__ __align__(16) float v_s[kTile][D];
  const int32_t* table = block_table_row(p.block_tables, p.max_blocks, b);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, warps = blockDim.x / 32;
  for (int first = 0; first < pairs; first += warps) {  // block-uniform: every thread takes each round
    const int pair = first + warp;
    const bool active = pair < pairs;
    const int i = pair / group, h = kvh * group + pair % group;
    PairState<D> st;
    if (active) init_pair<T, D>(st, p, b, i, h, q_len, seq_len, end, lane);
    for (int n0 = begin; n0 < end; n0 += kTile) {
      __syncthreads();  // the previous tile is consumed
      load_kv_tile<T, D, kTile>(k_s, v_s, p, table, kvh, n0, end);
      __syncthreads();
      if (active) attend_tile<D>(st, k_s, v_s, n0, lane);
    }
    if (active) store_pair<D>(st, ws, partial_row(b, i, h, s, max_q_len, p.heads, splits), lane);
  }
}

// One block of D threads per (query row, head); thread d merges output element d.
template <typename T, int D>
__global__ void __launch_bounds__(D)
    decode_merge_kernel(PagedAttention p, int max_q_len, int splits, Workspace ws) {
  const int b = blockIdx.x / max_q_len, i = blockIdx.x % max_q_len, h = blockIdx.y;
  if (i >= p.q_lens[b]) return;
  const int64_t r0 = partial_row(b, i, h, 0, max_q_len, p.heads, splits);
  const float merged = merge_split_partials(ws.max + r0, ws.sum + r0, ws.out + r0 * D + threadIdx.x, D, splits);
  T* out = static_cast<T*>(p.out) + (static_cast<int64_t>(p.q_start[b]) + i) * p.heads * D + h * D;
  out[threadIdx.x] = from_f32<T>(merged);
}

template <typename T, int D>
cudaError_t launch(const PagedAttention& p, int max_q_len, int splits, const Workspace& ws, cudaStream_t stream) {
  const int warps = std::min(kMaxWarps, (p.heads / p.kv_heads) * max_q_len);
  const dim3 grid(splits, p.kv_heads, p.num_seqs);
  decode_partial_kernel<T, D><<<grid, warps * 32, 0, stream>>>(p, max_q_len, splits, ws);
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  const dim3 merge_grid(p.num_seqs * max_q_len, p.heads);
  decode_merge_kernel<T, D><<<merge_grid, D, 0, stream>>>(p, max_q_len, splits, ws);
  return cudaGetLastError();
}

template <typename T>
cudaError_t dispatch_head_dim(const PagedAttention& p, int max_q_len, int splits, const Workspace& ws,
                              cudaStream_t stream) {
  switch (p.head_dim) {
    case 64:
      return launch<T, 64>(p, max_q_len, splits, ws, stream);
    case 128:
      return launch<T, 128>(p, max_q_len, splits, ws, stream);
  }
  return cudaErrorInvalidValue;
}

bool valid(const PagedAttention& p, int max_q_len, int splits) {
  return paged_attention_ok(p) && max_q_len > 0 && splits > 0;
}

}  // namespace

size_t decode_attention_workspace_bytes(int num_seqs, int max_q_len, int heads, int head_dim, int splits) {
  if (num_seqs <= 0 || max_q_len <= 0 || heads <= 0 || head_dim <= 0 || splits <= 0) return 0;
  return static_cast<size_t>(partial_rows(num_seqs, max_q_len, heads, splits)) * (head_dim + 2) * sizeof(float);
}

cudaError_t decode_attention(const PagedAttention& p, int max_q_len, int splits, void* workspace, cudaStream_t stream) {
  if (!valid(p, max_q_len, splits)) return cudaErrorInvalidValue;
  if (p.num_seqs == 0) return cudaSuccess;
  const int64_t rows = partial_rows(p.num_seqs, max_q_len, p.heads, splits);
  float* base = static_cast<float*>(workspace);
  const Workspace ws{base, base + rows * p.head_dim, base + rows * (p.head_dim + 1)};
  switch (p.dtype) {
    case DType::kFloat16:
      return dispatch_head_dim<__half>(p, max_q_len, splits, ws, stream);
    case DType::kBFloat16:
      return dispatch_head_dim<__nv_bfloat16>(p, max_q_len, splits, ws, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace llm_infer_cuda
