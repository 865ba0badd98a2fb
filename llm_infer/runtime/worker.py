"""One rank: a device, its parallel groups, its shard of the model and its KV cache.

Under pipeline parallelism a stage receives the hidden states and residual of
the plan's tokens from the previous stage, runs its layers, and sends the
result on (asynchronously, so it can start the next micro-batch at once).
"""

from __future__ import annotations

import time

import torch

from llm_infer.config import EngineConfig
from llm_infer.parallel.communication import CommTimer, pp_recv, pp_send
from llm_infer.parallel.groups import init_parallel_groups
from llm_infer.runtime.model_runner import ModelRunner, resolve_device
from llm_infer.runtime.models.decoder import IntermediateTensors
from llm_infer.runtime.models.resolve import resolve_model_dir
from llm_infer.runtime.step_plan import StepOutput, StepPlan


class Worker:
    def __init__(self, config: EngineConfig, rank: int = 0, local_rank: int = 0, master_addr: str = "",
                 master_port: int = 0, progress: bool = True):
        self.config = config
        self.rank = rank
        if config.threads is not None:
            torch.set_num_threads(config.threads)
        self.device = resolve_device(config.device, local_rank)
        p = config.parallel
        self.parallel = init_parallel_groups(p.tensor, p.pipeline, rank, p.backend, master_addr, master_port,
                                             p.timeout_s, self.device)
        self.runner = ModelRunner(config, str(resolve_model_dir(config.model)), self.device, progress=progress)
        self._sending: list = []  # in-flight sends to the next stage (and the tensors they read)
        self.busy_s = 0.0  # time spent computing steps, excluding waits for the previous stage
        self.comm_s = 0.0  # time in collectives and transfers (including those waits)

    def available_blocks(self) -> int:
        return self.runner.available_blocks()

    def init_cache(self, num_blocks: int) -> None:
        self.runner.init_cache(num_blocks)

    def execute(self, plan: StepPlan) -> StepOutput | None:
        """Run this rank's part of one step; the sampling rank returns the output, others None."""
        state = self.parallel
        intermediate = None
        CommTimer.take()
        if not state.is_first_stage:
            hidden_size = self.runner.model_config.hidden_size
            shape = (plan.num_tokens, hidden_size)
            hidden, residual = pp_recv([shape, shape], self.runner.dtype, self.device,
                                       state.stage_rank(state.pp_rank - 1))
            intermediate = IntermediateTensors(hidden, residual)
        waited = CommTimer.take()
        start = time.perf_counter()
        out = self.runner.execute(plan, intermediate)
        if isinstance(out, IntermediateTensors):
            for work in self._sending[:-1]:
                work.wait()
            tensors = [out.hidden.contiguous(), out.residual.contiguous()]
            self._sending = pp_send(tensors, state.stage_rank(state.pp_rank + 1)) + [tensors]
            out = None
        elapsed = time.perf_counter() - start
        comm = CommTimer.take()
        self.busy_s += elapsed
        self.comm_s += comm + waited
        if out is not None:
            out.worker_time_s = elapsed + waited
            out.comm_time_s = comm + waited
        return out

    def stats(self) -> dict[str, float]:
        """Cumulative busy and communication seconds since the last call."""
        result = {"busy_s": self.busy_s, "comm_s": self.comm_s}
        self.busy_s = self.comm_s = 0.0
        return result
