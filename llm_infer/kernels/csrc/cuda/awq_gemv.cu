// AWQ int4 GEMV for decode (M <= 8 rows of x): y = x W (+ bias), W dequantised in registers.
//
// Memory-bound, so every int32 of qweight is read exactly once, by one thread.
//
// Stage 1 (awq_gemv_partial), grid (ceil(N/8 / 32), splits), block (32, 8):
//   - threadIdx.x picks a packed column j (outputs 8j..8j+7); the 32 lanes of a warp take
//     consecutive j, so each qweight row read by a warp is one coalesced 128-byte segment.
//   - blockIdx.y picks a K chunk of kChunk = 8 warps * R rows (R = 16 for M <= 2, else 32);
//     warp threadIdx.y takes the R-row slice k0 = chunk start + threadIdx.y * R. R divides 64,
//     so a slice lies inside one quantisation group (group 64 or 128): its zero points and
//     scales are loaded once; and, K being a multiple of 64, a slice is all inside K or all
//     outside it.
//   - The chunk's x rows are staged in shared memory as fp32 ([k][m], broadcast reads).
//   - Each thread accumulates M x 8 fp32 sums, then the 8 warps are summed through shared
//     memory (one row m at a time) and the block writes its fp32 partial sums for 256
//     columns to workspace[blockIdx.y][m][n] (coalesced). The caller provides the workspace:
//     awq_gemv_workspace_bytes(M, N, K) = splits * M * N * 4 bytes.
// Stage 2 (awq_gemv_finish), one thread per output: sums the `splits` partials in a fixed
// order (deterministic, no atomics), adds the bias, converts to the activation dtype.
//
// R grows with M so the partial sums stay small next to the weight stream: they are
// 8 * M / kChunk of the weight bytes (at most 1/4, at M = 8), written once and read once.
//
// Dequantisation: (q - z) * s in fp32, like the reference, with q - z formed exactly by the
// 2^23 float trick (or-ing the nibble into the mantissa of 2^23) rather than an int->float
// conversion, whose throughput would otherwise bound the kernel at M = 1. The weight is not
// rounded to the activation dtype (the reference rounds it): at most half a dtype ulp apart.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "cuda_kernels.h"
#include "device_utils.cuh"
#include "host_device.cuh"

namespace llm_infer_cuda {
namespace {

constexpr int kMaxRows = 8;
constexpr int kLanes = 32;                    // packed columns per block
constexpr int kWarps = 8;                     // K slices per block
constexpr int kColsPerBlock = kLanes * 8;     // outputs per block
constexpr int kLoadBatch = 8;                 // qweight rows loaded before they are used
constexpr int kFinishThreads = 256;

__host__ __device__ constexpr int rows_per_warp(int M) { return M <= 2 ? 16 : 32; }
__host__ __device__ constexpr int chunk_rows(int M) { return kWarps * rows_per_warp(M); }

static_assert(64 % rows_per_warp(1) == 0 && 64 % rows_per_warp(kMaxRows) == 0, "a slice must not straddle a group");
static_assert(rows_per_warp(1) % kLoadBatch == 0 && rows_per_warp(kMaxRows) % kLoadBatch == 0, "whole load batches");

int num_splits(int M, int K) { return (K + chunk_rows(M) - 1) / chunk_rows(M); }

// xs[kk * M + m] = x[m, k_begin + kk] as fp32, zero past K.
template <typename T, int M>
__device__ void stage_x(const T* x, float* xs, int K, int k_begin) {
  constexpr int kChunk = chunk_rows(M);
  const int tid = threadIdx.y * kLanes + threadIdx.x;
  for (int idx = tid; idx < M * kChunk; idx += kLanes * kWarps) {
    const int m = idx / kChunk, kk = idx % kChunk, k = k_begin + kk;
    xs[kk * M + m] = k < K ? to_f32(x[static_cast<size_t>(m) * K + k]) : 0.0f;
  }
}

// The group's zero points (as 2^23 + z, matching awq_biased_nibble) and scales, in nibble order.
struct GroupParams {
  float zero[8];
  float scale[8];
};

__device__ GroupParams load_group(const int32_t* qzeros, const __half* scales, int g, int j, int N) {
  const int n8 = N / 8;
  const uint32_t z = static_cast<uint32_t>(qzeros[static_cast<size_t>(g) * n8 + j]);
  GroupParams gp;
#pragma unroll
  for (int i = 0; i < 8; ++i) {
    gp.zero[i] = awq_biased_nibble(z, i);
    gp.scale[i] = to_f32(scales[static_cast<size_t>(g) * N + 8 * j + awq_nibble_column(i)]);
  }
  return gp;
}

// acc[m][i] += x[m] * W[k, column of nibble i] for one packed row q.
template <int M>
__device__ __forceinline__ void fma_row(float (&acc)[M][8], uint32_t q, const GroupParams& gp, const float* xrow) {
  float xv[M];
#pragma unroll
  for (int m = 0; m < M; ++m) xv[m] = xrow[m];
#pragma unroll
  for (int i = 0; i < 8; ++i) {
    const float w = awq_dequantize(awq_biased_nibble(q, i), gp.zero[i], gp.scale[i]);
#pragma unroll
    for (int m = 0; m < M; ++m) acc[m][i] = fmaf(xv[m], w, acc[m][i]);
  }
}

// The R rows k0..k0+R-1 of packed column j (qcol points at qweight[k0, j]); xs_slice at row k0.
template <int M>
__device__ void accumulate_slice(float (&acc)[M][8], const int32_t* qcol, int n8, const float* xs_slice,
                                 const GroupParams& gp) {
  constexpr int R = rows_per_warp(M);
#pragma unroll
  for (int b = 0; b < R; b += kLoadBatch) {
    uint32_t q[kLoadBatch];
#pragma unroll
    for (int r = 0; r < kLoadBatch; ++r) q[r] = static_cast<uint32_t>(__ldcs(qcol + static_cast<size_t>(b + r) * n8));
#pragma unroll
    for (int r = 0; r < kLoadBatch; ++r) fma_row<M>(acc, q[r], gp, xs_slice + (b + r) * M);
  }
}

// Sums acc over the 8 warps and writes the block's 256 columns of each row m to partial[m][n].
// red holds one row m: red[warp][lane * 9 + column] (padded against bank conflicts).
template <int M>
__device__ void reduce_to_partial(const float (&acc)[M][8], float* red, float* partial, int N) {
  const int tid = threadIdx.y * kLanes + threadIdx.x;
  const int n = blockIdx.x * kColsPerBlock + tid;
  const int src = (tid / 8) * 9 + tid % 8;
#pragma unroll
  for (int m = 0; m < M; ++m) {
#pragma unroll
    for (int i = 0; i < 8; ++i) red[threadIdx.y * kLanes * 9 + threadIdx.x * 9 + awq_nibble_column(i)] = acc[m][i];
    __syncthreads();
    float sum = 0.0f;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) sum += red[w * kLanes * 9 + src];
    if (n < N) partial[static_cast<size_t>(m) * N + n] = sum;
    __syncthreads();
  }
}

template <typename T, int M>
__global__ void __launch_bounds__(kLanes * kWarps)
    awq_gemv_partial(const T* __restrict__ x, const int32_t* __restrict__ qweight, const int32_t* __restrict__ qzeros,
                     const __half* __restrict__ scales, float* __restrict__ workspace, int N, int K, int group) {
  constexpr int R = rows_per_warp(M);
  constexpr int kChunk = chunk_rows(M);
  __shared__ float xs[kChunk * M];
  __shared__ float red[kWarps * kLanes * 9];

  const int n8 = N / 8;
  const int j = blockIdx.x * kLanes + threadIdx.x;
  const int k_begin = blockIdx.y * kChunk;
  stage_x<T, M>(x, xs, K, k_begin);
  __syncthreads();

  float acc[M][8];
#pragma unroll
  for (int m = 0; m < M; ++m)
#pragma unroll
    for (int i = 0; i < 8; ++i) acc[m][i] = 0.0f;

  const int k0 = k_begin + threadIdx.y * R;
  if (j < n8 && k0 < K) {
    const GroupParams gp = load_group(qzeros, scales, k0 / group, j, N);
    accumulate_slice<M>(acc, qweight + static_cast<size_t>(k0) * n8 + j, n8, xs + threadIdx.y * R * M, gp);
  }
  reduce_to_partial<M>(acc, red, workspace + static_cast<size_t>(blockIdx.y) * M * N, N);
}

template <typename T>
__global__ void __launch_bounds__(kFinishThreads)
    awq_gemv_finish(const float* __restrict__ workspace, const T* __restrict__ bias, T* __restrict__ y, int MN, int N,
                    int splits) {
  const int idx = blockIdx.x * kFinishThreads + threadIdx.x;
  if (idx >= MN) return;
  float sum = 0.0f;
  for (int s = 0; s < splits; ++s) sum += workspace[static_cast<size_t>(s) * MN + idx];
  if (bias != nullptr) sum += to_f32(bias[idx % N]);
  y[idx] = from_f32<T>(sum);
}

template <typename T, int M>
void launch_partial(const AwqProblem& p, float* workspace, cudaStream_t stream) {
  const dim3 grid((p.N / 8 + kLanes - 1) / kLanes, num_splits(M, p.K));
  const dim3 block(kLanes, kWarps);
  awq_gemv_partial<T, M><<<grid, block, 0, stream>>>(static_cast<const T*>(p.x), p.qweight, p.qzeros,
                                                     static_cast<const __half*>(p.scales), workspace, p.N, p.K,
                                                     p.group);
}

template <typename T>
void launch(const AwqProblem& p, float* workspace, cudaStream_t stream) {
  switch (p.M) {
    case 1: launch_partial<T, 1>(p, workspace, stream); break;
    case 2: launch_partial<T, 2>(p, workspace, stream); break;
    case 3: launch_partial<T, 3>(p, workspace, stream); break;
    case 4: launch_partial<T, 4>(p, workspace, stream); break;
    case 5: launch_partial<T, 5>(p, workspace, stream); break;
    case 6: launch_partial<T, 6>(p, workspace, stream); break;
    case 7: launch_partial<T, 7>(p, workspace, stream); break;
    default: launch_partial<T, 8>(p, workspace, stream); break;
  }
  const int MN = p.M * p.N;
  awq_gemv_finish<T><<<(MN + kFinishThreads - 1) / kFinishThreads, kFinishThreads, 0, stream>>>(
      workspace, static_cast<const T*>(p.bias), static_cast<T*>(p.y), MN, p.N, num_splits(p.M, p.K));
}

bool valid(const AwqProblem& p, const void* workspace) {
  return p.M >= 0 && p.M <= kMaxRows && p.N > 0 && p.N % 64 == 0 && (p.group == 64 || p.group == 128) && p.K > 0 &&
         p.K % p.group == 0 && p.x && p.qweight && p.qzeros && p.scales && p.y && (workspace || p.M == 0) &&
         (p.dtype == DType::kFloat16 || p.dtype == DType::kBFloat16);
}

}  // namespace

size_t awq_gemv_workspace_bytes(int M, int N, int K) {
  if (M <= 0 || M > kMaxRows || N <= 0 || K <= 0) return 0;
  return static_cast<size_t>(num_splits(M, K)) * M * N * sizeof(float);
}

cudaError_t awq_gemv(const AwqProblem& p, void* workspace, cudaStream_t stream) {
  if (p.M == 0) return cudaSuccess;  // x and y of zero rows may have no storage (null pointers)
  if (!valid(p, workspace)) return cudaErrorInvalidValue;
  float* ws = static_cast<float*>(workspace);
  if (p.dtype == DType::kFloat16) {
    launch<__half>(p, ws, stream);
  } else {
    launch<__nv_bfloat16>(p, ws, stream);
  }
  return cudaGetLastError();
}

}  // namespace llm_infer_cuda
