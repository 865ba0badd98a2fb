"""World size 1: the single worker lives in the controller's own process."""

from __future__ import annotations

from llm_infer.config import EngineConfig
from llm_infer.runtime.step_plan import StepOutput, StepPlan
from llm_infer.runtime.worker import Worker


class InProcessExecutor:
    def __init__(self, config: EngineConfig, progress: bool = True):
        self.worker = Worker(config, rank=0, progress=progress)

    def available_blocks(self) -> int:
        return self.worker.available_blocks()

    def init_cache(self, num_blocks: int) -> None:
        self.worker.init_cache(num_blocks)

    def execute(self, plan: StepPlan) -> StepOutput:
        return self.worker.execute(plan)

    def shutdown(self) -> None:
        pass
