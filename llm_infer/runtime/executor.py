"""What the engine needs from whatever runs the workers (in-process, local processes, Ray)."""

from __future__ import annotations

from typing import Protocol

from llm_infer.runtime.step_plan import StepOutput, StepPlan


class Executor(Protocol):
    # Steps that may be in flight at once: the number of pipeline stages (1 without pipelining).
    max_inflight: int

    def available_blocks(self) -> int:
        """KV blocks every worker can hold (the minimum over workers)."""

    def init_cache(self, num_blocks: int) -> None: ...

    def submit(self, plan: StepPlan) -> None:
        """Start one step on all workers without waiting for it."""

    def collect(self) -> StepOutput:
        """The sampling rank's output for the oldest submitted step (blocks until it is there)."""

    def worker_stats(self) -> dict[int, dict[str, float]]:
        """Per-rank busy and communication seconds since the last call (nothing in flight)."""

    def shutdown(self) -> None: ...
