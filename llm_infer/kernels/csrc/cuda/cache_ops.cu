// KV cache writes: the K and V rows of each new token are copied to their cache slot.
//
// One thread block per token; its threads copy the row of kv_heads * head_dim elements in
// 16-byte units when every pointer, stride and the row length allow it, else element by
// element. The copy is bitwise, so fp16 and bf16 share one kernel.
#include <cuda_runtime.h>

#include <cstdint>

#include "cuda_kernels.h"
#include "device_utils.cuh"

namespace llm_infer_cuda {
namespace {

constexpr int kThreads = 128;

// U is the copy unit (uint4 or uint16_t); lengths and strides are in units.
template <typename U>
__global__ void __launch_bounds__(kThreads)
    write_kv_kernel(const U* k, const U* v, U* k_cache, U* v_cache, const int32_t* slot_mapping, int64_t row,
                    int64_t k_stride, int64_t v_stride) {
  const int64_t t = blockIdx.x;
  const int64_t slot = slot_mapping[t];
  if (slot < 0) return;
  const U* k_src = k + t * k_stride;
  const U* v_src = v + t * v_stride;
  U* k_dst = k_cache + slot * row;
  U* v_dst = v_cache + slot * row;
  for (int64_t i = threadIdx.x; i < row; i += blockDim.x) {
    k_dst[i] = k_src[i];
    v_dst[i] = v_src[i];
  }
}

template <typename U>
cudaError_t launch(const void* k, const void* v, void* k_cache, void* v_cache, const int32_t* slot_mapping,
                   int tokens, int64_t row, int64_t k_stride, int64_t v_stride, cudaStream_t stream) {
  constexpr int64_t per_unit = sizeof(U) / 2;  // 2-byte elements per unit
  write_kv_kernel<U><<<tokens, kThreads, 0, stream>>>(
      static_cast<const U*>(k), static_cast<const U*>(v), static_cast<U*>(k_cache), static_cast<U*>(v_cache),
      slot_mapping, row / per_unit, k_stride / per_unit, v_stride / per_unit);
  return cudaGetLastError();
}

}  // namespace

cudaError_t write_kv_cache(const void* k, const void* v, void* k_cache, void* v_cache, const int32_t* slot_mapping,
                           int tokens, int kv_heads, int head_dim, int64_t k_stride, int64_t v_stride, DType dtype,
                           cudaStream_t stream) {
  if (dtype != DType::kFloat16 && dtype != DType::kBFloat16) return cudaErrorInvalidValue;
  if (tokens < 0 || kv_heads <= 0 || head_dim <= 0) return cudaErrorInvalidValue;
  if (tokens == 0) return cudaSuccess;
  const int64_t row = static_cast<int64_t>(kv_heads) * head_dim;
  const bool vector = row % 8 == 0 && k_stride % 8 == 0 && v_stride % 8 == 0 && aligned16(k) && aligned16(v) &&
                      aligned16(k_cache) && aligned16(v_cache);
  if (vector) return launch<uint4>(k, v, k_cache, v_cache, slot_mapping, tokens, row, k_stride, v_stride, stream);
  return launch<uint16_t>(k, v, k_cache, v_cache, slot_mapping, tokens, row, k_stride, v_stride, stream);
}

}  // namespace llm_infer_cuda
