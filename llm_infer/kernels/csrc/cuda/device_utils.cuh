// Small helpers the CUDA kernel files share: everything of host_device.cuh (conversions and
// the rest of the arithmetic that also runs on the host), butterfly sums and maxima over the 32
// lanes of a warp (every lane gets the result), and the 16-byte alignment check of vector
// accesses. No torch here, so each .cu still compiles with a bare `nvcc -c`.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "host_device.cuh"

namespace llm_infer_cuda {

constexpr unsigned kFullMask = 0xffffffffu;

__device__ __forceinline__ float warp_sum(float v) {
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(kFullMask, v, offset);
  return v;
}

__device__ __forceinline__ float warp_max(float v) {
  for (int offset = 16; offset > 0; offset >>= 1) v = fmaxf(v, __shfl_xor_sync(kFullMask, v, offset));
  return v;
}

inline bool aligned16(const void* ptr) { return reinterpret_cast<uintptr_t>(ptr) % 16 == 0; }

}  // namespace llm_infer_cuda
