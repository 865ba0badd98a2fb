// CPU kernels of llm-infer. Plain C++ on raw pointers (no torch headers), so each
// kernel file compiles in about a second; cpu_bindings.cpp connects them to torch.
// Threads come from OpenMP, which resolves to the runtime torch already loaded.
#pragma once

#include <cstdint>
#include <cstring>

namespace llm_infer_cpu {

// The instruction-set path each kernel file was compiled with, as `llm-infer env` shows it
// ("AVX-512 BF16", "AVX2 + FMA", ...; "scalar" when the build's flags enable none of its fast
// paths). `kernels/dispatch.py` sends an op whose path is scalar to torch instead.
const char* gemv_isa();         // gemv.cpp: bf16/fp32 GEMV and the invariant matmul
const char* awq_gemv_isa();     // awq_gemv.cpp: AWQ int4 GEMV (W4A8) and dequantization
const char* int8_gemv_isa();    // int8_gemv.cpp: the int8 LM head
const char* attention_isa();    // attention.cpp: paged attention
const char* elementwise_isa();  // elementwise.cpp: RMSNorm, RoPE, SiLU x mul, KV write
const char* moe_isa();          // moe.cpp: the fused MoE MLP

inline float bf16_to_f32(uint16_t v) {
  uint32_t bits = static_cast<uint32_t>(v) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
}

inline uint16_t f32_to_bf16(float f) {  // round to nearest even; NaN stays NaN
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof(bits));
  if ((bits & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((bits >> 16) | 0x40u);
  bits += 0x7fffu + ((bits >> 16) & 1u);
  return static_cast<uint16_t>(bits >> 16);
}

// e^x from 2^n * 2^f with a degree-6 polynomial for 2^f, f in [-0.5, 0.5]: pure arithmetic,
// so loops using it vectorise (libm's expf does not). Relative error < 4e-6 over [-87, 88].
inline float exp_approx(float x) {
  x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
  const float t = x * 1.4426950408889634f;
  const float n = (t + 12582912.0f) - 12582912.0f;  // round to nearest via 1.5 * 2^23
  const float f = t - n;
  float p = 1.5353362e-4f;
  p = p * f + 1.3398874e-3f;
  p = p * f + 9.6184374e-3f;
  p = p * f + 5.5503324e-2f;
  p = p * f + 2.4022648e-1f;
  p = p * f + 6.9314720e-1f;
  p = p * f + 1.0f;
  const uint32_t bits = static_cast<uint32_t>(static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
}

// Element access for the two activation types: float (fp32) and uint16_t (bf16 bits).
inline float load(const float* p, int64_t i) { return p[i]; }
inline float load(const uint16_t* p, int64_t i) { return bf16_to_f32(p[i]); }
inline void store(float* p, int64_t i, float v) { p[i] = v; }
inline void store(uint16_t* p, int64_t i, float v) { p[i] = f32_to_bf16(v); }
// Rounds v to the storage precision of T (what a torch op in that dtype would keep).
inline float round_to(const float*, float v) { return v; }
inline float round_to(const uint16_t*, float v) { return bf16_to_f32(f32_to_bf16(v)); }

// y[m, n] = sum_k x[m, k] * w[n, k] (+ bias[n]); w row-major [N, K]. Meant for small M.
void gemv_bf16(const uint16_t* x, const uint16_t* w, const uint16_t* bias, uint16_t* y, int64_t M, int64_t N,
               int64_t K);
void gemv_f32(const float* x, const float* w, const float* bias, float* y, int64_t M, int64_t N, int64_t K);
// The same product for any M, batch-invariant: row m of y is bitwise the same whatever the other
// rows (deterministic mode). M <= 8 is gemv itself; more rows use gemv's tiles blocked over M.
void gemm_bf16(const uint16_t* x, const uint16_t* w, const uint16_t* bias, uint16_t* y, int64_t M, int64_t N,
               int64_t K);
void gemm_f32(const float* x, const float* w, const float* bias, float* y, int64_t M, int64_t N, int64_t K);

// AWQ int4 (layout in awq_gemv.cpp): y[M, N] = x[M, K] W^T (+ bias) for small M, and the
// dequantised W[N, K] for larger M.
template <typename T>
void awq_gemv(const T* x, const uint8_t* packed, const float* scales, const float* zero_scales, const T* bias, T* y,
              int64_t M, int64_t N, int64_t K, int64_t group);
template <typename T>
void awq_dequantize(const uint8_t* packed, const float* scales, const float* zero_scales, T* w, int64_t N, int64_t K,
                    int64_t group);

// int8 weights [N, K] with a per-row scale: y[M, N] = x W^T, one activation row at a time.
template <typename T>
void int8_gemv(const T* x, const int8_t* w, const float* scales, T* y, int64_t M, int64_t N, int64_t K);

// RMSNorm of `rows` rows of `dim`: normalise in fp32, round to T, scale by weight, round to T.
// With `residual`: residual = x + residual first (rounded to T), and that sum is normalised.
template <typename T>
void rms_norm(T* out, const T* x, T* residual, const T* weight, float eps, int64_t rows, int64_t dim,
              int64_t x_stride, int64_t out_stride);

// In place: rotate the first `rot_heads` heads of each token row of `x` (half-split layout).
template <typename T>
void rotary(T* x, const int64_t* positions, const float* cos_cache, const float* sin_cache, int64_t tokens,
            int64_t rot_heads, int64_t head_dim, int64_t row_stride);

// out[t, i] = silu(x[t, i]) * x[t, inter + i]
template <typename T>
void silu_and_mul(T* out, const T* x, int64_t tokens, int64_t inter);

// Scatter each token's K and V rows ([tokens, kv_heads * head_dim], row strides allowed)
// into cache slot slot_mapping[t] of caches [slots, kv_heads * head_dim].
template <typename T>
void write_kv(const T* k, const T* v, T* k_cache, T* v_cache, const int64_t* slot_mapping, int64_t tokens,
              int64_t row, int64_t k_stride, int64_t v_stride);

// Attention of short queries over the paged cache. Sequence b owns query rows
// [q_start[b], q_start[b] + q_lens[b]) and attends causally to its first seq_lens[b]
// positions; only those rows of `out` ([tokens, heads, head_dim]) are written.
// fixed_chunk > 0 (a multiple of block_size): the context is cut at multiples of it, so a
// row's result depends on nothing but its query and its visible keys and values
// (deterministic mode); 0: chunks sized to the batch for speed.
template <typename T>
void paged_attention(T* out, const T* q, const T* k_cache, const T* v_cache, const int64_t* block_tables,
                     const int64_t* q_start, const int64_t* q_lens, const int64_t* seq_lens, int64_t num_seqs,
                     int64_t max_blocks,
                     int64_t num_heads, int64_t num_kv_heads, int64_t head_dim, int64_t block_size, float scale,
                     int64_t q_row_stride, int64_t fixed_chunk = 0);

// Mixture of experts (moe.cpp): y[t] = sum over the slots j of token t whose expert ids[t, j] is
// one of experts first .. first + num_local - 1 of weights[t, j] * expert(x[t]); gate_up
// [num_local, 2 * inter, hidden] ([gate | up] rows), down [num_local, hidden, inter]. Each expert
// that received tokens runs once over them; the others are not read.
template <typename T>
void fused_moe(const T* x, const T* gate_up, const T* down, const float* weights, const int64_t* ids, T* y,
               int64_t tokens, int64_t top_k, int64_t num_local, int64_t first, int64_t hidden, int64_t inter);

}  // namespace llm_infer_cpu
