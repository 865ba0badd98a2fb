// Plain descriptions of a decoder layer's weights and of one step, for decode_stack.
#pragma once

#include <cstdint>

namespace llm_infer_cpu {

struct StackLinear {
  const void* weight = nullptr;   // dense [n, k] in the activation dtype, or
  const uint8_t* packed = nullptr;  // AWQ int4 (see awq_gemv.cpp) with
  const float* scales = nullptr;  // [n, G]
  const float* zeros = nullptr;   // scale * zero point, [G, n]
  int64_t group = 0;
  const void* bias = nullptr;  // [n] or null
  int64_t n = 0, k = 0;
};

struct StackLayer {
  const void* input_norm = nullptr;
  const void* post_norm = nullptr;
  const void* q_norm = nullptr;  // Qwen3 only
  const void* k_norm = nullptr;
  StackLinear qkv, o, gate_up, down;
  void* k_cache = nullptr;  // [blocks, block_size, kv_heads, head_dim]
  void* v_cache = nullptr;
};

struct StackShape {
  int64_t hidden = 0, heads = 0, kv_heads = 0, head_dim = 0, intermediate = 0, block_size = 0;
  float eps = 0.f, scale = 0.f;
  const float* cos_cache = nullptr;  // [max_position, head_dim]
  const float* sin_cache = nullptr;
  int64_t attention_chunk = 0;  // paged_attention's fixed_chunk (deterministic mode), 0: sized to the batch
};

struct StackStep {
  int64_t tokens = 0, num_seqs = 0, max_blocks = 0;
  const int64_t* positions = nullptr;
  const int64_t* slot_mapping = nullptr;
  const int64_t* block_tables = nullptr;  // [num_seqs, max_blocks]
  const int64_t* q_start = nullptr;
  const int64_t* q_lens = nullptr;
  const int64_t* seq_lens = nullptr;
};

// hidden [tokens, hidden] in: the layer input (embedding for the first layer of the model);
// out: the last layer's MLP output. residual [tokens, hidden] in/out (ignored on input when
// !residual_valid). As DecoderLayer.forward, layer after layer.
template <typename T>
void decode_stack(const StackLayer* layers, int64_t num_layers, const StackShape& shape, T* hidden, T* residual,
                  bool residual_valid, const StackStep& step);

}  // namespace llm_infer_cpu
