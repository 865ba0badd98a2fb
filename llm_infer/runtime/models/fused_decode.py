"""A stage's decoder layers as one C++ call (`DecodeStack`) for small decode steps on CPU.

Used when the step has at most MAX_TOKENS tokens, all with short queries (decode,
speculative verification), the C++ CPU kernels are active and the rank holds whole
layers (no tensor parallelism: the stack has no collectives). It runs exactly the
kernels the layer modules would call, in the same order; `DecoderLayer.forward`
remains the reference the tests compare it with.
"""

from __future__ import annotations

from typing import Any

import torch

from llm_infer.kernels.attention_cpu import CpuShortBatch
from llm_infer.kernels.attention_metadata import AttentionMetadata

MAX_TOKENS = 8  # beyond this oneDNN's GEMM (weights read once) beats the streamed GEMV


class FusedDecode:
    def __init__(self, model: Any, ext: Any, attention_chunk: int = 0):
        """`attention_chunk` > 0: the attention kernel's fixed KV chunk (deterministic mode)."""
        decoder = model.model
        layers, groups = [], []
        for i in decoder.layer_range:
            layer = decoder.layers[i]
            attn, mlp = layer.self_attn, layer.mlp
            entries = [layer.input_layernorm.weight, layer.post_attention_layernorm.weight,
                       attn.q_norm.weight if attn.qk_norm else None, attn.k_norm.weight if attn.qk_norm else None,
                       attn.attn.k_cache, attn.attn.v_cache]
            for linear in (attn.qkv_proj, attn.o_proj, mlp.gate_up_proj, mlp.down_proj):
                awq = getattr(linear, "awq", None)
                if awq is not None:
                    entries += [None, awq.packed, awq.scales_nk, awq.zeros_nk, linear.bias]
                    groups.append(awq.group)
                else:
                    entries += [linear.weight, None, None, None, linear.bias]
                    groups.append(0)
            layers.append([None if t is None else t.data for t in entries])
        first = decoder.layers[decoder.layer_range[0]].self_attn
        dims = [model.config.hidden_size, first.num_heads, first.num_kv_heads, first.head_dim,
                decoder.layers[decoder.layer_range[0]].mlp.gate_up_proj.output_size_per_partition // 2,
                first.attn.k_cache.shape[1]] + ([attention_chunk] if attention_chunk else [])
        self.stack = ext.DecodeStack(layers, groups, dims, model.config.rms_norm_eps, first.attn.scale,
                                     decoder.rotary.cos_cache, decoder.rotary.sin_cache)

    @staticmethod
    def supported(model: Any, kernels_name: str, tp_size: int) -> bool:
        if (kernels_name not in ("cpu", "cpu-deterministic") or tp_size != 1 or not model.model.layer_range or model.model.rotary.dynamic
                or model.config.moe is not None):
            return False
        for i in model.model.layer_range:
            layer = model.model.layers[i]
            for linear in (layer.self_attn.qkv_proj, layer.self_attn.o_proj, layer.mlp.gate_up_proj,
                           layer.mlp.down_proj):
                awq = getattr(linear, "awq", None)
                if awq is not None and awq.packed is None:  # a group size the CPU kernel does not take
                    return False
                if getattr(linear, "input_perm", None) is not None:  # act-order input gathered (GPTQ)
                    return False
        return True

    @staticmethod
    def applicable(meta: AttentionMetadata) -> bool:
        prep = meta.prepared
        return meta.num_tokens <= MAX_TOKENS and not prep.long and isinstance(prep.short, CpuShortBatch)

    def run(self, x: torch.Tensor, residual: torch.Tensor | None, positions: torch.Tensor,
            meta: AttentionMetadata) -> tuple[torch.Tensor, torch.Tensor]:
        b: CpuShortBatch = meta.prepared.short
        valid = residual is not None
        hidden = x.contiguous().clone() if valid else x.contiguous()
        residual = residual.contiguous() if valid else torch.empty_like(hidden)
        self.stack.run(hidden, residual, valid, positions, meta.slot_mapping, b.block_tables, b.q_start,
                       b.q_lens, b.seq_lens)
        return hidden, residual
