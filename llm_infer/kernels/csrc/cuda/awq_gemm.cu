// AWQ int4 GEMM for prefill (any M): y = x W (+ bias) on tensor cores (WMMA 16x16x16, fp32
// accumulators), the int4 weight dequantised into shared memory tile by tile.
//
// Tiling: one block of 128 threads (4 warps, 2 x 2) per 64 (M) x 64 (N) tile of y, walking K in
// steps of 32; each warp owns a 32 x 32 sub-tile (2 x 2 accumulator fragments).
// Grid: (N / 64, ceil(M / 64)).
//
// Pipeline (2 stages, cp.async via cuda_pipeline.h): while the tensor cores work on K step t,
// the copies of step t + 1 are in flight into the other buffer: the x tile (64 x 32, 16-byte
// chunks), the packed qweight tile (32 rows x 8 int32) and that step's group scales (64 fp16)
// and zero words (8 int32) (a K step never straddles a group: group is 64 or 128). Per step:
//   wait for step t  -> sync -> dequantise packed tile t into the W tile ((q - z) * s in fp32,
//   rounded to the activation dtype, as the reference does) -> sync -> 2 x (load fragments,
//   4 mma_sync) -> sync (buffers free for reuse).
// Rows of x past M load row M - 1 instead (finite values, never stored), so no tail path.
//
// Epilogue: accumulators -> shared memory (fp32, reusing the pipeline buffers) -> + bias,
// convert, 16-byte stores of 8 outputs per thread, rows past M skipped.
//
// Shared memory (static, 17 KB): x [2][64][40], packed [2][32][8], W [32][72], scales [2][64],
// zeros [2][8]; the 8-element pads keep the WMMA row loads free of bank conflicts and every
// fragment pointer 32-byte aligned. The epilogue's out [64][68] fp32 aliases all of them.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_pipeline.h>
#include <cuda_runtime.h>
#include <mma.h>

#include <cstddef>
#include <cstdint>

#include "cuda_kernels.h"
#include "device_utils.cuh"
#include "host_device.cuh"

namespace llm_infer_cuda {
namespace {

using namespace nvcuda;

constexpr int kBM = 64, kBN = 64, kBK = 32;
constexpr int kThreads = 128;
constexpr int kWarpTile = 32;               // each warp: 32 x 32 of the block tile
constexpr int kFrags = kWarpTile / 16;      // fragments per warp tile side
constexpr int kWarpsN = kBN / kWarpTile;    // 2 x 2 warps
constexpr int kXLd = kBK + 8;               // row strides in elements, padded
constexpr int kWLd = kBN + 8;
constexpr int kOutLd = kBN + 4;
constexpr int kQCols = kBN / 8;             // int32 per packed tile row
constexpr int kChunk = 16;                  // bytes per cp.async
constexpr int kMaxGridY = 65535;

static_assert(kThreads == 32 * (kBM / kWarpTile) * kWarpsN, "one warp per 32 x 32 sub-tile");
static_assert(64 % kBK == 0, "a K step must not straddle a quantisation group");

// Byte offsets of the shared-memory regions (each 128-byte aligned).
constexpr int kXOff = 0;
constexpr int kQOff = kXOff + 2 * kBM * kXLd * 2;
constexpr int kWOff = kQOff + 2 * kBK * kQCols * 4;
constexpr int kSOff = kWOff + kBK * kWLd * 2;
constexpr int kZOff = kSOff + 2 * kBN * 2;
constexpr int kPipelineBytes = kZOff + 2 * kQCols * 4;
constexpr int kOutBytes = kBM * kOutLd * 4;
constexpr int kSmemBytes = kPipelineBytes > kOutBytes ? kPipelineBytes : kOutBytes;
static_assert(kQOff % 128 == 0 && kWOff % 128 == 0 && kSOff % 128 == 0 && kZOff % 16 == 0, "alignment");
static_assert(kSmemBytes <= 48 * 1024, "static shared memory limit");

// The cp.async work of one stage, in 16-byte chunks, spread over the threads.
constexpr int kXChunks = kBM * kBK * 2 / kChunk;       // 256: 2 per thread
constexpr int kQChunks = kBK * kQCols * 4 / kChunk;    // 64
constexpr int kSChunks = kBN * 2 / kChunk;             // 8
constexpr int kZChunks = kQCols * 4 / kChunk;          // 2
static_assert(kXChunks % kThreads == 0 && kQChunks + kSChunks + kZChunks <= kThreads, "chunk split");

template <typename T>
struct Args {
  const T* x;
  const int32_t* qweight;
  const int32_t* qzeros;
  const __half* scales;
  const T* bias;
  T* y;
  int M, N, K, group;
};

template <typename T>
struct Smem {
  T* x;          // [2][kBM][kXLd]
  int32_t* q;    // [2][kBK][kQCols]
  T* w;          // [kBK][kWLd]
  __half* s;     // [2][kBN]
  int32_t* z;    // [2][kQCols]
  float* out;    // [kBM][kOutLd], aliases the above after the main loop

  __device__ explicit Smem(unsigned char* base)
      : x(reinterpret_cast<T*>(base + kXOff)),
        q(reinterpret_cast<int32_t*>(base + kQOff)),
        w(reinterpret_cast<T*>(base + kWOff)),
        s(reinterpret_cast<__half*>(base + kSOff)),
        z(reinterpret_cast<int32_t*>(base + kZOff)),
        out(reinterpret_cast<float*>(base)) {}
};

using Acc = wmma::fragment<wmma::accumulator, 16, 16, 16, float>;

// Issues (does not wait for) the copies of K step k0 into buffer buf.
template <typename T>
__device__ void load_stage(const Args<T>& a, const Smem<T>& sm, int buf, int m0, int n0, int k0) {
  const int tid = threadIdx.x;
#pragma unroll
  for (int c = tid; c < kXChunks; c += kThreads) {
    const int row = c / (kBK / 8), col = (c % (kBK / 8)) * 8;
    const int m = min(m0 + row, a.M - 1);
    __pipeline_memcpy_async(sm.x + (buf * kBM + row) * kXLd + col, a.x + static_cast<size_t>(m) * a.K + k0 + col,
                            kChunk);
  }
  const int n8 = a.N / 8, g = k0 / a.group;
  if (tid < kQChunks) {
    const int row = tid / (kQCols / 4), col = (tid % (kQCols / 4)) * 4;
    __pipeline_memcpy_async(sm.q + (buf * kBK + row) * kQCols + col,
                            a.qweight + static_cast<size_t>(k0 + row) * n8 + n0 / 8 + col, kChunk);
  } else if (tid < kQChunks + kSChunks) {
    const int col = (tid - kQChunks) * 8;
    __pipeline_memcpy_async(sm.s + buf * kBN + col, a.scales + static_cast<size_t>(g) * a.N + n0 + col, kChunk);
  } else if (tid < kQChunks + kSChunks + kZChunks) {
    const int col = (tid - kQChunks - kSChunks) * 4;
    __pipeline_memcpy_async(sm.z + buf * kQCols + col, a.qzeros + static_cast<size_t>(g) * n8 + n0 / 8 + col,
                            kChunk);
  }
}

// Packed tile of buffer buf -> W tile in T. Thread: packed column j, rows r0, r0 + 16.
template <typename T>
__device__ void dequantize_tile(const Smem<T>& sm, int buf) {
  const int j = threadIdx.x % kQCols;
  const uint32_t zword = static_cast<uint32_t>(sm.z[buf * kQCols + j]);
  float zero[8], scale[8];
#pragma unroll
  for (int c = 0; c < 8; ++c) {
    zero[c] = static_cast<float>(awq_column(zword, c));
    scale[c] = to_f32(sm.s[buf * kBN + 8 * j + c]);
  }
#pragma unroll
  for (int r = threadIdx.x / kQCols; r < kBK; r += kThreads / kQCols) {
    const uint32_t q = static_cast<uint32_t>(sm.q[(buf * kBK + r) * kQCols + j]);
    alignas(16) T w[8];
#pragma unroll
    for (int c = 0; c < 8; ++c) {
      w[c] = from_f32<T>(awq_dequantize(static_cast<float>(awq_column(q, c)), zero[c], scale[c]));
    }
    *reinterpret_cast<uint4*>(sm.w + r * kWLd + 8 * j) = *reinterpret_cast<const uint4*>(w);
  }
}

template <typename T>
__device__ void mma_tile(const Smem<T>& sm, int buf, Acc (&acc)[kFrags][kFrags]) {
  const int warp = threadIdx.x / 32, wm = warp / kWarpsN, wn = warp % kWarpsN;
  const T* xs = sm.x + (buf * kBM + wm * kWarpTile) * kXLd;
  const T* ws = sm.w + wn * kWarpTile;
#pragma unroll
  for (int kk = 0; kk < kBK; kk += 16) {
    wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> fa[kFrags];
    wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::row_major> fb[kFrags];
#pragma unroll
    for (int i = 0; i < kFrags; ++i) {
      wmma::load_matrix_sync(fa[i], xs + 16 * i * kXLd + kk, kXLd);
      wmma::load_matrix_sync(fb[i], ws + kk * kWLd + 16 * i, kWLd);
    }
#pragma unroll
    for (int i = 0; i < kFrags; ++i)
#pragma unroll
      for (int jj = 0; jj < kFrags; ++jj) wmma::mma_sync(acc[i][jj], fa[i], fb[jj], acc[i][jj]);
  }
}

// Call after the main loop's final barrier: sm.out overwrites the pipeline buffers.
template <typename T>
__device__ void store_output(const Args<T>& a, const Smem<T>& sm, const Acc (&acc)[kFrags][kFrags], int m0, int n0) {
  const int warp = threadIdx.x / 32, wm = warp / kWarpsN, wn = warp % kWarpsN;
#pragma unroll
  for (int i = 0; i < kFrags; ++i)
#pragma unroll
    for (int jj = 0; jj < kFrags; ++jj) {
      float* dst = sm.out + (wm * kWarpTile + 16 * i) * kOutLd + wn * kWarpTile + 16 * jj;
      wmma::store_matrix_sync(dst, acc[i][jj], kOutLd, wmma::mem_row_major);
    }
  __syncthreads();
  for (int c = threadIdx.x; c < kBM * kBN / 8; c += kThreads) {
    const int row = c / (kBN / 8), col = (c % (kBN / 8)) * 8, m = m0 + row;
    if (m >= a.M) continue;
    alignas(16) T v[8];
#pragma unroll
    for (int e = 0; e < 8; ++e) {
      float sum = sm.out[row * kOutLd + col + e];
      if (a.bias != nullptr) sum += to_f32(a.bias[n0 + col + e]);
      v[e] = from_f32<T>(sum);
    }
    *reinterpret_cast<uint4*>(a.y + static_cast<size_t>(m) * a.N + n0 + col) = *reinterpret_cast<const uint4*>(v);
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads) awq_gemm_kernel(const Args<T> a) {
  __shared__ __align__(128) unsigned char smem[kSmemBytes];
  const Smem<T> sm(smem);
  const int n0 = blockIdx.x * kBN, m0 = blockIdx.y * kBM;

  Acc acc[kFrags][kFrags];
#pragma unroll
  for (int i = 0; i < kFrags; ++i)
#pragma unroll
    for (int jj = 0; jj < kFrags; ++jj) wmma::fill_fragment(acc[i][jj], 0.0f);

  const int steps = a.K / kBK;
  load_stage(a, sm, 0, m0, n0, 0);
  __pipeline_commit();
  for (int t = 0; t < steps; ++t) {
    const int buf = t & 1;
    if (t + 1 < steps) load_stage(a, sm, buf ^ 1, m0, n0, (t + 1) * kBK);
    __pipeline_commit();       // possibly empty: keeps "all but the newest group" = step t
    __pipeline_wait_prior(1);  // this thread's copies of step t have landed
    __syncthreads();           // ... and every thread's
    dequantize_tile(sm, buf);
    __syncthreads();
    mma_tile(sm, buf, acc);
    __syncthreads();  // buffer buf and the W tile are free again
  }
  store_output(a, sm, acc, m0, n0);
}

template <typename T>
void launch(const AwqProblem& p, cudaStream_t stream) {
  const Args<T> a{static_cast<const T*>(p.x), p.qweight, p.qzeros, static_cast<const __half*>(p.scales),
                  static_cast<const T*>(p.bias), static_cast<T*>(p.y), p.M, p.N, p.K, p.group};
  const dim3 grid(p.N / kBN, (p.M + kBM - 1) / kBM);
  awq_gemm_kernel<T><<<grid, kThreads, 0, stream>>>(a);
}

bool valid(const AwqProblem& p) {
  return p.M >= 0 && p.M <= kMaxGridY * kBM && p.N > 0 && p.N % kBN == 0 &&
         (p.group == 64 || p.group == 128) && p.K > 0 && p.K % p.group == 0 && p.x && p.qweight && p.qzeros &&
         p.scales && p.y && aligned16(p.x) && aligned16(p.qweight) && aligned16(p.qzeros) && aligned16(p.scales) &&
         aligned16(p.y) && (p.dtype == DType::kFloat16 || p.dtype == DType::kBFloat16);
}

}  // namespace

cudaError_t awq_gemm(const AwqProblem& p, cudaStream_t stream) {
  if (!valid(p)) return cudaErrorInvalidValue;
  if (p.M == 0) return cudaSuccess;
  if (p.dtype == DType::kFloat16) {
    launch<__half>(p, stream);
  } else {
    launch<__nv_bfloat16>(p, stream);
  }
  return cudaGetLastError();
}

}  // namespace llm_infer_cuda
