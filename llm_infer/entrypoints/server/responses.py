"""OpenAI-shaped response bodies and server-sent-event chunks for one generation."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from llm_infer.runtime.outputs import RequestOutput


def usage(out: RequestOutput) -> dict[str, int]:
    prompt, completion = len(out.prompt_token_ids), len(out.token_ids)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def sse(data: dict[str, Any] | str) -> str:
    return f"data: {data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)}\n\n"


@dataclass
class Responder:
    """Builds the bodies of one request: a full response, or its stream chunks."""

    chat: bool
    model: str
    id: str = ""
    created: int = field(default_factory=lambda: int(time.time()))

    def __post_init__(self) -> None:
        self.id = self.id or f"{'chatcmpl' if self.chat else 'cmpl'}-{uuid.uuid4().hex}"

    def _head(self, object_: str) -> dict[str, Any]:
        return {"id": self.id, "object": object_, "created": self.created, "model": self.model}

    def full(self, out: RequestOutput) -> dict[str, Any]:
        if self.chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": out.text}}
        else:
            choice = {"index": 0, "text": out.text}
        choice.update(logprobs=None, finish_reason=out.finish_reason)
        return {**self._head("chat.completion" if self.chat else "text_completion"), "choices": [choice],
                "usage": usage(out)}

    def _chunk(self, choices: list[dict[str, Any]]) -> dict[str, Any]:
        return {**self._head("chat.completion.chunk" if self.chat else "text_completion"), "choices": choices}

    def role_chunk(self) -> dict[str, Any]:
        """The first chat chunk: it names the role."""
        return self._chunk([{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                             "finish_reason": None}])

    def chunk(self, out: RequestOutput) -> dict[str, Any]:
        reason = out.finish_reason if out.finished else None
        if self.chat:
            choice = {"index": 0, "delta": {"content": out.new_text} if out.new_text else {}}
        else:
            choice = {"index": 0, "text": out.new_text}
        choice.update(logprobs=None, finish_reason=reason)
        return self._chunk([choice])

    def usage_chunk(self, out: RequestOutput) -> dict[str, Any]:
        return {**self._chunk([]), "usage": usage(out)}
