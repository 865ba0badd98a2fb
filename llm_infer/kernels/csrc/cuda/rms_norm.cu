// Fused residual add + RMSNorm, numerically as torch_ref.add_rms_norm / rms_norm:
//   residual = x + residual (rounded to the dtype and stored), then
//   out = weight * round(r * rsqrt(mean(r^2) + eps)) with r = residual (or x), rounded again.
//
// One thread block per row. Pass 1 forms (and stores) the residual and sums the squares of the
// rounded values in fp32, reduced over the block through warp shuffles; pass 2 re-reads the
// row and normalises. Each thread touches the same elements in both passes, so out may alias x.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "cuda_kernels.h"
#include "device_utils.cuh"

namespace llm_infer_cuda {
namespace {

constexpr int kThreads = 256;

template <typename T>
__device__ __forceinline__ float round_to(float x) {
  return to_f32(from_f32<T>(x));
}

// Sum over the block; called once per kernel (warp_sums is not reused).
__device__ float block_sum(float v) {
  __shared__ float warp_sums[kThreads / 32];
  v = warp_sum(v);
  if (threadIdx.x % 32 == 0) warp_sums[threadIdx.x / 32] = v;
  __syncthreads();
  float total = 0.f;
  for (int w = 0; w < kThreads / 32; ++w) total += warp_sums[w];
  return total;
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    rms_norm_kernel(T* out, const T* x, T* residual, const T* weight, float eps, int dim) {
  const int64_t base = static_cast<int64_t>(blockIdx.x) * dim;
  const T* xr = x + base;
  T* rr = residual == nullptr ? nullptr : residual + base;
  float squares = 0.f;
  for (int i = threadIdx.x; i < dim; i += kThreads) {
    float r = to_f32(xr[i]);
    if (rr != nullptr) {
      r = round_to<T>(r + to_f32(rr[i]));
      rr[i] = from_f32<T>(r);
    }
    squares += r * r;
  }
  const float inv_rms = rsqrtf(block_sum(squares) / dim + eps);
  const T* src = rr != nullptr ? rr : xr;
  T* dst = out + base;
  for (int i = threadIdx.x; i < dim; i += kThreads) {
    const float normed = round_to<T>(to_f32(src[i]) * inv_rms);
    dst[i] = from_f32<T>(normed * to_f32(weight[i]));
  }
}

template <typename T>
cudaError_t launch(void* out, const void* x, void* residual, const void* weight, float eps, int rows, int dim,
                   cudaStream_t stream) {
  rms_norm_kernel<T><<<rows, kThreads, 0, stream>>>(static_cast<T*>(out), static_cast<const T*>(x),
                                                    static_cast<T*>(residual), static_cast<const T*>(weight), eps,
                                                    dim);
  return cudaGetLastError();
}

}  // namespace

cudaError_t fused_add_rms_norm(void* out, const void* x, void* residual, const void* weight, float eps, int rows,
                               int dim, DType dtype, cudaStream_t stream) {
  if (rows < 0 || dim <= 0) return cudaErrorInvalidValue;
  if (rows == 0) return cudaSuccess;
  switch (dtype) {
    case DType::kFloat16:
      return launch<__half>(out, x, residual, weight, eps, rows, dim, stream);
    case DType::kBFloat16:
      return launch<__nv_bfloat16>(out, x, residual, weight, eps, rows, dim, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace llm_infer_cuda
