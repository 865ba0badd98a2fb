"""Per-step attention inputs, shared by every layer of one forward pass."""

from __future__ import annotations

from dataclasses import dataclass
from itertools import accumulate
from typing import TYPE_CHECKING, Protocol, Union

import torch

if TYPE_CHECKING:
    from llm_infer.kernels.attention_cuda import CudaPrepared
    from llm_infer.kernels.attention_torch import Prepared

    # What a backend's `prepare` computed once per step for every layer to reuse.
    PreparedAttention = Union[Prepared, CudaPrepared]


def query_start_loc(query_lens: list[int]) -> list[int]:
    """Cumulative query offsets `[num_seqs + 1]`: sequence i's tokens are rows
    `query_start_loc[i]:query_start_loc[i + 1]` of the flattened batch."""
    return [0, *accumulate(query_lens)]


class AttentionBackend(Protocol):
    """Paged attention for one kernel set (torch reference, C++ CPU, CUDA), chosen in `dispatch`.

    A backend may also offer `rotary_write_kv(qkv, positions, cos_cache, sin_cache, heads, kv_heads,
    head_dim, k_cache, v_cache, meta, q_norm_weight, k_norm_weight, eps)`: the per-head q/k norms
    (when given), the rotation of q and k in place in the fused projection's output, and the
    write of k and v into the cache, as one kernel; layers then skip `write_kv`. The attribute
    may be None for a step (the CUDA backend offers it only inside CUDA graphs)."""

    name: str
    capturable: bool  # a step's prepare + attend can be replayed from a CUDA graph over static buffers

    def prepare(self, meta: AttentionMetadata) -> None:
        """Fill `meta.prepared` once per step (index tensors, masks, kernel arguments)."""

    def write_kv(self, k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                 meta: AttentionMetadata) -> None:
        """Scatter the step's keys/values `[tokens, kv_heads * head_dim]` into the cache slots."""

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor,
               v_cache: torch.Tensor, meta: AttentionMetadata, scale: float, num_heads: int) -> torch.Tensor:
        """Causal attention of q `[tokens, heads * head_dim]` over each sequence's cached context
        -> `[tokens, heads * head_dim]`."""


@dataclass
class AttentionMetadata:
    """A flattened batch: sequence i contributes `query_lens[i]` new tokens (rows
    `query_start_loc[i]:query_start_loc[i + 1]`) whose keys/values go to `slot_mapping`,
    and attends to its first `seq_lens[i]` cached positions (earlier context plus the
    new tokens, causally)."""

    query_lens: list[int]
    seq_lens: list[int]
    query_start_loc: list[int]  # [num_seqs + 1], see query_start_loc()
    slot_mapping: torch.Tensor  # [num_tokens] int64: block * block_size + offset
    block_tables: torch.Tensor  # [num_seqs, max_blocks] int64, padded with 0
    block_size: int
    backend: AttentionBackend
    prepared: PreparedAttention | None = None  # the backend's own precomputation for this step

    @property
    def num_tokens(self) -> int:
        return int(self.slot_mapping.shape[0])

    @property
    def max_query_len(self) -> int:
        return max(self.query_lens)

    @property
    def max_seq_len(self) -> int:
        return max(self.seq_lens)
