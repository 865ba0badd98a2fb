"""Attention over the paged KV cache; the kernel behind it comes from `kernels.dispatch`."""

from __future__ import annotations

import torch
from torch import nn

from llm_infer.kernels.attention_metadata import AttentionMetadata


class Attention(nn.Module):
    def __init__(self, num_heads: int, num_kv_heads: int, head_dim: int, scale: float):
        super().__init__()
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim
        self.scale = scale
        # Bound by the model runner once the cache is allocated: [blocks, block_size, kv_heads, head_dim].
        self.k_cache: torch.Tensor | None = None
        self.v_cache: torch.Tensor | None = None

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, meta: AttentionMetadata,
                kv_written: bool = False) -> torch.Tensor:
        """q `[tokens, heads * head_dim]`, k/v `[tokens, kv_heads * head_dim]` -> `[tokens, heads * head_dim]`;
        `kv_written`: the step's keys and values are already in the cache (the backend's fused
        `rotary_write_kv` put them there)."""
        if not kv_written:
            meta.backend.write_kv(k, v, self.k_cache, self.v_cache, meta)
        return meta.backend.attend(q, k, v, self.k_cache, self.v_cache, meta, self.scale, self.num_heads)
