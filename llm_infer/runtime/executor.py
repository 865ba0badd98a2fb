"""What the engine needs from whatever runs the workers (in-process, local processes, Ray)."""

from __future__ import annotations

from typing import Protocol

from llm_infer.runtime.step_plan import StepOutput, StepPlan


class Executor(Protocol):
    def available_blocks(self) -> int:
        """KV blocks every worker can hold (the minimum over workers)."""

    def init_cache(self, num_blocks: int) -> None: ...

    def execute(self, plan: StepPlan) -> StepOutput:
        """Run one step on all workers; return the sampling rank's output."""

    def shutdown(self) -> None: ...
