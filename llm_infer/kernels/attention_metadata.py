"""Per-step attention inputs, shared by every layer of one forward pass."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class AttentionMetadata:
    """A flattened batch: sequence i contributes `query_lens[i]` new tokens whose
    keys/values go to `slot_mapping`, and attends to its first `seq_lens[i]`
    cached positions (earlier context plus the new tokens, causally)."""

    query_lens: list[int]
    seq_lens: list[int]
    slot_mapping: torch.Tensor  # [num_tokens] int64: block * block_size + offset
    block_tables: torch.Tensor  # [num_seqs, max_blocks] int64, padded with 0
    block_size: int
    backend: Any  # the attention backend chosen by kernels.dispatch
    prepared: Any = None  # the backend's own precomputation for this step

    @property
    def num_tokens(self) -> int:
        return int(self.slot_mapping.shape[0])

    @property
    def max_query_len(self) -> int:
        return max(self.query_lens)

    @property
    def max_seq_len(self) -> int:
        return max(self.seq_lens)
