"""Tensors of one forward pass, derived from a plan's flat token lists, and which of its
rows need logits."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from llm_infer.kernels.attention_metadata import AttentionMetadata, query_start_loc
from llm_infer.runtime.step_plan import StepPlan


class TokenBatch(Protocol):
    """What a forward pass needs from a plan (StepPlan, or a draft model's own step)."""

    input_ids: list[int]
    query_lens: list[int]
    seq_lens: list[int]
    block_tables: list[list[int]]


@dataclass(frozen=True)
class Placeholders:
    """Inputs an overlapped step takes from the tokens the previous step sampled on the device:
    input token `token_index[j]` is `sampled[src[j]]` (`sampled`: int64, on the device)."""

    token_index: list[int]
    src: list[int]
    sampled: torch.Tensor


def build_inputs(batch: TokenBatch, block_size: int, backend: Any, device: torch.device,
                 fill: Placeholders | None = None) -> tuple[torch.Tensor, torch.Tensor, AttentionMetadata]:
    """(input ids, positions, attention metadata), the ids at `fill.token_index` taken from the
    device. Index arithmetic runs in numpy: a decode step is a handful of tiny arrays, where each
    torch op would cost more than the arithmetic."""
    q_lens = np.asarray(batch.query_lens, dtype=np.int64)
    num_seqs, num_tokens = len(batch.query_lens), int(q_lens.sum())
    seq_of_token = np.repeat(np.arange(num_seqs), q_lens)
    starts = np.cumsum(q_lens)
    first_token = starts - q_lens
    context = np.asarray(batch.seq_lens, dtype=np.int64) - q_lens
    positions = context[seq_of_token] + np.arange(num_tokens) - first_token[seq_of_token]
    width = max(len(t) for t in batch.block_tables)
    tables = np.zeros((num_seqs, width), dtype=np.int64)
    for i, t in enumerate(batch.block_tables):
        tables[i, : len(t)] = t
    slots = tables[seq_of_token, positions // block_size] * block_size + positions % block_size
    meta = AttentionMetadata(list(batch.query_lens), list(batch.seq_lens), [0, *starts.tolist()],
                             torch.from_numpy(slots).to(device), torch.from_numpy(tables).to(device), block_size,
                             backend)
    backend.prepare(meta)
    input_ids = torch.tensor(batch.input_ids, dtype=torch.int64, device=device)
    if fill is not None:
        index = torch.tensor(fill.token_index, dtype=torch.int64, device=device)
        input_ids.index_copy_(0, index, fill.sampled[torch.tensor(fill.src, dtype=torch.int64, device=device)])
    return input_ids, torch.from_numpy(positions).to(device), meta


def logit_rows(plan: StepPlan) -> tuple[list[int] | None, list[tuple[int, int]]]:
    """Hidden rows needing logits (None: all) and each request's span within them: every row
    for `return_logits`; else the rows predicting prompt tokens (prompt logprobs) first, then
    the last input row and the speculative proposals' rows of a request that samples."""
    rows: list[int] = []
    spans: list[tuple[int, int]] = []
    starts = query_start_loc(plan.query_lens)
    for i, (sample, want_all) in enumerate(zip(plan.sample, plan.return_logits)):
        first = len(rows)
        if want_all:
            rows.extend(range(starts[i], starts[i + 1]))
        else:
            if plan.prompt_targets is not None:  # prompt logprobs: the rows predicting prompt tokens
                rows.extend(range(starts[i], starts[i] + len(plan.prompt_targets[i])))
            if sample:
                rows.extend(range(starts[i + 1] - 1 - plan.spec_len(i), starts[i + 1]))
        spans.append((first, len(rows)))
    return (None if len(rows) == plan.num_tokens else rows), spans


def spec_proposals(plan: StepPlan) -> list[list[int]]:
    """Each request's speculative proposals, as they end its input ([] for none)."""
    if plan.spec_lens is None:
        return [[] for _ in plan.seq_ids]
    ends = query_start_loc(plan.query_lens)[1:]
    return [plan.input_ids[end - k : end] for end, k in zip(ends, plan.spec_lens)]
