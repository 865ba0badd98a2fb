"""Decode steps replayed as CUDA graphs, one captured graph per batch-size bucket.

Used with our CUDA kernels in a one-process layout: a step of n <= max_num_seqs
sequences with one new token each runs the graph of the smallest bucket >= n.
Inputs live in static device buffers the graphs were captured on; padding rows
write no KV (slot -1) and their outputs are dropped. Attention metadata points at
those buffers directly (no per-step `prepare`), with a fixed number of decode
splits, so the graph needs no host decision. Sampling stays outside the graph.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from llm_infer.kernels.attention_cuda import CudaPrepared, decode_splits
from llm_infer.kernels.attention_metadata import AttentionMetadata
from llm_infer.runtime.step_plan import StepPlan

BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class DecodeGraphs:
    def __init__(self, model: Any, backend: Any, device: torch.device, block_size: int, max_model_len: int,
                 max_num_seqs: int, heads: int, head_dim: int):
        self.model = model
        self.block_size = block_size
        self.buckets = [b for b in BUCKETS if b < max_num_seqs] + [max_num_seqs]
        top = self.buckets[-1]
        self.max_blocks = math.ceil(max_model_len / block_size)
        self.splits = decode_splits(max_model_len)
        i64 = dict(dtype=torch.int64, device=device)
        i32 = dict(dtype=torch.int32, device=device)
        self.input_ids = torch.zeros(top, **i64)
        self.positions = torch.zeros(top, **i64)
        self.slots = torch.full((top,), -1, **i64)
        self.slots32 = torch.full((top,), -1, **i32)
        self.tables = torch.zeros(top, self.max_blocks, **i32)
        self.seq_lens = torch.ones(top, **i32)
        self.q_start = torch.arange(top, **i32)
        self.q_lens = torch.ones(top, **i32)
        nbytes = backend.ext.decode_workspace_bytes(top, 1, heads, head_dim, self.splits)
        self.workspace = torch.empty(nbytes, dtype=torch.uint8, device=device)
        self.backend = backend
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.outputs: dict[int, torch.Tensor] = {}
        self.pool = None

    def _meta(self, b: int) -> AttentionMetadata:
        meta = AttentionMetadata([1] * b, [1] * b, list(range(b + 1)), self.slots[:b], self.tables[:b], self.block_size, self.backend)
        meta.prepared = CudaPrepared(self.slots32[:b], self.tables[:b], self.q_start[:b], self.q_lens[:b],
                                     self.seq_lens[:b], 1, self.splits, self.workspace)
        return meta

    @torch.inference_mode()
    def capture(self) -> None:
        for b in reversed(self.buckets):  # largest first, so the smaller graphs reuse its memory pool
            meta = self._meta(b)
            for _ in range(2):  # warm up (lazy allocations, autotuning) outside the capture
                self.model(self.input_ids[:b], self.positions[:b], meta)
            torch.cuda.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self.pool):
                self.outputs[b] = self.model(self.input_ids[:b], self.positions[:b], meta)
            self.pool = graph.pool()
            self.graphs[b] = graph

    def handles(self, plan: StepPlan) -> bool:
        return (plan.num_seqs <= self.buckets[-1] and plan.num_tokens == plan.num_seqs
                and not any(plan.return_logits))

    def run(self, plan: StepPlan) -> torch.Tensor:
        """Hidden states `[plan.num_seqs, hidden]` of the step's tokens."""
        n = plan.num_seqs
        b = next(x for x in self.buckets if x >= n)
        positions = np.asarray(plan.seq_lens, dtype=np.int64) - 1
        tables = np.zeros((b, self.max_blocks), dtype=np.int32)
        for i, t in enumerate(plan.block_tables):
            tables[i, : len(t)] = t
        slots = np.full(b, -1, dtype=np.int64)
        slots[:n] = tables[np.arange(n), positions // self.block_size] * self.block_size + positions % self.block_size
        seq_lens = np.ones(b, dtype=np.int32)
        seq_lens[:n] = plan.seq_lens
        pos = np.zeros(b, dtype=np.int64)
        pos[:n] = positions
        ids = np.zeros(b, dtype=np.int64)
        ids[:n] = plan.input_ids
        self.input_ids[:b].copy_(torch.from_numpy(ids), non_blocking=True)
        self.positions[:b].copy_(torch.from_numpy(pos), non_blocking=True)
        self.slots[:b].copy_(torch.from_numpy(slots), non_blocking=True)
        self.slots32[:b].copy_(torch.from_numpy(slots.astype(np.int32)), non_blocking=True)
        self.tables[:b].copy_(torch.from_numpy(tables), non_blocking=True)
        self.seq_lens[:b].copy_(torch.from_numpy(seq_lens), non_blocking=True)
        self.graphs[b].replay()
        return self.outputs[b][:n]
