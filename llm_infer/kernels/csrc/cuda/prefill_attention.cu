// Prefill attention (long queries) over the paged KV cache: tiled flash-style attention in fp32.
//
// Grid (query tile, head h, sequence b); a block of kThreads serves kRows query rows of head h,
// kThreadsPerRow consecutive lanes per row, each lane owning a quarter of head_dim (float4
// groups 16 * c + 4 * lane_in_row). Query rows and output accumulators live in registers. The
// block walks the key positions up to the causal limit of its last row in tiles of kCols: K and
// V of the tile are gathered through the block table into shared memory (fp32); each lane dots
// its quarter of the query with every key of the tile and the row's lanes add their partial dots
// by shuffles, so all lanes of a row hold the row's scores; the running max and sum (online
// softmax) rescale the accumulators, then the tile's V is accumulated. Rows are normalised at the
// end; no score matrix leaves registers.
//
// Causality: query row i of sequence b sees positions < seq_len - q_len + i + 1. GQA: head h
// reads KV head h / (heads / kv_heads). Rows past q_len in the last tile compute a copy of the
// last row (keeping every lane in the shuffles) and are not written.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include "cuda_kernels.h"
#include "device_utils.cuh"
#include "host_device.cuh"
#include "paged_kv.cuh"

namespace llm_infer_cuda {
namespace {

constexpr int kRows = 64;          // BLOCK_M: query rows per block
constexpr int kCols = 32;          // BLOCK_N: key positions per tile
constexpr int kThreadsPerRow = 4;  // consecutive lanes of one warp
constexpr int kThreads = kRows * kThreadsPerRow;

__device__ __forceinline__ float dot4(float4 a, float4 b) { return a.x * b.x + a.y * b.y + a.z * b.z + a.w * b.w; }

__device__ __forceinline__ void fma4(float4& acc, float w, float4 v) {
  acc.x += w * v.x;
  acc.y += w * v.y;
  acc.z += w * v.z;
  acc.w += w * v.w;
}

__device__ __forceinline__ void scale4(float4& acc, float w) {
  acc.x *= w;
  acc.y *= w;
  acc.z *= w;
  acc.w *= w;
}

// State of one query row as seen by one of its lanes: lane_in_row owns the float4 groups at
// 16 * c + 4 * lane_in_row of the head's dims; m and l are the same in all lanes of the row.
template <int D>
struct RowState {
  static constexpr int kGroups = D / 16;
  float4 q[kGroups];    // query, pre-multiplied by the scale
  float4 acc[kGroups];  // unnormalised output
  float m, l;           // running max and sum
  int visible;          // causal limit: positions < visible are seen
};

// s[n] = score of position n0 + n for the row (-inf where masked), in every lane of the row.
template <int D>
__device__ void tile_scores(float (&s)[kCols], const RowState<D>& st, const float (*k_s)[D], int n0,
                            int lane_in_row) {
#pragma unroll
  for (int n = 0; n < kCols; ++n) s[n] = 0.f;
#pragma unroll
  for (int c = 0; c < RowState<D>::kGroups; ++c) {
#pragma unroll
    for (int n = 0; n < kCols; ++n) {
      s[n] += dot4(st.q[c], *reinterpret_cast<const float4*>(&k_s[n][16 * c + 4 * lane_in_row]));
    }
  }
#pragma unroll
  for (int n = 0; n < kCols; ++n) {
    s[n] += __shfl_xor_sync(kFullMask, s[n], 1);
    s[n] += __shfl_xor_sync(kFullMask, s[n], 2);
    if (n0 + n >= st.visible) s[n] = -INFINITY;
  }
}

// Online softmax step with the tile's scores s, then acc += softmax weights * V tile.
// The first tile always holds position 0, which every row sees, so m is finite after it.
template <int D>
__device__ void tile_update(RowState<D>& st, float (&s)[kCols], const float (*v_s)[D], int lane_in_row) {
  float m_tile = -INFINITY;
#pragma unroll
  for (int n = 0; n < kCols; ++n) m_tile = fmaxf(m_tile, s[n]);
  const float m_new = fmaxf(st.m, m_tile);
  const float correction = expf(st.m - m_new);  // 0 on the first tile (m = -inf)
  float tile_sum = 0.f;
#pragma unroll
  for (int n = 0; n < kCols; ++n) {
    s[n] = expf(s[n] - m_new);
    tile_sum += s[n];
  }
  st.l = st.l * correction + tile_sum;
  st.m = m_new;
#pragma unroll
  for (int c = 0; c < RowState<D>::kGroups; ++c) scale4(st.acc[c], correction);
#pragma unroll
  for (int n = 0; n < kCols; ++n) {
#pragma unroll
    for (int c = 0; c < RowState<D>::kGroups; ++c) {
      fma4(st.acc[c], s[n], *reinterpret_cast<const float4*>(&v_s[n][16 * c + 4 * lane_in_row]));
    }
  }
}

template <typename T, int D>
__device__ void load_query(RowState<D>& st, const T* q, float scale, int lane_in_row) {
#pragma unroll
  for (int c = 0; c < RowState<D>::kGroups; ++c) {
    const T* src = q + 16 * c + 4 * lane_in_row;
    st.q[c] = make_float4(to_f32(src[0]) * scale, to_f32(src[1]) * scale, to_f32(src[2]) * scale,
                          to_f32(src[3]) * scale);
    st.acc[c] = make_float4(0.f, 0.f, 0.f, 0.f);
  }
  st.m = -INFINITY;
  st.l = 0.f;
}

template <typename T, int D>
__device__ void store_row(T* out, const RowState<D>& st, int lane_in_row) {
  const float inv = 1.f / st.l;
#pragma unroll
  for (int c = 0; c < RowState<D>::kGroups; ++c) {
    T* dst = out + 16 * c + 4 * lane_in_row;
    dst[0] = from_f32<T>(st.acc[c].x * inv);
    dst[1] = from_f32<T>(st.acc[c].y * inv);
    dst[2] = from_f32<T>(st.acc[c].z * inv);
    dst[3] = from_f32<T>(st.acc[c].w * inv);
  }
}

template <typename T, int D>
__global__ void __launch_bounds__(kThreads) prefill_kernel(PagedAttention p) {
  const int h = blockIdx.y, b = blockIdx.z;
  const int q_len = p.q_lens[b];
  const int first_row = blockIdx.x * kRows;
  if (first_row >= q_len) return;  // block-uniform
  const int seq_len = p.seq_lens[b];
  const int prefix = seq_len - q_len;  // cached positions before the first query row
  const int row = first_row + threadIdx.x / kThreadsPerRow;
  const int i = min(row, q_len - 1);
  const int lane_in_row = threadIdx.x % kThreadsPerRow;
  const int kvh = h / (p.heads / p.kv_heads);
  const int end = prefix + min(first_row + kRows, q_len);  // causal limit of the block's last row

  RowState<D> st;
  const int64_t token = static_cast<int64_t>(p.q_start[b]) + i;
  load_query<T, D>(st, static_cast<const T*>(p.q) + token * p.q_stride + h * D, p.scale, lane_in_row);
  st.visible = prefix + i + 1;

  __shared__ __align__(16) float k_s[kCols][D];
  __shared__ __align__(16) float v_s[kCols][D];
  const int32_t* table = block_table_row(p.block_tables, p.max_blocks, b);
  for (int n0 = 0; n0 < end; n0 += kCols) {
    __syncthreads();  // the previous tile is consumed
    load_kv_tile<T, D, kCols>(k_s, v_s, p, table, kvh, n0, end);
    __syncthreads();
    float s[kCols];
    tile_scores<D>(s, st, k_s, n0, lane_in_row);
    tile_update<D>(st, s, v_s, lane_in_row);
  }
  if (row < q_len) store_row<T, D>(static_cast<T*>(p.out) + token * p.heads * D + h * D, st, lane_in_row);
}

template <typename T, int D>
cudaError_t launch(const PagedAttention& p, int max_q_len, cudaStream_t stream) {
  const dim3 grid((max_q_len + kRows - 1) / kRows, p.heads, p.num_seqs);
  prefill_kernel<T, D><<<grid, kThreads, 0, stream>>>(p);
  return cudaGetLastError();
}

template <typename T>
cudaError_t dispatch_head_dim(const PagedAttention& p, int max_q_len, cudaStream_t stream) {
  switch (p.head_dim) {
    case 64:
      return launch<T, 64>(p, max_q_len, stream);
    case 128:
      return launch<T, 128>(p, max_q_len, stream);
  }
  return cudaErrorInvalidValue;
}

bool valid(const PagedAttention& p, int max_q_len) {
  return paged_attention_ok(p) && max_q_len >= 0;
}

}  // namespace

cudaError_t prefill_attention(const PagedAttention& p, int max_q_len, cudaStream_t stream) {
  if (!valid(p, max_q_len)) return cudaErrorInvalidValue;
  if (p.num_seqs == 0 || max_q_len == 0) return cudaSuccess;
  switch (p.dtype) {
    case DType::kFloat16:
      return dispatch_head_dim<__half>(p, max_q_len, stream);
    case DType::kBFloat16:
      return dispatch_head_dim<__nv_bfloat16>(p, max_q_len, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace llm_infer_cuda
