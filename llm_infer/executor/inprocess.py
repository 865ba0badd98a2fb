"""World size 1: the single worker lives in the controller's own process."""

from __future__ import annotations

from collections import deque
from typing import Any

from llm_infer.config import EngineConfig
from llm_infer.executor.base import ALL, Executor, ReplyRank, pick_replies, reply_ranks
from llm_infer.runtime.step_plan import StepOutput, StepPlan
from llm_infer.runtime.worker import Worker


class InProcessExecutor(Executor):
    """Steps and RPCs are plain method calls on the Worker (nothing is pickled)."""

    max_inflight = 1

    def __init__(self, config: EngineConfig, progress: bool = True):
        self.worker: Worker | None = Worker(config, rank=0, progress=progress)
        self._done: deque[StepOutput] = deque()
        setting = config.scheduler.async_scheduling
        self.overlaps = setting == "on" or (setting == "auto" and self.worker.device.type == "cuda")

    def available_blocks(self) -> int:
        return self.worker.available_blocks()

    def collective_rpc(self, method: str, *args: Any, reply_rank: ReplyRank = ALL,
                       timeout_s: float | None = None) -> Any:
        reply_ranks(reply_rank, 1)  # the same rules as with more ranks
        return pick_replies({0: getattr(self.worker, method)(*args)}, reply_rank)

    def submit(self, plan: StepPlan) -> None:
        self._done.append(self.worker.execute(plan))

    def collect(self) -> StepOutput:
        return self._done.popleft().resolve()

    def shutdown(self) -> None:
        self.worker = None  # the model and KV cache go with it
