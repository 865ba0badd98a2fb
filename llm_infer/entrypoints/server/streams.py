"""Server-sent-event bodies (chat and completion chunks; Responses API events) and the finished
outputs of one HTTP request, counted in the metrics as they come."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import aclosing

from llm_infer.entrypoints.server.async_engine import EngineDeadError
from llm_infer.entrypoints.server.errors import error_body
from llm_infer.entrypoints.server.metrics import ServerMetrics
from llm_infer.entrypoints.server.protocol import GenerationRequest
from llm_infer.entrypoints.server.responses import Responder, sse
from llm_infer.entrypoints.server.responses_output import ResponseBuilder, event_sse
from llm_infer.runtime.outputs import RequestOutput


class Finals:
    """The finished output of each prompt of one HTTP request, counted in the metrics as it comes."""

    def __init__(self, prompts: int, metrics: ServerMetrics):
        self.prompts, self.metrics = prompts, metrics
        self.done: dict[int, RequestOutput] = {}

    def add(self, p: int, out: RequestOutput) -> None:
        if out.finished:
            self.done[p] = out
            self.metrics.observe_finished(out)

    def abort(self) -> None:
        """The client went away: the prompts still running count as aborted."""
        self.metrics.observe_aborted(self.prompts - len(self.done))

    @property
    def complete(self) -> bool:
        return len(self.done) == self.prompts

    def ordered(self) -> list[RequestOutput]:
        return [self.done[p] for p in range(self.prompts)]

    async def collect(self, first: tuple[int, RequestOutput],
                      outputs: AsyncIterator[tuple[int, RequestOutput]]) -> None:
        self.add(*first)
        async for p, out in outputs:
            self.add(p, out)


async def stream(first: tuple[int, RequestOutput], outputs: AsyncIterator[tuple[int, RequestOutput]],
                 req: GenerationRequest, responder: Responder, finals: Finals) -> AsyncIterator[str]:
    """The SSE body: chunks as tokens come, a usage chunk if asked, then [DONE]."""
    async with aclosing(outputs):  # closing the stream early (client gone) aborts the requests
        try:
            if req.chat:
                for chunk in responder.role_chunks(len(req.prompts)):
                    yield sse(chunk)
            item: tuple[int, RequestOutput] | None = first
            while item is not None:
                finals.add(*item)
                for chunk in responder.chunks(*item):
                    yield sse(chunk)
                item = await anext(outputs, None)
        except EngineDeadError as e:
            yield sse(error_body(str(e), "server_error"))
        finally:
            if not finals.complete:
                finals.abort()
    if finals.complete and req.include_usage:
        yield sse(responder.usage_chunk(finals.ordered()))
    yield sse("[DONE]")


async def stream_response(first: tuple[int, RequestOutput], outputs: AsyncIterator[tuple[int, RequestOutput]],
                          builder: ResponseBuilder, finals: Finals) -> AsyncIterator[str]:
    """The Responses API's SSE body: `event:`/`data:` pairs in the documented order (see
    responses_output.py), ending with response.completed or response.incomplete."""
    async with aclosing(outputs):  # closing the stream early (client gone) aborts the request
        try:
            for event in builder.start():
                yield event_sse(event)
            item: tuple[int, RequestOutput] | None = first
            while item is not None:
                finals.add(*item)
                for event in builder.update(item[1]):
                    yield event_sse(event)
                item = await anext(outputs, None)
        except EngineDeadError as e:
            yield event_sse(builder.error(str(e)))
        finally:
            if not finals.complete:
                finals.abort()
