"""CPU attention: the C++ kernel reads short queries' keys and values in place
through the block table; long queries (prefill) use torch SDPA as the reference does.

With `fixed_chunk` (deterministic mode) every query row, prefill rows included, goes
through the C++ kernel, which then reduces the KV positions in chunks at fixed
positions: a row's output depends only on its query and the keys and values it sees,
never on how the step's rows were split or what else is in the step."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from llm_infer.kernels.attention_metadata import AttentionMetadata
from llm_infer.kernels.attention_torch import Prepared, TorchAttentionBackend


@dataclass
class CpuShortBatch:
    block_tables: torch.Tensor  # [B, max_blocks] int64
    q_start: torch.Tensor  # [B] first token row of each sequence
    q_lens: torch.Tensor  # [B]
    seq_lens: torch.Tensor  # [B]


class CpuAttentionBackend(TorchAttentionBackend):
    name = "cpu"
    capturable = False

    def __init__(self, ext: Any, fixed_chunk: int = 0):
        self.ext = ext
        self.fixed_chunk = fixed_chunk  # > 0: deterministic mode (see the module docstring)

    def prepare(self, meta: AttentionMetadata) -> None:
        if not self.fixed_chunk:
            return super().prepare(meta)
        meta.prepared = Prepared(short=self.prepare_short(meta, list(range(len(meta.query_lens)))), long=[])

    def prepare_short(self, meta: AttentionMetadata, rows: list[int]) -> CpuShortBatch:
        tables = meta.block_tables if len(rows) == len(meta.query_lens) else meta.block_tables[rows]
        return CpuShortBatch(
            tables.contiguous(),
            torch.tensor([meta.query_start_loc[i] for i in rows], dtype=torch.int64),
            torch.tensor([meta.query_lens[i] for i in rows], dtype=torch.int64),
            torch.tensor([meta.seq_lens[i] for i in rows], dtype=torch.int64),
        )

    def write_kv(self, k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                 meta: AttentionMetadata) -> None:
        self.ext.write_kv(k, v, k_cache, v_cache, meta.slot_mapping)

    def attend_short(self, out: torch.Tensor, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                     b: CpuShortBatch, scale: float) -> None:
        self.ext.paged_attention(out, q, k_cache, v_cache, b.block_tables, b.q_start, b.q_lens, b.seq_lens, scale,
                                 self.fixed_chunk)
