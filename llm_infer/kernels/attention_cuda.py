"""CUDA attention over the paged cache.

- Decode steps captured in CUDA graphs (one query token per sequence): the Triton GQA decode
  kernel (`triton/decode_attention.py`), split over the context by its `choose_splits`; there
  the step's keys and values reach the cache through `rotary_write_kv` (Triton: q/k norms,
  rotation and the cache write in one kernel).
- Eager steps (`use_triton()` false, see `cuda_set.py`), and short queries (speculative
  verification, up to `SHORT_QUERY` tokens): our CUDA flash-decoding kernel
  (`csrc/cuda/decode_attention.cu`); the layers rotate and call `write_kv`.
- Long queries (prefill): our CUDA flash-style kernel (`csrc/cuda/prefill_attention.cu`).

Metadata becomes int32 device tensors once per step (`prepare`); a CUDA-graph runner fills a
`CudaPrepared` with its own static buffers instead (`runtime/cuda_graphs.py`)."""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType
from typing import Any, Callable

import torch

from llm_infer.kernels.attention_metadata import AttentionMetadata

SHORT_QUERY = 16  # the CUDA decode kernel serves query lengths up to this
CHUNK = 512  # context positions per split of the CUDA decode kernel


def decode_splits(max_seq_len: int) -> int:
    """Splits of the CUDA (not Triton) decode kernel for a context of `max_seq_len`."""
    return max(1, -(-max_seq_len // CHUNK))


@dataclass
class CudaPrepared:
    slots: torch.Tensor  # int32 [tokens]
    block_tables: torch.Tensor  # int32 [seqs, max_blocks]
    q_start: torch.Tensor  # int32 [seqs]
    q_lens: torch.Tensor
    seq_lens: torch.Tensor
    max_q_len: int
    max_seq_len: int  # host value: sizes the splits when `splits` is None
    splits: int | None  # decode splits fixed by a graph runner; None: chosen per step
    workspace: torch.Tensor | None  # decode scratch (bytes), or None: the backend's own


class CudaAttentionBackend:
    name = "cuda"
    capturable = True

    def __init__(self, ext: Any, triton: dict[str, ModuleType] | None = None,
                 use_triton: Callable[[], bool] = lambda: True):
        """`ext`: the CUDA extension; `triton`: the Triton modules (`decode_attention`, `rope_kv`),
        or None to use the CUDA kernels and a separate `write_kv` only; `use_triton()`: whether
        this step takes them (true while CUDA graphs are captured)."""
        self.ext = ext
        self.triton_decode = triton["decode_attention"] if triton else None
        self._rope_kv = triton["rope_kv"] if triton else None
        self._use_triton = use_triton
        self._workspace = torch.empty(0, dtype=torch.uint8)
        self.sm_count = 0

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
            max_seq_len=meta.max_seq_len, splits=None, workspace=None)

    def decode_splits(self, num_seqs: int, num_kv_heads: int, max_seq_len: int, device: torch.device) -> int:
        """Splits of a captured decode step: the Triton kernel's choice (SM count, batch, context),
        else the CUDA kernel's fixed chunking."""
        if self.triton_decode is None:
            return decode_splits(max_seq_len)
        if not self.sm_count:
            self.sm_count = torch.cuda.get_device_properties(device).multi_processor_count
        return self.triton_decode.choose_splits(num_seqs, num_kv_heads, max_seq_len, self.sm_count)

    def decode_workspace_bytes(self, num_seqs: int, heads: int, head_dim: int, splits: int) -> int:
        if self.triton_decode is None:
            return self.ext.decode_workspace_bytes(num_seqs, 1, heads, head_dim, splits)
        return self.triton_decode.workspace_bytes(num_seqs, heads, head_dim, splits)

    def write_kv(self, k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                 meta: AttentionMetadata) -> None:
        self.ext.write_kv(k, v, k_cache, v_cache, meta.prepared.slots)

    @property
    def rotary_write_kv(self) -> Callable[..., None] | None:
        """See `AttentionBackend`: one Triton kernel (`triton/rope_kv.py`) in captured steps, None
        (the layers rotate and call `write_kv`) in eager ones."""
        return self._fused_rotary_write_kv if self._rope_kv is not None and self._use_triton() else None

    def _fused_rotary_write_kv(self, qkv: torch.Tensor, positions: torch.Tensor, cos_cache: torch.Tensor,
                               sin_cache: torch.Tensor, heads: int, kv_heads: int, head_dim: int,
                               k_cache: torch.Tensor, v_cache: torch.Tensor, meta: AttentionMetadata,
                               q_norm: torch.Tensor | None, k_norm: torch.Tensor | None, eps: float) -> None:
        self._rope_kv.rotary_write_kv(qkv, positions, cos_cache, sin_cache, heads, kv_heads, head_dim, k_cache,
                                      v_cache, meta.prepared.slots, q_norm, k_norm, eps)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor,
               v_cache: torch.Tensor, meta: AttentionMetadata, scale: float, num_heads: int) -> torch.Tensor:
        p: CudaPrepared = meta.prepared
        out = torch.empty(q.shape[0], num_heads * k_cache.shape[3], dtype=q.dtype, device=q.device)
        if p.max_q_len > SHORT_QUERY:
            self.ext.prefill_attention(out, q, k_cache, v_cache, p.block_tables, p.q_start, p.q_lens, p.seq_lens,
                                       scale, p.max_q_len)
            return out
        num_seqs, head_dim = p.seq_lens.shape[0], k_cache.shape[3]
        triton = self.triton_decode is not None and p.max_q_len == 1 and self._use_triton()
        splits = p.splits
        if splits is None:
            splits = (self.decode_splits(num_seqs, k_cache.shape[2], p.max_seq_len, q.device) if triton
                      else decode_splits(p.max_seq_len))
        work = p.workspace
        if work is None:
            nbytes = (self.triton_decode.workspace_bytes(num_seqs, num_heads, head_dim, splits) if triton else
                      self.ext.decode_workspace_bytes(num_seqs, p.max_q_len, num_heads, head_dim, splits))
            work = self.workspace(nbytes, q.device)
        if triton:
            self.triton_decode.decode_attention(q, k_cache, v_cache, p.block_tables, p.seq_lens, scale, splits,
                                                work, out)
        else:
            self.ext.decode_attention(out, q, k_cache, v_cache, p.block_tables, p.q_start, p.q_lens, p.seq_lens,
                                      scale, p.max_q_len, splits, work)
        return out
