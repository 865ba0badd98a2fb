"""Decode steps replayed as CUDA graphs, one captured graph per batch-size bucket.

Used with our CUDA kernels in a one-process layout: a step of n <= max_num_seqs
sequences with one new token each runs the graph of the smallest bucket >= n. The
graph holds the whole forward pass and the LM head, so a step is: fill one pinned host
buffer, one host-to-device copy, one graph launch. Inputs live in one static int32 device
buffer the graphs were captured on: FIELDS vectors of `top` entries (token ids, positions,
slots, context lengths, and the row of `sampled` that replaces a placeholder id, or -1),
then the block tables `[top, max_blocks]`; each vector is contiguous, as the kernels want
them. Padding rows write no KV (slot -1) and their outputs are dropped. `sampled` is the
model runner's static buffer of the last step's tokens (overlapped scheduling), read
inside the graph. Attention metadata points at that buffer directly (no per-step
`prepare`), with a fixed number of decode splits per bucket, so the graph needs no host
decision. Sampling stays outside.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from llm_infer.kernels.attention_cuda import CudaPrepared
from llm_infer.kernels.attention_metadata import AttentionMetadata
from llm_infer.kernels.cuda_set import graph_capture
from llm_infer.runtime.step_inputs import Placeholders
from llm_infer.runtime.step_plan import StepPlan

BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
FIELDS = 5  # ids, positions, slots, context lengths, placeholder sources
PADDING = (0, 0, -1, 1, -1)  # a padding row's fields: slot -1 writes nothing, context length 1


def split_buffer(buffer: Any, top: int, max_blocks: int) -> tuple[Any, Any]:
    """(fields `[FIELDS, top]`, tables `[top, max_blocks]`): views of a flat input buffer (numpy or torch)."""
    return buffer[: FIELDS * top].reshape(FIELDS, top), buffer[FIELDS * top :].reshape(top, max_blocks)


def fill_decode_rows(fields: np.ndarray, tables: np.ndarray, plan: StepPlan, block_size: int,
                     fill: Placeholders | None) -> None:
    """Write a one-token-per-sequence step into the host views of the input buffer (`split_buffer`),
    padding rows after the plan's up to the bucket (`fields.shape[1]`). Table entries past a
    row's length are never read, so they are left as they were."""
    n = plan.num_seqs
    seq_lens = np.asarray(plan.seq_lens, dtype=np.int64)
    positions = seq_lens - 1
    for i, t in enumerate(plan.block_tables):
        tables[i, : len(t)] = t
    fields[0, :n] = plan.input_ids
    fields[1, :n] = positions
    fields[2, :n] = tables[np.arange(n), positions // block_size] * block_size + positions % block_size
    fields[3, :n] = seq_lens
    fields[4, :n] = -1
    if fill is not None:
        fields[4, fill.token_index] = fill.src
    fields[:, n:] = np.asarray(PADDING, dtype=np.int32)[:, None]


class DecodeGraphs:
    def __init__(self, model: Any, backend: Any, device: torch.device, block_size: int, max_model_len: int,
                 max_num_seqs: int, heads: int, kv_heads: int, head_dim: int, sampled: torch.Tensor):
        self.model = model
        self.sampled = sampled
        self.block_size = block_size
        self.buckets = [b for b in BUCKETS if b < max_num_seqs] + [max_num_seqs]
        self.top = top = self.buckets[-1]
        self.max_blocks = math.ceil(max_model_len / block_size)
        self.max_model_len = max_model_len
        size = top * (FIELDS + self.max_blocks)
        # Two pinned host buffers, alternating: under overlapped scheduling the next step is filled
        # while the last one's copy may still be queued (each buffer's copy is fenced by an event).
        self.host = [torch.zeros(size, dtype=torch.int32).pin_memory() for _ in range(2)]
        self.copied = [torch.cuda.Event(), torch.cuda.Event()]
        self.turn = 0
        self.inputs = torch.zeros(size, dtype=torch.int32, device=device)
        self.fields, self.tables = split_buffer(self.inputs, top, self.max_blocks)
        self.fields.copy_(torch.tensor(PADDING, dtype=torch.int32)[:, None].expand(FIELDS, top))
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
        slots, seq_lens, tables = self.fields[2, :b], self.fields[3, :b], self.tables[:b]
        meta = AttentionMetadata([1] * b, [1] * b, list(range(b + 1)), slots, tables, self.block_size, self.backend)
        meta.prepared = CudaPrepared(slots, tables, self.q_start[:b], self.q_lens[:b], seq_lens, 1,
                                     self.max_model_len, self.splits[b], self.workspace)
        return meta

    def _forward(self, b: int, meta: AttentionMetadata) -> torch.Tensor:
        ids, positions, src = self.fields[0, :b], self.fields[1, :b], self.fields[4, :b]
        ids = torch.where(src >= 0, self.sampled[src.clamp(min=0)], ids)
        hidden = self.model(ids, positions, meta)
        return self.model.compute_logits(hidden)

    @torch.inference_mode()
    def capture(self) -> None:
        """One graph per bucket, with the kernel set's graph-only kernels (`cuda_set.graph_capture`)."""
        with graph_capture():
            self._capture()

    def _capture(self) -> None:
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
        fields, tables = split_buffer(host.numpy(), self.top, self.max_blocks)
        fill_decode_rows(fields[:, :b], tables, plan, self.block_size, fill)
        used = FIELDS * self.top + b * self.max_blocks  # the fields and the bucket's table rows
        self.inputs[:used].copy_(host[:used], non_blocking=True)
        copied.record()
        self.graphs[b].replay()
        return self.outputs[b][:n]
