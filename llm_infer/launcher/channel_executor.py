"""Executor logic shared by the launchers that run workers in other processes.

Subclasses start the worker processes (locally or as Ray actors) and know how
to describe and kill them; this class runs the handshake, the steps and the
shutdown over the `ControllerChannel`. Any worker failure shuts the whole group
down and surfaces as one `WorkerError` naming the rank.
"""

from __future__ import annotations

import dataclasses
from collections import deque

from llm_infer.config import EngineConfig
from llm_infer.errors import UserError, WorkerError
from llm_infer.launcher.channel import ControllerChannel
from llm_infer.runtime.step_plan import StepOutput, StepPlan


class ChannelExecutor:
    def __init__(self, config: EngineConfig, channel: ControllerChannel):
        self.config = config
        self.channel = channel
        self.max_inflight = config.parallel.pipeline
        self.sampler_rank = (config.parallel.pipeline - 1) * config.parallel.tensor
        self.worker_memory_mb: dict[int, dict[str, float]] = {}
        self._blocks = 0
        self._pending: deque[int] = deque()
        self._closed = False
        channel.describe_death = self.describe_death

    # Subclass hooks ------------------------------------------------------------------
    def describe_death(self, rank: int) -> str:
        return "its connection closed"

    def kill_workers(self) -> None:
        raise NotImplementedError

    # Handshake -------------------------------------------------------------------------
    def start(self, worker_config: EngineConfig, connect_timeout_s: float) -> None:
        try:
            self.channel.accept_all(connect_timeout_s)
            first = self.channel.hello[0]
            self.channel.send_all(("init", {"config": dataclasses.asdict(worker_config),
                                            "master_addr": first["ip"], "master_port": first["port"]}))
            # Loading (and a first build of the CPU kernels) can take a while.
            ready = self.channel.gather(timeout_s=max(600.0, self.config.parallel.timeout_s))
            self._blocks = min(msg[1] for msg in ready.values())
            self.worker_memory_mb = {rank: msg[2] for rank, msg in ready.items()}
        except BaseException:
            self._abort()
            raise

    def available_blocks(self) -> int:
        return self._blocks

    def init_cache(self, num_blocks: int) -> None:
        self._guard(lambda: self.channel.send_all(("cache", num_blocks)))
        replies = self._guard(lambda: self.channel.gather())
        self.worker_memory_mb = {rank: msg[1] for rank, msg in replies.items()}

    # Steps ------------------------------------------------------------------------------
    def submit(self, plan: StepPlan) -> None:
        self._guard(lambda: self.channel.send_all(("step", plan)))
        self._pending.append(plan.step_id)

    def collect(self) -> StepOutput:
        step_id = self._pending.popleft()
        kind, out = self._guard(lambda: self.channel.recv_from(self.sampler_rank))
        if kind != "result" or out.step_id != step_id:
            self._abort()
            raise WorkerError(f"worker rank {self.sampler_rank} answered step {out.step_id}, expected {step_id}")
        return out

    def worker_stats(self) -> dict[int, dict[str, float]]:
        """Per-rank busy and communication seconds since the last call (call with nothing in flight)."""
        self._guard(lambda: self.channel.send_all(("stats", None)))
        return {rank: msg[1] for rank, msg in self._guard(lambda: self.channel.gather()).items()}

    def _guard(self, action):
        if self._closed:
            raise WorkerError("the workers were shut down after an earlier failure")
        try:
            return action()
        except (WorkerError, UserError):
            self._abort()
            raise

    # Shutdown ---------------------------------------------------------------------------
    def _abort(self) -> None:
        self._closed = True
        self.kill_workers()
        self.channel.close()

    def shutdown(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self.channel.send_all(("shutdown", None))
        except WorkerError:
            pass
        self.stop_workers()
        self.channel.close()

    def stop_workers(self) -> None:
        """Wait briefly for a clean exit, then kill."""
        self.kill_workers()
