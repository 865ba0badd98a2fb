"""Rotary position embedding tables (half-split layout, as in Hugging Face checkpoints)."""

from __future__ import annotations

import torch
from torch import nn


class RotaryEmbedding(nn.Module):
    """fp32 cos/sin tables for every position; the rotation itself is a kernel (`rotary_`)."""

    def __init__(self, head_dim: int, max_position: int, base: float):
        super().__init__()
        inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
        freqs = torch.arange(max_position, dtype=torch.int64).float()[:, None] * inv_freq[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        self.register_buffer("cos_cache", emb.cos().contiguous(), persistent=False)
        self.register_buffer("sin_cache", emb.sin().contiguous(), persistent=False)
