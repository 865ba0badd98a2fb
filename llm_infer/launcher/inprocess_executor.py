"""World size 1: the single worker lives in the controller's own process."""

from __future__ import annotations

from collections import deque

from llm_infer.config import EngineConfig
from llm_infer.runtime.step_plan import StepOutput, StepPlan
from llm_infer.runtime.worker import Worker


class InProcessExecutor:
    max_inflight = 1

    def __init__(self, config: EngineConfig, progress: bool = True):
        self.worker = Worker(config, rank=0, progress=progress)
        self._done: deque[StepOutput] = deque()

    def available_blocks(self) -> int:
        return self.worker.available_blocks()

    def init_cache(self, num_blocks: int) -> None:
        self.worker.init_cache(num_blocks)

    def submit(self, plan: StepPlan) -> None:
        self._done.append(self.worker.execute(plan))

    def collect(self) -> StepOutput:
        return self._done.popleft()

    def worker_stats(self) -> dict[int, dict[str, float]]:
        return {0: self.worker.stats()}

    def shutdown(self) -> None:
        self.worker = None  # the model and KV cache go with it
