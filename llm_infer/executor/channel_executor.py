"""The RPC and the pipelined steps for workers in other processes, over the `ControllerChannel`.

Subclasses start the workers (local processes or Ray actors) and know how to
describe, watch and kill them; this class does the rest: the start-up calls
(`init_worker` on each rank's host, which builds the Worker), `collective_rpc`,
and steps as calls to `execute` answered by the sampling rank, up to one per
pipeline stage in flight, collected in order. Any worker failure shuts the whole
group down and surfaces as one `WorkerError` naming the rank; `restart` then starts a
fresh group the same way (the engine decides whether to, see `runtime/recovery.py`).
"""

from __future__ import annotations

import dataclasses
from collections import deque
from typing import Any, Callable, TypeVar

from llm_infer.config import EngineConfig
from llm_infer.errors import UserError, WorkerError
from llm_infer.executor.base import ALL, Executor, ReplyRank, pick_replies, reply_ranks
from llm_infer.executor.channel import ControllerChannel
from llm_infer.runtime.step_plan import StepOutput, StepPlan

T = TypeVar("T")


class ChannelExecutor(Executor):
    """Workers reached through a `ControllerChannel` listening on `host`."""

    can_restart = True

    def __init__(self, config: EngineConfig, host: str):
        self.config = config
        self.world_size = config.world_size
        self.host = host
        self.channel = self._open_channel()
        self.max_inflight = config.parallel.pipeline
        self.sampler_rank = (config.parallel.pipeline - 1) * config.parallel.tensor
        self._step_reply = (self.sampler_rank,)
        self._blocks = 0
        self._pending: deque[int] = deque()  # step ids in flight, oldest first
        self._closed = False
        self._failure = ""  # why the workers were stopped, when a failure stopped them
        self._cache_blocks: int | None = None  # what init_cache allocated (a restart allocates it again)

    def _open_channel(self) -> ControllerChannel:
        return ControllerChannel(self.host, self.world_size, self.config.parallel.timeout_s,
                                 describe_death=self.describe_death, check_alive=self.check_alive)

    # Subclass hooks ------------------------------------------------------------------
    def describe_death(self, rank: int) -> str:
        """How `rank` died, in words (asked once its connection has closed)."""
        return "its connection closed"

    def check_alive(self) -> None:
        """Raise WorkerError if a started worker has already exited."""

    def launch(self) -> None:
        """Start one set of workers that connect to `self.channel`, then `start` them."""
        raise NotImplementedError

    def kill_workers(self) -> None:
        raise NotImplementedError

    def stop_workers(self) -> None:
        """After `shutdown` was sent: wait briefly for a clean exit, then kill."""
        self.kill_workers()

    def release(self) -> None:
        """At shutdown, after the workers are gone: release what the launcher itself holds."""

    # Start-up ------------------------------------------------------------------------
    def start(self, worker_config: EngineConfig, connect_timeout_s: float) -> None:
        """Wait for every worker to connect, then build the Workers (rendezvous at rank 0)."""
        try:
            self.channel.accept_all(connect_timeout_s)
            first = self.channel.hello[0]
            # Loading (and a first build of the CPU kernels) can take a while.
            blocks = self.collective_rpc("init_worker", dataclasses.asdict(worker_config), first["ip"],
                                         first["port"], timeout_s=max(600.0, self.config.parallel.timeout_s))
            self._blocks = min(blocks)
        except BaseException as e:
            self._abort(str(e))
            raise

    def available_blocks(self) -> int:
        return self._blocks

    def init_cache(self, num_blocks: int) -> None:
        super().init_cache(num_blocks)
        self._cache_blocks = num_blocks

    def restart(self) -> None:
        if not self._closed:
            self._abort()
        self._pending.clear()
        self.channel = self._open_channel()
        self._closed, self._failure = False, ""
        self.launch()  # `start` stops the new set again if it fails
        if self._cache_blocks is not None:
            self.init_cache(self._cache_blocks)

    # Calls ---------------------------------------------------------------------------
    def collective_rpc(self, method: str, *args: Any, reply_rank: ReplyRank = ALL,
                       timeout_s: float | None = None) -> Any:
        if self._pending:
            raise RuntimeError(f"collective_rpc({method!r}) with {len(self._pending)} steps in flight: "
                               "collect them first")
        ranks = reply_ranks(reply_rank, self.world_size)
        self._guard(lambda: self.channel.send_call(method, args, ranks))
        if not ranks:
            return None
        return pick_replies(self._guard(lambda: self.channel.gather(ranks, timeout_s)), reply_rank)

    def submit(self, plan: StepPlan) -> None:
        self._guard(lambda: self.channel.send_call("execute", (plan,), self._step_reply))
        self._pending.append(plan.step_id)

    def collect(self) -> StepOutput:
        step_id = self._pending.popleft()
        out = self._guard(lambda: self.channel.recv_from(self.sampler_rank))
        if out.step_id != step_id:
            error = f"worker rank {self.sampler_rank} answered step {out.step_id}, expected {step_id}"
            self._abort(error)
            raise WorkerError(error)
        return out

    def _guard(self, action: Callable[[], T]) -> T:
        if self._closed:
            raise WorkerError(f"the workers were shut down after an earlier failure ({self._failure})")
        try:
            return action()
        except (WorkerError, UserError) as e:
            self._abort(str(e))
            raise

    # Shutdown ------------------------------------------------------------------------
    def _abort(self, reason: str = "") -> None:
        self._closed, self._failure = True, reason
        self.kill_workers()
        self.channel.close()

    def shutdown(self) -> None:
        if not self._closed:
            self._closed = True
            try:
                self.channel.send_call("shutdown", (), ())
            except WorkerError:
                pass
            self.stop_workers()
            self.channel.close()
        self.release()
