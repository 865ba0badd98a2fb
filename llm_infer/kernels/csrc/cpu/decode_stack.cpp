// A run of decoder layers for a few short-query tokens (decode, speculative verification)
// in one call: the same kernels the layer modules call one by one, without returning to
// Python between them. It mirrors DecoderLayer.forward (runtime/models/decoder.py), which
// stays the reference; tests compare the two.
#include <cstring>
#include <vector>

#include "cpu_kernels.h"
#include "decode_stack.h"

namespace llm_infer_cpu {
namespace {

template <typename T>
void linear(const StackLinear& l, const T* x, T* y, int64_t m) {
  if (l.packed != nullptr) {
    awq_gemv<T>(x, l.packed, l.scales, l.zeros, static_cast<const T*>(l.bias), y, m, l.n, l.k, l.group);
  } else if constexpr (sizeof(T) == 2) {
    gemv_bf16(x, static_cast<const uint16_t*>(l.weight), static_cast<const uint16_t*>(l.bias), y, m, l.n, l.k);
  } else {
    gemv_f32(x, static_cast<const float*>(l.weight), static_cast<const float*>(l.bias), y, m, l.n, l.k);
  }
}

template <typename T>
std::vector<T>& scratch(int slot, size_t size) {
  thread_local std::vector<T> buffers[5];
  if (buffers[slot].size() < size) buffers[slot].resize(size);
  return buffers[slot];
}

}  // namespace

template <typename T>
void decode_stack(const StackLayer* layers, int64_t num_layers, const StackShape& s, T* hidden, T* residual,
                  bool residual_valid, const StackStep& step) {
  const int64_t t = step.tokens, hd = s.head_dim;
  const int64_t q_size = s.heads * hd, kv_size = s.kv_heads * hd, qkv_width = q_size + 2 * kv_size;
  T* h = scratch<T>(0, t * s.hidden).data();
  T* qkv = scratch<T>(1, t * qkv_width).data();
  T* attn = scratch<T>(2, t * q_size).data();
  T* gate_up = scratch<T>(3, t * 2 * s.intermediate).data();
  T* act = scratch<T>(4, t * s.intermediate).data();
  for (int64_t i = 0; i < num_layers; ++i) {
    const StackLayer& layer = layers[i];
    const T* in_norm = static_cast<const T*>(layer.input_norm);
    if (!residual_valid) {  // the first layer of the model: the embedding is the residual
      std::memcpy(residual, hidden, t * s.hidden * sizeof(T));
      rms_norm<T>(h, hidden, nullptr, in_norm, s.eps, t, s.hidden, s.hidden, s.hidden);
      residual_valid = true;
    } else {
      rms_norm<T>(h, hidden, residual, in_norm, s.eps, t, s.hidden, s.hidden, s.hidden);
    }
    linear<T>(layer.qkv, h, qkv, t);
    if (layer.q_norm != nullptr) {  // Qwen3: per-head RMSNorm of q and k before the rotation
      for (int64_t tok = 0; tok < t; ++tok) {
        T* row = qkv + tok * qkv_width;
        rms_norm<T>(row, row, nullptr, static_cast<const T*>(layer.q_norm), s.eps, s.heads, hd, hd, hd);
        rms_norm<T>(row + q_size, row + q_size, nullptr, static_cast<const T*>(layer.k_norm), s.eps, s.kv_heads, hd,
                    hd, hd);
      }
    }
    rotary<T>(qkv, step.positions, s.cos_cache, s.sin_cache, t, s.heads + s.kv_heads, hd, qkv_width);
    write_kv<T>(qkv + q_size, qkv + q_size + kv_size, static_cast<T*>(layer.k_cache), static_cast<T*>(layer.v_cache),
                step.slot_mapping, t, kv_size, qkv_width, qkv_width);
    paged_attention<T>(attn, qkv, static_cast<const T*>(layer.k_cache), static_cast<const T*>(layer.v_cache),
                       step.block_tables, step.q_start, step.q_lens, step.seq_lens, step.num_seqs, step.max_blocks,
                       s.heads, s.kv_heads, hd, s.block_size, s.scale, qkv_width, s.attention_chunk);
    linear<T>(layer.o, attn, hidden, t);
    rms_norm<T>(h, hidden, residual, static_cast<const T*>(layer.post_norm), s.eps, t, s.hidden, s.hidden, s.hidden);
    linear<T>(layer.gate_up, h, gate_up, t);
    silu_and_mul<T>(act, gate_up, t, s.intermediate);
    linear<T>(layer.down, act, hidden, t);
  }
}

template void decode_stack<float>(const StackLayer*, int64_t, const StackShape&, float*, float*, bool,
                                  const StackStep&);
template void decode_stack<uint16_t>(const StackLayer*, int64_t, const StackShape&, uint16_t*, uint16_t*, bool,
                                     const StackStep&);

}  // namespace llm_infer_cpu
