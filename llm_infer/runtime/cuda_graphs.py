"""Decode steps replayed as CUDA graphs, one captured graph per batch-size bucket.

Used with our CUDA kernels in a one-process layout: a step of n <= max_num_seqs
sequences with one new token each runs the graph of the smallest bucket >= n. The
graph holds the whole forward pass and the LM head, so a step is: fill one pinned host
buffer, one host-to-device copy, one graph launch. Inputs live in one static int32 device
buffer the graphs were captured on (token ids, positions, slots, context lengths, the row
of `sampled` that replaces a placeholder id or -1, block tables); padding rows write no KV
(slot -1) and their outputs are dropped. `sampled` is the model runner's static buffer of
the last step's tokens (overlapped scheduling), read inside the graph. Attention
metadata points at that buffer directly (no per-step `prepare`), with a fixed number of
decode splits per bucket, so the graph needs no host decision. Sampling stays outside.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from llm_infer.kernels.attention_cuda import CudaPrepared
from llm_infer.kernels.attention_metadata import AttentionMetadata
from llm_infer.runtime.step_inputs import Placeholders
from llm_infer.runtime.step_plan import StepPlan

BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
TABLE = 5  # first column of the block tables in the input buffer
PADDING_ROW = (0, 0, -1, 1, -1)  # id, position, slot (-1: write nothing), context length, placeholder source


def fill_decode_rows(rows: np.ndarray, plan: StepPlan, block_size: int, fill: Placeholders | None) -> int:
    """Write a one-token-per-sequence step into `rows` (int32 `[bucket, TABLE + max_blocks]`, the
    host side of the graphs' input buffer), padding rows after the plan's; returns the columns in
    use (entries past a row's block table are never read, so they are left as they were)."""
    n = plan.num_seqs
    seq_lens = np.asarray(plan.seq_lens, dtype=np.int64)
    positions = seq_lens - 1
    for i, t in enumerate(plan.block_tables):
        rows[i, TABLE : TABLE + len(t)] = t
    rows[:n, 0] = plan.input_ids
    rows[:n, 1] = positions
    rows[:n, 2] = rows[np.arange(n), TABLE + positions // block_size] * block_size + positions % block_size
    rows[:n, 3] = seq_lens
    rows[:n, 4] = -1
    if fill is not None:
        rows[fill.token_index, 4] = fill.src
    rows[n:, :TABLE] = PADDING_ROW
    return TABLE + max(len(t) for t in plan.block_tables)


class DecodeGraphs:
    def __init__(self, model: Any, backend: Any, device: torch.device, block_size: int, max_model_len: int,
                 max_num_seqs: int, heads: int, kv_heads: int, head_dim: int, sampled: torch.Tensor):
        self.model = model
        self.sampled = sampled
        self.block_size = block_size
        self.buckets = [b for b in BUCKETS if b < max_num_seqs] + [max_num_seqs]
        top = self.buckets[-1]
        self.max_blocks = math.ceil(max_model_len / block_size)
        self.max_model_len = max_model_len
        # Columns of the input buffer: ids, positions, slots, context lengths, placeholder source, block tables.
        self.width = TABLE + self.max_blocks
        # Two pinned host buffers, alternating: under overlapped scheduling the next step is filled
        # while the last one's copy may still be queued (each buffer's copy is fenced by an event).
        self.host = [torch.zeros(top, self.width, dtype=torch.int32).pin_memory() for _ in range(2)]
        self.copied = [torch.cuda.Event(), torch.cuda.Event()]
        self.turn = 0
        self.inputs = torch.zeros(top, self.width, dtype=torch.int32, device=device)
        self.inputs[:, :TABLE] = torch.tensor(PADDING_ROW, dtype=torch.int32)
        i32 = dict(dtype=torch.int32, device=device)
        self.q_start = torch.arange(top, **i32)
        self.q_lens = torch.ones(top, **i32)
        self.splits = {b: backend.decode_splits(b, kv_heads, max_model_len, device) for b in self.buckets}
        nbytes = max(backend.decode_workspace_bytes(b, heads, head_dim, self.splits[b]) for b in self.buckets)
        self.workspace = torch.empty(nbytes, dtype=torch.uint8, device=device)
        self.backend = backend
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.outputs: dict[int, torch.Tensor] = {}  # float32 logits [bucket, vocab]
        self.pool = None

    def _meta(self, b: int) -> AttentionMetadata:
        cols = self.inputs[:b]
        slots, seq_lens, tables = cols[:, 2], cols[:, 3], cols[:, TABLE:]
        meta = AttentionMetadata([1] * b, [1] * b, list(range(b + 1)), slots, tables, self.block_size, self.backend)
        meta.prepared = CudaPrepared(slots, tables, self.q_start[:b], self.q_lens[:b], seq_lens, 1,
                                     self.max_model_len, self.splits[b], self.workspace)
        return meta

    def _forward(self, b: int, meta: AttentionMetadata) -> torch.Tensor:
        cols = self.inputs[:b]
        src = cols[:, 4]
        ids = torch.where(src >= 0, self.sampled[src.clamp(min=0)], cols[:, 0])
        hidden = self.model(ids, cols[:, 1], meta)
        return self.model.compute_logits(hidden)

    @torch.inference_mode()
    def capture(self) -> None:
        for b in reversed(self.buckets):  # largest first, so the smaller graphs reuse its memory pool
            meta = self._meta(b)
            for _ in range(2):  # warm up (lazy allocations, kernel compilation) outside the capture
                self._forward(b, meta)
            torch.cuda.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self.pool):
                self.outputs[b] = self._forward(b, meta)
            self.pool = graph.pool()
            self.graphs[b] = graph

    def handles(self, plan: StepPlan) -> bool:
        return (plan.num_seqs <= self.buckets[-1] and plan.num_tokens == plan.num_seqs
                and not any(plan.return_logits) and plan.prompt_targets is None)

    def run(self, plan: StepPlan, fill: Placeholders | None = None) -> torch.Tensor:
        """float32 logits `[plan.num_seqs, vocab]` of the step's tokens (`fill.sampled` must be the
        buffer the graphs were captured with)."""
        n = plan.num_seqs
        b = next(x for x in self.buckets if x >= n)
        host, copied = self.host[self.turn], self.copied[self.turn]
        self.turn ^= 1
        copied.synchronize()  # its previous copy (two steps ago) has left the buffer
        width = fill_decode_rows(host.numpy()[:b], plan, self.block_size, fill)
        self.inputs[:b, :width].copy_(host[:b, :width], non_blocking=True)
        copied.record()
        self.graphs[b].replay()
        return self.outputs[b][:n]
