"""Tool-call parser `hermes` (Qwen's format): `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`.

Each block whose body is a JSON object with a string `name` and an object `arguments` (absent:
`{}`; a JSON string holding an object is taken too) becomes an OpenAI tool call: `id`
`call_<24 hex>`, `type: function`, `function.name`, `function.arguments` (the arguments as JSON
text, `json.dumps(..., ensure_ascii=False)`). A reply may hold several blocks; a block the reply
never closes counts when its body is already complete. Text outside the blocks is the content;
whitespace that touches a block is not. A block whose body is anything else (invalid JSON, no
name) is left in the content as the text it was, tags included. The name is not checked
against the request's tools (the caller sees what the model asked for).

Streaming: text that could be the start of `<tool_call>` (and the whitespace before it) is held
back, and a block is held until it closes, so the content never shows markup and a call is
only sent once it is known to be valid (which keeps a stream equal to the whole reply's parse,
invalid blocks included): its arguments then arrive in one fragment.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

from llm_infer.runtime.output_parsers.tags import held_tail, partial_tag_length


@dataclass(frozen=True)
class ToolCall:
    """One parsed call; `arguments` is JSON text of an object."""

    id: str
    name: str
    arguments: str

    def to_openai(self) -> dict[str, Any]:
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def parse_call(body: str) -> ToolCall | None:
    """The call a block's body describes, or None when it is not `{"name": str, "arguments": {...}}`."""
    try:
        obj = json.loads(body)
    except ValueError:
        return None
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str) or not obj["name"]:
        return None
    arguments = obj.get("arguments", {})
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except ValueError:
            return None
    if not isinstance(arguments, dict):
        return None
    return ToolCall(new_call_id(), obj["name"], json.dumps(arguments, ensure_ascii=False))


class HermesToolParser:
    """The `<tool_call>` block format; a `ToolCallStream` per reply."""

    name = "hermes"
    start_tag, end_tag = "<tool_call>", "</tool_call>"

    def stream(self) -> ToolCallStream:
        return ToolCallStream(self.start_tag, self.end_tag)


class ToolCallStream:
    """One reply's answer text, split as it arrives into content deltas and complete tool calls."""

    def __init__(self, start_tag: str, end_tag: str):
        self.start_tag, self.end_tag = start_tag, end_tag
        self.calls: list[ToolCall] = []
        self._pending = ""
        self._in_block = False
        self._after_call = False  # blanks right after a call are not content
        self._blank_before = ""  # blanks before the open block: content again if the block is invalid

    def feed(self, text: str) -> tuple[str, list[ToolCall]]:
        """(content delta, calls completed by `text`)."""
        self._pending += text
        content, calls = "", []
        while True:
            if self._in_block:
                end = self._pending.find(self.end_tag)
                if end < 0:
                    return content, calls
                body, self._pending = self._pending[:end], self._pending[end + len(self.end_tag):]
                content += self._close_block(body, closed=True, calls=calls)
                continue
            if self._after_call:
                self._pending = self._pending.lstrip()
                if not self._pending:
                    return content, calls
            start = self._pending.find(self.start_tag)
            if start < 0:
                emit = len(self._pending) - held_tail(self._pending, [self.start_tag])
                content += self._pending[:emit]
                self._after_call = self._after_call and emit == 0
                self._pending = self._pending[emit:]
                return content, calls
            before = self._pending[:start]
            text_before = before.rstrip()
            content += text_before
            self._blank_before = before[len(text_before):]
            self._pending, self._in_block = self._pending[start + len(self.start_tag):], True

    def finish(self, cut: bool = False) -> tuple[str, list[ToolCall]]:
        """The content and calls left at the end of the reply: an unclosed block with a complete
        body is a call, any other unclosed block is dropped; other held text is content, except
        that a reply `cut` short (max_tokens) drops a trailing part of the start tag."""
        pending, self._pending = self._pending, ""
        calls: list[ToolCall] = []
        if self._in_block:  # a body cut inside its end tag (`</tool`) may still be complete
            body = pending[: len(pending) - partial_tag_length(pending, [self.end_tag])]
            self._close_block(body, closed=False, calls=calls)
            return "", calls
        if cut and partial_tag_length(pending, [self.start_tag]):
            pending = pending[: len(pending) - held_tail(pending, [self.start_tag])]
        return (pending.lstrip() if self._after_call else pending), calls

    def _close_block(self, body: str, closed: bool, calls: list[ToolCall]) -> str:
        """End the open block: a call (appended to `calls`), or its text back as content."""
        self._in_block = False
        call = parse_call(body)
        if call is None:
            self._after_call = False
            return self._blank_before + self.start_tag + body + (self.end_tag if closed else "")
        self.calls.append(call)
        calls.append(call)
        self._after_call = True
        return ""
