"""One rank: a device, its parallel groups, its shard of the model and its KV cache."""

from __future__ import annotations

import torch

from llm_infer.config import EngineConfig
from llm_infer.runtime.model_runner import ModelRunner, resolve_device
from llm_infer.runtime.models.resolve import resolve_model_dir
from llm_infer.runtime.step_plan import StepOutput, StepPlan


class Worker:
    def __init__(self, config: EngineConfig, rank: int = 0, local_rank: int = 0, progress: bool = True):
        self.config = config
        self.rank = rank
        if config.threads is not None:
            torch.set_num_threads(config.threads)
        self.device = resolve_device(config.device, local_rank)
        self.runner = ModelRunner(config, str(resolve_model_dir(config.model)), self.device, progress=progress)

    def available_blocks(self) -> int:
        return self.runner.available_blocks()

    def init_cache(self, num_blocks: int) -> None:
        self.runner.init_cache(num_blocks)

    def execute(self, plan: StepPlan) -> StepOutput | None:
        return self.runner.execute(plan)
