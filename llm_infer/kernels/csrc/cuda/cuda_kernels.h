// CUDA kernels of llm-infer: plain launch functions on raw device pointers. No torch headers
// here or in the .cu files (each compiles with a bare `nvcc -c` in about a second, which is the
// CI check); cuda_bindings.cpp alone connects them to torch.
//
// Conventions: activations are fp16 or bf16 (`DType`); integer metadata is int32 on the device;
// every function is asynchronous on `stream` and returns the launch error (cudaSuccess if none).
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

namespace llm_infer_cuda {

enum class DType : int { kFloat16 = 0, kBFloat16 = 1 };

// ---- KV cache -------------------------------------------------------------------------------
// Scatter the K and V rows of `tokens` tokens ([tokens, kv_heads * head_dim], row strides
// k_stride / v_stride in elements) into caches [num_blocks, block_size, kv_heads, head_dim] at
// slot_mapping[t] = block * block_size + offset. A negative slot skips the token (padding).
cudaError_t write_kv_cache(const void* k, const void* v, void* k_cache, void* v_cache, const int32_t* slot_mapping,
                           int tokens, int kv_heads, int head_dim, int64_t k_stride, int64_t v_stride, DType dtype,
                           cudaStream_t stream);

// ---- Attention over the paged cache -----------------------------------------------------------
// Shared by both attention kernels: sequence b has query rows [q_start[b], q_start[b] + q_lens[b])
// of q ([tokens, heads * head_dim], row stride q_stride elements); its keys and values are
// positions [0, seq_lens[b]) of the paged cache, found through block_tables[b] ([num_seqs,
// max_blocks] int32); causal: query row i of b sees positions < seq_lens[b] - q_lens[b] + i + 1.
// out is [tokens, heads * head_dim] contiguous; rows of other sequences are not written.
// GQA: query head h reads KV head h / (heads / kv_heads). head_dim 64 or 128.
struct PagedAttention {
  void* out;
  const void* q;
  const void* k_cache;  // [num_blocks, block_size, kv_heads, head_dim]
  const void* v_cache;
  const int32_t* block_tables;
  const int32_t* q_start;
  const int32_t* q_lens;
  const int32_t* seq_lens;
  int num_seqs, max_blocks, heads, kv_heads, head_dim, block_size;
  int64_t q_stride;
  float scale;
  DType dtype;
};

// Short queries (decode: q_len 1; speculative verification: up to 16), flash-decoding: each
// (sequence, KV head) is split into `splits` chunks of the context handled by separate thread
// blocks (so one long sequence still fills the GPU), then merged. `splits` and `max_q_len` fix
// the grid (so the launch can be captured in a CUDA graph: chunks past seq_lens exit early).
// workspace: at least decode_attention_workspace_bytes(...) bytes of device memory.
size_t decode_attention_workspace_bytes(int num_seqs, int max_q_len, int heads, int head_dim, int splits);
cudaError_t decode_attention(const PagedAttention& p, int max_q_len, int splits, void* workspace, cudaStream_t stream);

// Long queries (prefill, a prompt extending a cached prefix): tiled flash-style attention with
// the online softmax in registers and shared memory (no score matrix in memory). max_q_len is
// the largest q_lens[b] (sizes the grid).
cudaError_t prefill_attention(const PagedAttention& p, int max_q_len, cudaStream_t stream);

// ---- AWQ int4 ---------------------------------------------------------------------------------
// AutoAWQ GEMM layout as stored in checkpoints: qweight int32 [K, N/8], qzeros int32 [K/group,
// N/8], scales fp16 [K/group, N]; nibble i of each int32 holds column 8j + {0,2,4,6,1,3,5,7}[i];
// W[k, n] = (q - z) * s. y [M, N] = x [M, K] W (+ bias [N]), x/y/bias in `dtype`, contiguous.
// group is 64 or 128; K a multiple of group; N a multiple of 64.
struct AwqProblem {
  const void* x;
  const int32_t* qweight;
  const int32_t* qzeros;
  const void* scales;  // fp16
  const void* bias;    // or nullptr
  void* y;
  int M, N, K, group;
  DType dtype;
};

// Small M (decode, M <= 8): dequantises in registers, fp32 accumulation. K is split across
// thread blocks; each K chunk writes fp32 partial sums to `workspace`, which a second kernel sums
// in a fixed order (deterministic), adding the bias. workspace: at least
// awq_gemv_workspace_bytes(M, N, K) bytes of device memory (awq_gemv_workspace_bytes(8, N, K)
// is enough for every M <= 8); may be null when M is 0.
size_t awq_gemv_workspace_bytes(int M, int N, int K);
cudaError_t awq_gemv(const AwqProblem& p, void* workspace, cudaStream_t stream);
// Any M (prefill): tensor-core GEMM (mma via WMMA, fp32 accumulation) with the int4 tile
// dequantised into shared memory and cp.async-pipelined loads of the activation tiles.
// x, qweight, qzeros, scales and y must be 16-byte aligned (cp.async and vector stores).
cudaError_t awq_gemm(const AwqProblem& p, cudaStream_t stream);

// ---- Fused RMSNorm --------------------------------------------------------------------------------
// residual += x (in place, if residual is not null), then out = rmsnorm(residual or x) * weight;
// rows of `dim` elements, fp32 statistics.
cudaError_t fused_add_rms_norm(void* out, const void* x, void* residual, const void* weight, float eps, int rows,
                               int dim, DType dtype, cudaStream_t stream);

}  // namespace llm_infer_cuda
