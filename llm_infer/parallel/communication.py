"""Collectives over the tensor-parallel group (no-ops in a one-rank group) and the
point-to-point transfers between pipeline stages. When profiling is on
(`CommTimer.enabled`, set by the Worker) each one adds its time to `CommTimer`, so
benchmarks can report the share of step time in communication; when it is off
they do no timing work."""

from __future__ import annotations

import functools
import time
from typing import Callable, TypeVar

import torch
import torch.distributed as dist

from llm_infer.parallel.state import get_parallel_state

F = TypeVar("F", bound=Callable)


class CommTimer:
    """Seconds this process spent in collectives since the last `take()` (profiling only)."""

    enabled = False
    seconds = 0.0

    @classmethod
    def take(cls) -> float:
        spent, cls.seconds = cls.seconds, 0.0
        return spent


def _timed(fn: F) -> F:
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if not CommTimer.enabled:
            return fn(*args, **kwargs)
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            CommTimer.seconds += time.perf_counter() - start

    return wrapper  # type: ignore[return-value]


@_timed
def tp_all_reduce(x: torch.Tensor) -> torch.Tensor:
    state = get_parallel_state()
    if state.tp_size == 1:
        return x
    dist.all_reduce(x, group=state.tp_group)
    return x


@_timed
def tp_gather_to_first(x: torch.Tensor, dim: int = -1) -> torch.Tensor | None:
    """Concatenate every rank's `x` along `dim` on TP rank 0; other ranks get None."""
    state = get_parallel_state()
    if state.tp_size == 1:
        return x
    x = x.contiguous()
    parts = [torch.empty_like(x) for _ in range(state.tp_size)] if state.tp_rank == 0 else None
    dist.gather(x, parts, dst=dist.get_global_rank(state.tp_group, 0), group=state.tp_group)
    return torch.cat(parts, dim=dim) if parts is not None else None


@_timed
def pp_send(tensors: list[torch.Tensor], dst: int) -> list:
    """Start sending to global rank `dst`; returns handles to wait on before reusing the tensors."""
    return [dist.isend(t.contiguous(), dst) for t in tensors]


@_timed
def pp_recv(shapes: list[tuple[int, ...]], dtype: torch.dtype, device: torch.device, src: int) -> list[torch.Tensor]:
    out = [torch.empty(s, dtype=dtype, device=device) for s in shapes]
    for t in out:
        dist.recv(t, src)
    return out

