"""Surviving a worker failure: replace the workers, recompute what they held, keep generating.

When a step fails with a `WorkerError` (a worker died, hung past `parallel.timeout_s`, or
raised), the executor has already stopped every rank. If the restart budget allows
(`parallel.max_restarts` within `parallel.restart_window_s`), the engine

1. forgets its steps in flight (their results are lost),
2. puts every running request back at the front of the queue for recomputation (prompt plus
   the tokens generated so far; its output, text and stop state are kept), drops the prefix
   cache (its blocks lived on the old workers), and marks every request unknown to the
   workers (`Request.forget_worker_state`),
3. has the executor start a fresh set the same way (local processes, or new Ray actors and
   placement groups), load the weights and allocate the same KV cache.

Every draw is seeded by (request seed, output position), so a resumed request produces the
tokens it would have produced without the failure wherever recomputation reproduces the
logits (fp32, or `deterministic: true`). A `UserError` found by a new worker is not retried;
past the budget the failure is final and raised as it came (with the budget named), as is
a failure of an executor that cannot restart (one rank in the controller's own process).

The engine calls `recover` from `step`; this class only decides and accounts. Its `status`
(a reason while a restart runs, else None) may be read from any thread (the server's /health).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from typing import TYPE_CHECKING, Callable

from llm_infer.config import ParallelConfig
from llm_infer.errors import UserError, WorkerError

if TYPE_CHECKING:
    from llm_infer.executor.base import Executor

log = logging.getLogger("llm_infer.engine")


class RestartBudget:
    """At most `max_restarts` restarts within any `window_s` seconds (times from `clock`)."""

    def __init__(self, max_restarts: int, window_s: float, clock: Callable[[], float] = time.monotonic):
        self.max_restarts, self.window_s, self.clock = max_restarts, window_s, clock
        self._times: deque[float] = deque()

    def take(self) -> bool:
        """Spend one restart now if the window has one left; False when it has not."""
        now = self.clock()
        while self._times and now - self._times[0] >= self.window_s:
            self._times.popleft()
        if len(self._times) >= self.max_restarts:
            return False
        self._times.append(now)
        return True

    def describe(self) -> str:
        return f"parallel.max_restarts={self.max_restarts} within {self.window_s:.0f} s"


class WorkerRecovery:
    """Restart accounting for one engine: the budget, counters, and the status while restarting."""

    def __init__(self, parallel: ParallelConfig):
        self.budget = RestartBudget(parallel.max_restarts, parallel.restart_window_s)
        self.restarts = 0  # worker sets started after a failure
        self.recovered_requests = 0  # running requests put back for recomputation
        self.status: str | None = None  # why the engine is unavailable while a restart runs
        self.last_restart_s = 0.0  # how long the last recovery took to have new workers ready
        self._final: WorkerError | None = None  # set once the budget ran out: no restart ever again

    def check(self, error: WorkerError, executor: Executor) -> None:
        """Raise the final error unless the workers may be restarted after `error` (spends budget)."""
        if self._final is not None:  # given up earlier: the executor says so in its own words
            raise error
        if not executor.can_restart:
            raise error
        if not self.budget.take():
            self._final = WorkerError(f"{error} (no restart left: {self.budget.describe()})")
            raise self._final from error

    def restart(self, error: WorkerError, executor: Executor, num_requests: int) -> None:
        """Start a fresh worker set after `error` (the budget was checked); a set that fails while
        starting is replaced again while the budget lasts. Logs the cause and the time taken."""
        log.warning("worker failure: %s; restarting the workers (%s), %d running requests will be recomputed",
                    error, self.budget.describe(), num_requests)
        self.status = f"restarting the workers after a failure: {error}"
        start = time.monotonic()
        try:
            while True:
                self.restarts += 1
                try:
                    executor.restart()
                    break
                except WorkerError as again:
                    log.warning("the new workers failed too: %s", again)
                    self.check(again, executor)
                except UserError as mistake:  # the user's to fix (a corrupt checkpoint): never retried
                    self._final = WorkerError(str(mistake))
                    raise
        finally:
            self.status = None
        self.recovered_requests += num_requests
        self.last_restart_s = time.monotonic() - start
        log.warning("workers restarted in %.2f s; %d requests resume", self.last_restart_s, num_requests)
