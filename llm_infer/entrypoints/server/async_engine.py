"""The engine thread: one thread owns the (not thread-safe) LLMEngine; asyncio code talks to it.

Requests and aborts go in through a thread-safe command queue; each step's outputs
come back to the waiting coroutines through their event loop (`call_soon_threadsafe`).
A worker failure within the restart budget is survived inside the engine's step (the
workers are replaced, requests resume: streams pause); while that runs the engine reports
itself unavailable (`unavailable`, /health 503). If a step fails for good (the budget is
spent) every open request gets the error, the engine is marked dead and the thread stops;
nothing a client sends can do that.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import queue
import threading
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from llm_infer.errors import UserError
from llm_infer.runtime.lora.registry import LoRAInfo
from llm_infer.runtime.outputs import EngineSnapshot, RequestOutput
from llm_infer.runtime.pooling import PoolingParams
from llm_infer.runtime.sampling_params import SamplingParams
from llm_infer.runtime.structured_output.params import ReasoningStart

log = logging.getLogger("llm_infer.server")


class EngineDeadError(RuntimeError):
    """The engine thread stopped (a step failed, or the server is shutting down)."""


@dataclass
class _Sink:
    """Where one request's outputs go: an asyncio queue on the caller's loop."""

    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue

    def put(self, item: RequestOutput | BaseException) -> None:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)
        except RuntimeError:  # the caller's loop is closed: nobody is listening any more
            pass


@dataclass
class _Add:
    request_id: str
    prompt: str | list[int]
    params: SamplingParams | None
    added: concurrent.futures.Future
    sink: _Sink
    reasoning: ReasoningStart | None = None
    pooling: PoolingParams | None = None


@dataclass
class _Abort:
    request_id: str


@dataclass
class _Call:
    """Run `fn(engine)` on the engine thread between steps; `done` gets its result or exception."""

    fn: Callable[[Any], Any]
    done: concurrent.futures.Future


class AsyncEngine:
    def __init__(self, llm: Any):
        self.llm = llm
        self.speculative = llm.config.speculative.method is not None
        self.max_model_len: int = llm.engine.max_model_len
        self.snapshot = EngineSnapshot()
        self.error: BaseException | None = None
        # The loaded LoRA adapters as of the last change, for other threads (the registry is the engine thread's).
        self.loras: tuple[LoRAInfo, ...] = tuple(llm.engine.list_loras())
        self._commands: queue.SimpleQueue[_Add | _Abort | _Call] = queue.SimpleQueue()
        self._wake = threading.Event()
        self._lock = threading.Lock()  # orders "enqueue if alive" against "mark dead, drain"
        self._stopping = False
        self._sinks: dict[str, _Sink] = {}  # engine thread only
        self._thread = threading.Thread(target=self._loop, name="llm-engine", daemon=True)
        self._thread.start()

    @property
    def unavailable(self) -> str | None:
        """Why the engine cannot serve now (it stopped, or is restarting its workers); None when it can."""
        if self.error is not None or not self._thread.is_alive():
            return f"the engine stopped: {self.error}"
        return self.llm.engine.recovery.status

    @property
    def healthy(self) -> bool:
        return self.unavailable is None

    async def generate(self, prompts: list[str | list[int]], params: SamplingParams | None,
                       request_id: str | None = None, reasoning: ReasoningStart | None = None,
                       pooling: PoolingParams | None = None) -> AsyncIterator[tuple[int, RequestOutput]]:
        """Yield (prompt index, update) for one engine request per prompt until all finish (ids:
        `request_id`, or `request_id-i` for several prompts; `reasoning`: how a chat reply begins,
        `pooling` (params None): embedding requests, see `LLMEngine.add_request`). A prompt the
        engine rejects raises UserError before anything is yielded; stopping early (or being
        cancelled) aborts them all."""
        base = request_id or uuid.uuid4().hex
        ids = [base] if len(prompts) == 1 else [f"{base}-{i}" for i in range(len(prompts))]
        index = {rid: i for i, rid in enumerate(ids)}
        sink = _Sink(asyncio.get_running_loop(), asyncio.Queue())  # shared: updates arrive in step order
        adds = [_Add(rid, prompt, params, concurrent.futures.Future(), sink, reasoning, pooling)
                for rid, prompt in zip(ids, prompts)]
        unfinished = set(ids)  # aborting one the engine never held (or refused) is a no-op
        try:
            for add in adds:
                self._send(add)
            accepted = await asyncio.gather(*(asyncio.wrap_future(a.added) for a in adds), return_exceptions=True)
            for i, result in enumerate(accepted):
                if isinstance(result, UserError) and len(prompts) > 1:
                    raise UserError(f"prompt {i}: {result}")
                if isinstance(result, BaseException):
                    raise result
            while unfinished:
                item = await sink.queue.get()
                if isinstance(item, BaseException):
                    raise item
                if item.finished:
                    unfinished.discard(item.request_id)
                yield index[item.request_id], item
        finally:
            for rid in unfinished:
                self.abort(rid)

    def abort(self, request_id: str) -> None:
        """Stop a request and free its KV blocks (a no-op once it finished or the engine stopped)."""
        try:
            self._send(_Abort(request_id))
        except EngineDeadError:
            pass

    async def add_lora(self, name: str, path: str) -> LoRAInfo:
        """Load a LoRA adapter between two steps (`LLMEngine.add_lora`: UserError for a taken name or
        an adapter that does not fit); requests sent after this returns may name it."""
        return await self._call(lambda engine: engine.add_lora(name, path))

    async def remove_lora(self, name: str) -> LoRAInfo:
        """Forget a LoRA adapter between two steps; requests already added finish with it (UserError:
        unknown name)."""
        return await self._call(lambda engine: engine.remove_lora(name))

    async def _call(self, fn: Callable[[Any], Any]) -> Any:
        call = _Call(fn, concurrent.futures.Future())
        self._send(call)
        return await asyncio.wrap_future(call.done)

    def shutdown(self, timeout: float = 30.0) -> None:
        self._stopping = True
        self._wake.set()
        self._thread.join(timeout)

    def _send(self, command: _Add | _Abort | _Call) -> None:
        with self._lock:
            if self.error is not None:
                raise EngineDeadError(f"the engine stopped: {self.error}")
            self._commands.put(command)
        self._wake.set()

    # -- engine thread -----------------------------------------------------------------

    def _loop(self) -> None:
        engine = self.llm.engine
        while not self._stopping:
            self._wake.clear()
            self._drain(engine)
            self._publish(engine)
            if not engine.has_unfinished():
                self._wake.wait()
                continue
            try:
                outputs = engine.step()
            except BaseException as e:  # a worker died, or a bug: the engine state is unknown now
                log.exception("engine step failed; the server stops generating")
                self._die(e)
                return
            for out in outputs:
                sink = self._sinks.get(out.request_id)
                if sink is not None:
                    sink.put(out)
                    if out.finished:
                        del self._sinks[out.request_id]
        self._die(EngineDeadError("the server is shutting down"))

    def _drain(self, engine: Any) -> None:
        while True:
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                return
            if isinstance(command, _Abort):
                engine.abort(command.request_id)
                self._sinks.pop(command.request_id, None)
            elif isinstance(command, _Call):
                if command.done.set_running_or_notify_cancel():
                    try:
                        command.done.set_result(command.fn(engine))
                    except Exception as e:  # noqa: BLE001 (the caller's mistake, reported to the caller)
                        command.done.set_exception(e)
                    self.loras = tuple(engine.list_loras())
            elif command.added.set_running_or_notify_cancel():
                try:
                    engine.add_request(command.prompt, command.params, request_id=command.request_id,
                                       reasoning=command.reasoning, pooling=command.pooling)
                except Exception as e:  # noqa: BLE001 (UserError, or anything else: still only this request's)
                    command.added.set_exception(e)
                else:
                    self._sinks[command.request_id] = command.sink
                    command.added.set_result(command.request_id)

    def _publish(self, engine: Any) -> None:
        self.snapshot = engine.snapshot()

    def _die(self, error: BaseException) -> None:
        with self._lock:
            self.error = error
            pending = []
            while True:
                try:
                    pending.append(self._commands.get_nowait())
                except queue.Empty:
                    break
        message = f"the engine stopped: {error}"
        for command in pending:
            future = command.added if isinstance(command, _Add) else command.done if isinstance(command, _Call) else None
            if future is not None and future.set_running_or_notify_cancel():
                future.set_exception(EngineDeadError(message))
        for sink in self._sinks.values():
            sink.put(EngineDeadError(message))
        self._sinks.clear()
