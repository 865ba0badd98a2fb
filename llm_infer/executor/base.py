"""What the engine needs from whatever runs the workers (in-process, local processes, Ray).

Every worker capability is a method of the Worker reached through one call,
`collective_rpc(method, *args, reply_rank=...)`; only steps have their own pair,
`submit`/`collect`, because several may be in flight (one per pipeline stage).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Final, Literal

from llm_infer.runtime.step_plan import StepOutput, StepPlan

ALL: Final = "all"  # reply_rank: every rank answers, replies come back as a list in rank order
ReplyRank = int | Literal["all"] | None


def reply_ranks(reply_rank: ReplyRank, world_size: int) -> tuple[int, ...]:
    """The ranks that answer a call: all of them, one, or none (`reply_rank=None`)."""
    if reply_rank is None:
        return ()
    if reply_rank == ALL:
        return tuple(range(world_size))
    if not isinstance(reply_rank, int) or not 0 <= reply_rank < world_size:
        raise ValueError(f"reply_rank must be a rank below {world_size}, ALL or None; got {reply_rank!r}")
    return (reply_rank,)


def pick_replies(replies: dict[int, Any], reply_rank: ReplyRank) -> Any:
    """What `collective_rpc` returns: the list in rank order, the one rank's reply, or None."""
    if reply_rank is None:
        return None
    if reply_rank == ALL:
        return [replies[rank] for rank in sorted(replies)]
    return replies[reply_rank]


class Executor(ABC):
    """Runs the workers of one engine; any worker failure is one `WorkerError` naming the rank."""

    # Steps that may be in flight at once: the number of pipeline stages (1 without pipelining).
    max_inflight: int = 1
    # Whether `restart` can replace the workers (not for a worker in the controller's own process).
    can_restart: bool = False
    # Whether the engine may submit a step before collecting the last (overlapped scheduling: the
    # workers fill placeholder inputs from the previous step's tokens, see engine.py).
    overlaps: bool = False

    @abstractmethod
    def available_blocks(self) -> int:
        """KV blocks every worker can hold (the minimum over workers)."""

    @abstractmethod
    def collective_rpc(self, method: str, *args: Any, reply_rank: ReplyRank = ALL,
                       timeout_s: float | None = None) -> Any:
        """Call `Worker.<method>(*args)` on every rank (call with no step in flight); return the
        replies as a list in rank order (`ALL`), one rank's reply (an int), or nothing (None)."""

    @abstractmethod
    def submit(self, plan: StepPlan) -> None:
        """Start one step on all workers without waiting for it."""

    @abstractmethod
    def collect(self) -> StepOutput:
        """The sampling rank's output for the oldest submitted step (blocks until it is there)."""

    @abstractmethod
    def shutdown(self) -> None:
        """Stop the workers and release what they hold; calling it again does nothing."""

    def restart(self) -> None:
        """Replace every worker with a fresh one started the same way, with its weights loaded and
        the last `init_cache` block count allocated. Raises WorkerError if the new set fails too,
        UserError for a mistake a new worker finds (a checkpoint corrupted meanwhile)."""
        raise NotImplementedError(f"{type(self).__name__} cannot restart its workers")

    def init_cache(self, num_blocks: int) -> None:
        """Allocate `num_blocks` KV blocks on every rank (returns once all have)."""
        self.collective_rpc("init_cache", num_blocks)

    def set_profiling(self, enabled: bool) -> None:
        """Time steps and collectives on the workers (off by default: no timing work per step)."""
        self.collective_rpc("set_profiling", enabled)

    def worker_stats(self) -> dict[int, dict[str, float]]:
        """Per-rank busy and communication seconds since the last call (zeros unless profiling)."""
        return dict(enumerate(self.collective_rpc("stats")))
