// The arithmetic of the kernels that also runs on the host, so that tests/cuda_host/ can check it
// against the Python references without a GPU: fp16/bf16 <-> fp32 conversions (to fp16/bf16
// with round to nearest even), the AutoAWQ nibble layout and dequantisation, the paged-cache
// index arithmetic, and the log-sum-exp merge of split-KV partials. The kernels call these very
// functions; keep everything here __host__ __device__ and free of warp intrinsics.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <cstring>

namespace llm_infer_cuda {

// ---- Conversions ----------------------------------------------------------------------------
// CUDA's own conversions, which are __host__ __device__: on the device one cvt instruction, on
// the host its bit-exact software form (NaN becomes the canonical 0x7fff in both).
__host__ __device__ __forceinline__ float to_f32(__half x) { return __half2float(x); }
__host__ __device__ __forceinline__ float to_f32(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T>
__host__ __device__ __forceinline__ T from_f32(float x);
template <>
__host__ __device__ __forceinline__ __half from_f32<__half>(float x) {
  return __float2half_rn(x);
}
template <>
__host__ __device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}

__host__ __device__ __forceinline__ float bits_to_f32(uint32_t bits) {
#ifdef __CUDA_ARCH__
  return __uint_as_float(bits);
#else
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
#endif
}

// ---- AutoAWQ int4 ---------------------------------------------------------------------------
// Each int32 of qweight / qzeros holds 8 consecutive columns 8j..8j+7, nibble i (bits 4i..4i+3)
// holding column 8j + {0,2,4,6,1,3,5,7}[i]; W[k, n] = (q - z) * s with s fp16.

constexpr uint32_t kTwo23Bits = 0x4B000000u;  // bit pattern of 2^23

// Output column (within the 8) of nibble i.
__host__ __device__ __forceinline__ int awq_nibble_column(int i) { return 2 * (i & 3) + (i >> 2); }

__host__ __device__ __forceinline__ uint32_t awq_nibble(uint32_t word, int i) { return (word >> (4 * i)) & 0xFu; }

// The value of column c (0..7): nibble (c / 2) + 4 (c % 2), the inverse of awq_nibble_column.
__host__ __device__ __forceinline__ uint32_t awq_column(uint32_t word, int c) {
  return awq_nibble(word, (c >> 1) + 4 * (c & 1));
}

// 2^23 + nibble i of word, exactly: the difference of two such values is q - z, exact, without
// an int -> float conversion (whose throughput would bound awq_gemv at M = 1).
__host__ __device__ __forceinline__ float awq_biased_nibble(uint32_t word, int i) {
  return bits_to_f32(awq_nibble(word, i) | kTwo23Bits);
}

// The dequantised weight in fp32, q and z given both plain or both as awq_biased_nibble.
__host__ __device__ __forceinline__ float awq_dequantize(float q, float z, float scale) { return (q - z) * scale; }

// ---- Paged KV cache ---------------------------------------------------------------------------
// Caches are [num_blocks, block_size, kv_heads, head_dim]; block tables [num_seqs, max_blocks].

__host__ __device__ __forceinline__ const int32_t* block_table_row(const int32_t* block_tables, int max_blocks,
                                                                   int b) {
  return block_tables + static_cast<int64_t>(b) * max_blocks;
}

// Slot of position pos of a sequence with block table `table`: block * block_size + offset.
__host__ __device__ __forceinline__ int64_t kv_slot(const int32_t* table, int pos, int block_size) {
  return static_cast<int64_t>(table[pos / block_size]) * block_size + pos % block_size;
}

// Element offset of dim c of KV head kvh at `slot`.
__host__ __device__ __forceinline__ int64_t kv_offset(int64_t slot, int kv_heads, int kvh, int head_dim, int c) {
  return (slot * kv_heads + kvh) * head_dim + c;
}

// ---- Split-KV merge ---------------------------------------------------------------------------
// Partial s of one (query row, head) covers a chunk of the context: its max score max[s], its
// sum of exp(score - max[s]) sum[s], and one element out[s * stride] of its unnormalised output.
// An empty partial has sum 0 (and max -inf). Returns the normalised output element, rescaling
// every partial to the common max; 0 when all are empty.
__host__ __device__ __forceinline__ float merge_split_partials(const float* max, const float* sum, const float* out,
                                                               int64_t stride, int splits) {
  float m = -INFINITY;
  for (int s = 0; s < splits; ++s) m = fmaxf(m, max[s]);
  float total = 0.f, acc = 0.f;
  for (int s = 0; s < splits; ++s) {
    const float l = sum[s];
    if (l == 0.f) continue;  // empty partial: its max is -inf
    const float w = expf(max[s] - m);
    total += w * l;
    acc += w * out[s * stride];
  }
  return total > 0.f ? acc / total : 0.f;
}

}  // namespace llm_infer_cuda
