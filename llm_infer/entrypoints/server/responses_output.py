"""The Responses API's reply: the `response` object and the stream's events, built from one parser.

A reply's text goes through the model's chat parsers (`ChatOutputStream`) as it streams, and
each `ChatDelta` extends the output items in order: a `reasoning` item (its text as a
`reasoning_text` part), a `message` item (one `output_text` part), one `function_call` item
per completed call. Streamed, every item is announced as OpenAI documents it:

    response.created, response.in_progress,
    response.output_item.added, response.content_part.added,
        response.reasoning_text.delta ... | response.output_text.delta ...,
        response.reasoning_text.done | response.output_text.done, response.content_part.done,
    response.output_item.done,
    (function calls) response.output_item.added, response.function_call_arguments.delta,
        response.function_call_arguments.done, response.output_item.done,
    response.completed | response.incomplete (cut by max_output_tokens)

each with a `sequence_number`. The whole reply is the same builder fed the whole text at once,
so the stream's items always equal the non-streamed response's.
"""

from __future__ import annotations

import copy
import json
import time
import uuid
from typing import Any

from llm_infer.entrypoints.server.responses_protocol import ResponsesJob
from llm_infer.runtime.output_parsers import ChatDelta, ChatOutputParser
from llm_infer.runtime.outputs import RequestOutput


def _id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def event_sse(event: dict[str, Any]) -> str:
    return f"event: {event['type']}\ndata: {json.dumps(event, ensure_ascii=False)}\n\n"


class ResponseBuilder:
    """One response: its output items so far, and the events that announced them."""

    def __init__(self, job: ResponsesJob, model: str, parser: ChatOutputParser, end_of_reasoning: int | None):
        self.job, self.model, self.end_of_reasoning = job, model, end_of_reasoning
        self.id = _id("resp")
        self.created_at = int(time.time())
        self.items: list[dict[str, Any]] = []
        self._open: dict[str, Any] | None = None  # the reasoning or message item being written
        self._text = ""
        self._seq = 0
        self._stream = parser.stream(job.prompt.ids, job.parse_tools)

    # -- events --------------------------------------------------------------------------------

    def _event(self, type_: str, **fields: Any) -> dict[str, Any]:
        event = {"type": f"response.{type_}", "sequence_number": self._seq, **fields}
        self._seq += 1
        return event

    def start(self) -> list[dict[str, Any]]:
        """The first events: the response, created and in progress."""
        head = self.response("in_progress")
        return [self._event("created", response=head), self._event("in_progress", response=copy.deepcopy(head))]

    def update(self, out: RequestOutput) -> list[dict[str, Any]]:
        """The events one engine update adds (the last ones, when it finished)."""
        sample = out.outputs[0]
        delta = self._stream.feed(sample.new_text)
        if not sample.finished:
            return self._extend(delta)
        cut = sample.finish_reason == "length"
        delta += self._stream.finish(cut)
        events = self._extend(delta) + self._close(cut)
        final = self.response("incomplete" if cut else "completed", out)
        return events + [self._event("incomplete" if cut else "completed", response=final)]

    def error(self, message: str) -> dict[str, Any]:
        event = {"type": "error", "sequence_number": self._seq, "code": "server_error", "message": message,
                 "param": None}
        self._seq += 1
        return event

    def whole(self, out: RequestOutput) -> dict[str, Any]:
        """The non-streamed response: the same items, from the whole text."""
        sample = out.outputs[0]
        cut = sample.finish_reason == "length"
        delta = self._stream.feed(sample.text)
        delta += self._stream.finish(cut)
        self._extend(delta)
        self._close(cut)
        return self.response("incomplete" if cut else "completed", out)

    def _extend(self, delta: ChatDelta) -> list[dict[str, Any]]:
        events = []
        for kind, text in (("reasoning", delta.reasoning), ("message", delta.content)):
            if not text:
                continue
            if self._open is None or self._open["type"] != kind:
                events += self._close(False) + self._begin(kind)
            self._text += text
            index = len(self.items) - 1
            name = "reasoning_text" if kind == "reasoning" else "output_text"
            extra = {} if kind == "reasoning" else {"logprobs": []}
            events.append(self._event(f"{name}.delta", item_id=self._open["id"], output_index=index,
                                      content_index=0, delta=text, **extra))
        for _, call in delta.tool_calls:
            events += self._close(False)
            item = {"id": _id("fc"), "type": "function_call", "call_id": call.id, "name": call.name,
                    "arguments": "", "status": "in_progress"}
            self.items.append(item)
            index = len(self.items) - 1
            events.append(self._event("output_item.added", output_index=index, item=copy.deepcopy(item)))
            events.append(self._event("function_call_arguments.delta", item_id=item["id"], output_index=index,
                                      delta=call.arguments))
            events.append(self._event("function_call_arguments.done", item_id=item["id"], output_index=index,
                                      name=call.name, arguments=call.arguments))
            item.update(arguments=call.arguments, status="completed")
            events.append(self._event("output_item.done", output_index=index, item=copy.deepcopy(item)))
        return events

    def _begin(self, kind: str) -> list[dict[str, Any]]:
        if kind == "reasoning":
            item = {"id": _id("rs"), "type": "reasoning", "summary": [], "content": [], "status": "in_progress"}
        else:
            item = {"id": _id("msg"), "type": "message", "role": "assistant", "content": [], "status": "in_progress"}
        self.items.append(item)
        self._open, self._text = item, ""
        index = len(self.items) - 1
        return [self._event("output_item.added", output_index=index, item=copy.deepcopy(item)),
                self._event("content_part.added", item_id=item["id"], output_index=index, content_index=0,
                            part=self._part(kind, ""))]

    def _close(self, cut: bool) -> list[dict[str, Any]]:
        item = self._open
        if item is None:
            return []
        self._open = None
        index = len(self.items) - 1
        kind = item["type"]
        part = self._part(kind, self._text)
        item.update(content=[part], status="incomplete" if cut else "completed")
        name = "reasoning_text" if kind == "reasoning" else "output_text"
        extra = {} if kind == "reasoning" else {"logprobs": []}
        return [self._event(f"{name}.done", item_id=item["id"], output_index=index, content_index=0,
                            text=self._text, **extra),
                self._event("content_part.done", item_id=item["id"], output_index=index, content_index=0,
                            part=copy.deepcopy(part)),
                self._event("output_item.done", output_index=index, item=copy.deepcopy(item))]

    @staticmethod
    def _part(kind: str, text: str) -> dict[str, Any]:
        if kind == "reasoning":
            return {"type": "reasoning_text", "text": text}
        return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}

    # -- the response object -------------------------------------------------------------------

    def response(self, status: str, out: RequestOutput | None = None) -> dict[str, Any]:
        req = self.job.body
        fmt = req.text.format.model_dump(by_alias=True, exclude_none=True) if req.text and req.text.format \
            else {"type": "text"}
        choice = self.job.prompt.choice
        if isinstance(choice, dict):
            choice = {"type": "function", "name": choice["function"]["name"]}
        return {
            "id": self.id, "object": "response", "created_at": self.created_at, "status": status,
            "completed_at": int(time.time()) if status == "completed" else None,
            "error": None,
            "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
            "instructions": req.instructions, "max_output_tokens": req.max_output_tokens, "model": self.model,
            "output": copy.deepcopy(self.items) if out is not None else [],
            "parallel_tool_calls": req.parallel_tool_calls is not False,
            "previous_response_id": None, "reasoning": {"effort": None, "summary": None},
            "store": False, "temperature": req.temperature if req.temperature is not None else 1.0,
            "text": {"format": fmt}, "tool_choice": choice,
            "tools": [t.model_dump(exclude_none=True) for t in req.tools or []],
            "top_p": req.top_p if req.top_p is not None else 1.0, "truncation": "disabled",
            "usage": self._usage(out) if out is not None else None,
        }

    def _usage(self, out: RequestOutput) -> dict[str, Any]:
        ids = out.outputs[0].token_ids
        reasoning = 0
        if any(item["type"] == "reasoning" for item in self.items):
            end = self.end_of_reasoning
            reasoning = ids.index(end) + 1 if end is not None and end in ids else len(ids)
        prompt = len(out.prompt_token_ids)
        return {"input_tokens": prompt, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": len(ids),
                "output_tokens_details": {"reasoning_tokens": reasoning}, "total_tokens": prompt + len(ids)}
