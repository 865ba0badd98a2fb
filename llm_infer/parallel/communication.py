"""Collectives over the tensor-parallel group; each is a no-op in a one-rank group."""

from __future__ import annotations

import torch
import torch.distributed as dist

from llm_infer.parallel.state import get_parallel_state


def tp_all_reduce(x: torch.Tensor) -> torch.Tensor:
    state = get_parallel_state()
    if state.tp_size == 1:
        return x
    dist.all_reduce(x, group=state.tp_group)
    return x


def tp_gather_to_first(x: torch.Tensor, dim: int = -1) -> torch.Tensor | None:
    """Concatenate every rank's `x` along `dim` on TP rank 0; other ranks get None."""
    state = get_parallel_state()
    if state.tp_size == 1:
        return x
    x = x.contiguous()
    parts = [torch.empty_like(x) for _ in range(state.tp_size)] if state.tp_rank == 0 else None
    dst = dist.get_global_rank(state.tp_group, 0)
    dist.gather(x, parts, dst=dst, group=state.tp_group)
    return torch.cat(parts, dim=dim) if parts is not None else None
