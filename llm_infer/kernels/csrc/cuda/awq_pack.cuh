// The AutoAWQ int4 packing both AWQ kernels unpack: each int32 of qweight / qzeros holds 8
// consecutive columns 8j..8j+7, nibble i (bits 4i..4i+3) holding column 8j + {0,2,4,6,1,3,5,7}[i].
// Helpers to read a word by nibble or by column, and the exact 2^23 form of a nibble that lets
// (q - z) be formed by one float subtraction (see awq_gemv.cu).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace llm_infer_cuda {

constexpr uint32_t kTwo23Bits = 0x4B000000u;  // bit pattern of 2^23

// Output column (within the 8) of nibble i.
__device__ __forceinline__ int awq_nibble_column(int i) { return 2 * (i & 3) + (i >> 2); }

__device__ __forceinline__ uint32_t awq_nibble(uint32_t word, int i) { return (word >> (4 * i)) & 0xFu; }

// The value of column c (0..7): nibble (c / 2) + 4 (c % 2), the inverse of awq_nibble_column.
__device__ __forceinline__ uint32_t awq_column(uint32_t word, int c) {
  return awq_nibble(word, (c >> 1) + 4 * (c & 1));
}

// 2^23 + nibble i of word, exactly.
__device__ __forceinline__ float awq_biased_nibble(uint32_t word, int i) {
  return __uint_as_float(awq_nibble(word, i) | kTwo23Bits);
}

}  // namespace llm_infer_cuda
