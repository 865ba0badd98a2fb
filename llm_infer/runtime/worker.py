"""One rank: a device, its parallel groups, its shard of the model and its KV cache.

Under pipeline parallelism a stage receives the hidden states and residual of
the plan's tokens from the previous stage, runs its layers, and sends the
result on (asynchronously, so it can start the next micro-batch at once).
Every public method is callable from the controller by name (`collective_rpc`).
"""

from __future__ import annotations

import resource
import time

import torch

from llm_infer.config import EngineConfig
from llm_infer.parallel.communication import CommTimer, pp_recv, pp_send
from llm_infer.parallel.groups import init_parallel_groups
from llm_infer.runtime.model_runner import ModelRunner
from llm_infer.runtime.models.build import resolve_device, resolve_model
from llm_infer.runtime.models.decoder import IntermediateTensors
from llm_infer.runtime.step_plan import StepOutput, StepPlan


def process_memory_mb() -> dict[str, float]:
    """Peak resident set, and the private (anonymous) part resident now: the weights and the
    cache. Checkpoint pages read through mmap count in the first but are reclaimable page cache."""
    result = {"peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    result["anon"] = int(line.split()[1]) / 1024
    except OSError:
        pass
    return result


class Worker:
    """Global rank `rank` of a tensor x pipeline layout; runs its part of each step."""

    def __init__(self, config: EngineConfig, rank: int = 0, local_rank: int = 0, master_addr: str = "",
                 master_port: int = 0, progress: bool = True):
        if config.threads is not None:
            torch.set_num_threads(config.threads)
        self.device = resolve_device(config.device, local_rank)
        p = config.parallel
        self.parallel = init_parallel_groups(p.tensor, p.pipeline, rank, p.backend, master_addr, master_port,
                                             p.timeout_s, self.device, p.expert_parallel)
        resolved = resolve_model(config.model, config.dtype, self.device, config.scheduler.max_model_len,
                                 config.model_task)
        self.runner = ModelRunner(config, resolved, self.device, progress=progress)
        self._sending: list = []  # in-flight sends to the next stage (and the tensors they read)
        self.profiling = False
        self.busy_s = 0.0  # profiling: time computing steps, excluding waits for the previous stage
        self.comm_s = 0.0  # profiling: time in collectives and transfers (including those waits)

    def available_blocks(self) -> int:
        return self.runner.available_blocks()

    def init_cache(self, num_blocks: int) -> None:
        self.runner.init_cache(num_blocks)

    def describe(self) -> dict[str, str]:
        """Device, dtype, kernel set and forward path of this rank."""
        return self.runner.describe()

    def memory_mb(self) -> dict[str, float]:
        """This process's memory (see `process_memory_mb`)."""
        return process_memory_mb()

    def set_profiling(self, enabled: bool) -> None:
        """Time steps and collectives from now on (and attach `timing` to outputs), or stop."""
        self.profiling = self.runner.profiling = CommTimer.enabled = enabled
        self.busy_s = self.comm_s = 0.0
        CommTimer.take()

    def execute(self, plan: StepPlan) -> StepOutput | None:
        """Run this rank's part of one step; the sampling rank returns the output, others None."""
        if self.profiling:
            return self._execute_timed(plan)
        return self._forward(plan, self._receive(plan))

    def _receive(self, plan: StepPlan) -> IntermediateTensors | None:
        """The previous stage's hidden states and residual for this plan (None on the first stage)."""
        state = self.parallel
        if state.is_first_stage:
            return None
        shape = (plan.num_tokens, self.runner.model_config.hidden_size)
        hidden, residual = pp_recv([shape, shape], self.runner.dtype, self.device, state.stage_rank(state.pp_rank - 1))
        return IntermediateTensors(hidden, residual)

    def _forward(self, plan: StepPlan, intermediate: IntermediateTensors | None) -> StepOutput | None:
        out = self.runner.execute(plan, intermediate)
        if not isinstance(out, IntermediateTensors):
            return out
        state = self.parallel
        for work in self._sending[:-1]:
            work.wait()
        tensors = [out.hidden.contiguous(), out.residual.contiguous()]
        self._sending = pp_send(tensors, state.stage_rank(state.pp_rank + 1)) + [tensors]
        return None

    def _execute_timed(self, plan: StepPlan) -> StepOutput | None:
        CommTimer.take()
        intermediate = self._receive(plan)
        waited = CommTimer.take()
        start = time.perf_counter()
        out = self._forward(plan, intermediate)
        elapsed = time.perf_counter() - start
        comm = CommTimer.take()
        self.busy_s += elapsed
        self.comm_s += comm + waited
        if out is not None:  # from receiving the plan to having the tokens, and the part communicating
            out.timing.worker_s, out.timing.comm_s = elapsed + waited, comm + waited
        return out

    def stats(self) -> dict[str, float]:
        """Busy and communication seconds since the last call (zeros unless profiling)."""
        result = {"busy_s": self.busy_s, "comm_s": self.comm_s}
        self.busy_s = self.comm_s = 0.0
        return result
