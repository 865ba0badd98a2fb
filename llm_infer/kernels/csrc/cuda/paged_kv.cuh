// The paged KV cache as both attention kernels read it: the argument checks they share and the
// tile loader that gathers kN consecutive positions of one KV head through the sequence's block
// table (kv_slot, kv_offset of host_device.cuh) into shared memory as fp32. Layout and
// conventions are those of PagedAttention in cuda_kernels.h.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "cuda_kernels.h"
#include "device_utils.cuh"
#include "host_device.cuh"

namespace llm_infer_cuda {

// The checks both kernels need (head_dim, GQA grouping, grid limits, 16-byte aligned caches).
inline bool paged_attention_ok(const PagedAttention& p) {
  return (p.head_dim == 64 || p.head_dim == 128) && p.kv_heads > 0 && p.heads % p.kv_heads == 0 &&
         p.heads <= 65535 && p.block_size > 0 && p.num_seqs >= 0 && p.num_seqs <= 65535 && aligned16(p.k_cache) &&
         aligned16(p.v_cache);
}

// Copies positions [n0, n0 + kN) of KV head kvh into k_s / v_s as fp32, positions >= end as
// zeros (a masked position has weight 0, and 0 * garbage could be NaN). 16-byte global loads.
template <typename T, int D, int kN>
__device__ void load_kv_tile(float (*k_s)[D], float (*v_s)[D], const PagedAttention& p, const int32_t* table,
                             int kvh, int n0, int end) {
  constexpr int kVec = 8;  // elements of T per 16 bytes
  constexpr int kPerRow = D / kVec;
  const T* k_cache = static_cast<const T*>(p.k_cache);
  const T* v_cache = static_cast<const T*>(p.v_cache);
  for (int idx = threadIdx.x; idx < kN * kPerRow; idx += blockDim.x) {
    const int j = idx / kPerRow;
    const int c = (idx % kPerRow) * kVec;
    const int pos = n0 + j;
    float kf[kVec] = {}, vf[kVec] = {};
    if (pos < end) {
      const int64_t offset = kv_offset(kv_slot(table, pos, p.block_size), p.kv_heads, kvh, D, c);
      const uint4 k_raw = *reinterpret_cast<const uint4*>(k_cache + offset);
      const uint4 v_raw = *reinterpret_cast<const uint4*>(v_cache + offset);
      const T* k_el = reinterpret_cast<const T*>(&k_raw);
      const T* v_el = reinterpret_cast<const T*>(&v_raw);
#pragma unroll
      for (int e = 0; e < kVec; ++e) {
        kf[e] = to_f32(k_el[e]);
        vf[e] = to_f32(v_el[e]);
      }
    }
#pragma unroll
    for (int e = 0; e < kVec; e += 4) {
      *reinterpret_cast<float4*>(&k_s[j][c + e]) = make_float4(kf[e], kf[e + 1], kf[e + 2], kf[e + 3]);
      *reinterpret_cast<float4*>(&v_s[j][c + e]) = make_float4(vf[e], vf[e + 1], vf[e + 2], vf[e + 3]);
    }
  }
}

}  // namespace llm_infer_cuda
