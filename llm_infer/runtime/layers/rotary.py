"""Rotary position embedding tables (half-split layout, as in Hugging Face checkpoints)."""

from __future__ import annotations

import torch
from torch import nn

from llm_infer.kernels.attention_metadata import AttentionMetadata
from llm_infer.runtime.layers.rope_scaling import RopeScaling


class RotaryEmbedding(nn.Module):
    """fp32 cos/sin tables `[positions, head_dim]` (already multiplied by the scaling's attention
    factor); the rotation itself is a kernel (`rotary_`).

    Dynamic NTK frequencies depend on the sequence's length, so they cannot be one table: as in
    transformers' generation with a KV cache, the tokens a step adds to a sequence of length L
    (its `seq_lens` entry) are rotated with the frequencies for L, and keys already cached keep
    the rotation they were written with. `lookup` gives every path the tables for a step."""

    def __init__(self, head_dim: int, max_position: int, base: float | None = None,
                 scaling: RopeScaling | None = None, original_max_position: int | None = None):
        """`max_position`: rows of the table; `base`: theta when no `scaling` is given;
        `original_max_position`: dynamic NTK's `max_position_embeddings`."""
        super().__init__()
        self.scaling = scaling if scaling is not None else RopeScaling(theta=10000.0 if base is None else base)
        self.head_dim = head_dim
        self.original_max_position = original_max_position or max_position
        inv_freq, attention = self.scaling.inv_freq(head_dim)
        cos, sin = self._tables(torch.arange(max_position, dtype=torch.int64).float()[:, None] * inv_freq[None, :],
                                attention)
        self.register_buffer("cos_cache", cos, persistent=False)
        self.register_buffer("sin_cache", sin, persistent=False)
        self._memo: tuple[AttentionMetadata, tuple] | None = None

    @property
    def dynamic(self) -> bool:
        """True when the tables depend on sequence lengths (no fixed table a fused path can take)."""
        return self.scaling.dynamic

    @staticmethod
    def _tables(freqs: torch.Tensor, attention: float) -> tuple[torch.Tensor, torch.Tensor]:
        emb = torch.cat((freqs, freqs), dim=-1)
        cos, sin = emb.cos(), emb.sin()
        if attention != 1.0:
            cos, sin = cos * attention, sin * attention
        return cos.contiguous(), sin.contiguous()

    def lookup(self, positions: torch.Tensor, meta: AttentionMetadata
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(row index per token int64 `[tokens]`, cos table, sin table) for the `rotary_` kernel."""
        if not self.dynamic:
            return positions, self.cos_cache, self.sin_cache
        if self._memo is not None and self._memo[0] is meta:  # every layer of a step shares it
            return self._memo[1]
        device = positions.device
        seq_lens = torch.repeat_interleave(torch.tensor(meta.seq_lens, dtype=torch.int64),
                                           torch.tensor(meta.query_lens, dtype=torch.int64))
        inv = self.scaling.dynamic_inv_freq(self.head_dim, seq_lens, self.original_max_position).to(device)
        cos, sin = self._tables(positions.float()[:, None] * inv, 1.0)
        result = (torch.arange(positions.shape[0], dtype=torch.int64, device=device), cos, sin)
        self._memo = (meta, result)
        return result
