"""CUDA attention over the paged cache: our decode (flash-decoding) and prefill (flash-style)
kernels. Metadata becomes int32 device tensors once per step (`prepare`); a CUDA-graph runner
can instead fill a `CudaPrepared` with its own static buffers (`runtime/cuda_graphs.py`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from llm_infer.kernels.attention_metadata import AttentionMetadata

SHORT_QUERY = 16  # the decode kernel serves query lengths up to this
CHUNK = 512  # context positions per decode split


def decode_splits(max_seq_len: int) -> int:
    return max(1, -(-max_seq_len // CHUNK))


@dataclass
class CudaPrepared:
    slots: torch.Tensor  # int32 [tokens]
    block_tables: torch.Tensor  # int32 [seqs, max_blocks]
    q_start: torch.Tensor  # int32 [seqs]
    q_lens: torch.Tensor
    seq_lens: torch.Tensor
    max_q_len: int
    splits: int
    workspace: torch.Tensor | None  # decode scratch (bytes)


class CudaAttentionBackend:
    name = "cuda"

    def __init__(self, ext: Any):
        self.ext = ext
        self._workspace = torch.empty(0, dtype=torch.uint8)

    def workspace(self, nbytes: int, device: torch.device) -> torch.Tensor:
        """A scratch buffer reused across steps (grown when needed)."""
        if self._workspace.numel() < nbytes or self._workspace.device != device:
            self._workspace = torch.empty(max(nbytes, 1), dtype=torch.uint8, device=device)
        return self._workspace

    def prepare(self, meta: AttentionMetadata) -> None:
        device = meta.slot_mapping.device
        host = torch.tensor([meta.query_start_loc[:-1], meta.query_lens, meta.seq_lens], dtype=torch.int32)
        meta_dev = host.to(device, non_blocking=True)
        meta.prepared = CudaPrepared(
            slots=meta.slot_mapping.to(torch.int32), block_tables=meta.block_tables.to(torch.int32),
            q_start=meta_dev[0], q_lens=meta_dev[1], seq_lens=meta_dev[2], max_q_len=meta.max_query_len,
            splits=decode_splits(meta.max_seq_len), workspace=None)

    def write_kv(self, k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                 meta: AttentionMetadata) -> None:
        self.ext.write_kv(k, v, k_cache, v_cache, meta.prepared.slots)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor,
               v_cache: torch.Tensor, meta: AttentionMetadata, scale: float, num_heads: int) -> torch.Tensor:
        p: CudaPrepared = meta.prepared
        out = torch.empty(q.shape[0], num_heads * k_cache.shape[3], dtype=q.dtype, device=q.device)
        args = (out, q, k_cache, v_cache, p.block_tables, p.q_start, p.q_lens, p.seq_lens, scale, p.max_q_len)
        if p.max_q_len <= SHORT_QUERY:
            work = p.workspace
            if work is None:
                nbytes = self.ext.decode_workspace_bytes(p.seq_lens.shape[0], p.max_q_len, num_heads,
                                                         k_cache.shape[3], p.splits)
                work = self.workspace(nbytes, q.device)
            self.ext.decode_attention(*args, p.splits, work)
        else:
            self.ext.prefill_attention(*args)
        return out
