"""OpenAI-shaped response bodies and server-sent-event chunks for one HTTP request.

A request holds one engine request per prompt, each of `n` samples: choice `index` is
prompt index x n + sample index. A stream sends a chunk per choice that has something new.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from llm_infer.entrypoints.server.logprobs import TokenText, join_completion_logprobs
from llm_infer.runtime.outputs import CompletionOutput, RequestOutput, TokenLogprob


def usage(finals: list[RequestOutput]) -> dict[str, int]:
    """Token counts: each prompt once, the completions of every choice."""
    prompt = sum(len(out.prompt_token_ids) for out in finals)
    completion = sum(len(c.token_ids) for out in finals for c in out.outputs)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def sse(data: dict[str, Any] | str) -> str:
    return f"data: {data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)}\n\n"


@dataclass
class Responder:
    """Builds the bodies of one request: a full response, or its stream chunks.

    `top` is how many alternatives each token's logprobs list (None: no logprobs asked);
    `echo` the prompts' texts for completions with echo (None entries: decode the prompt's ids).
    """

    chat: bool
    model: str
    tokens: TokenText
    n: int = 1
    top: int | None = None
    echo: list[str | None] | None = None
    id: str = ""
    created: int = field(default_factory=lambda: int(time.time()))
    _offset: dict[int, int] = field(default_factory=dict)  # streaming: choice -> text_offset of its next token
    _finished: set[int] = field(default_factory=set)  # streaming: choices whose finish_reason was sent

    def __post_init__(self) -> None:
        self.id = self.id or f"{'chatcmpl' if self.chat else 'cmpl'}-{uuid.uuid4().hex}"

    def _head(self, object_: str) -> dict[str, Any]:
        return {"id": self.id, "object": object_, "created": self.created, "model": self.model}

    def full(self, finals: list[RequestOutput]) -> dict[str, Any]:
        choices = [self._choice(p, out, c, c.text, c.token_ids, c.logprobs, echo=True)
                   for p, out in enumerate(finals) for c in out.outputs]
        return {**self._head("chat.completion" if self.chat else "text_completion"), "choices": choices,
                "usage": usage(finals)}

    def _chunk(self, choices: list[dict[str, Any]]) -> dict[str, Any]:
        return {**self._head("chat.completion.chunk" if self.chat else "text_completion"), "choices": choices}

    def role_chunks(self, prompts: int) -> list[dict[str, Any]]:
        """The first chat chunk of each choice: it names the role."""
        return [self._chunk([{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                              "finish_reason": None}]) for i in range(prompts * self.n)]

    def chunks(self, p: int, out: RequestOutput) -> list[dict[str, Any]]:
        """One streaming update of prompt `p`: a chunk for each of its choices with new text, new
        scored tokens, its finish, or (first chunk, echo) the prompt."""
        result = []
        for c in out.outputs:
            index = p * self.n + c.index
            first = index not in self._offset
            finishing = c.finished and index not in self._finished
            scored = self.top is not None and c.new_token_ids
            if not (c.new_text or scored or finishing or (first and self.echo)):
                continue
            if finishing:
                self._finished.add(index)
            scores = c.logprobs[len(c.logprobs) - len(c.new_token_ids):] if c.logprobs is not None else None
            result.append(self._chunk([self._choice(p, out, c, c.new_text, c.new_token_ids, scores, echo=first,
                                                    stream=True)]))
        return result

    def _choice(self, p: int, out: RequestOutput, c: CompletionOutput, text: str, ids: list[int],
                scores: list[TokenLogprob] | None, echo: bool, stream: bool = False) -> dict[str, Any]:
        """A choice carrying `text` and the tokens `ids` with their `scores` (the whole completion,
        or a stream chunk's part; `echo`: the prompt goes first, when the request asked for it)."""
        index = p * self.n + c.index
        reason = c.finish_reason if c.finished else None
        logprobs = None
        if self.chat:
            if self.top is not None:
                logprobs = self.tokens.chat_logprobs(scores or [])
            if stream:
                choice = {"index": index, "delta": {"content": text} if text else {}}
            else:
                choice = {"index": index, "message": {"role": "assistant", "content": text}}
            return {**choice, "logprobs": logprobs, "finish_reason": reason}
        echoed = self.echo is not None and echo
        prompt_text = ""
        if echoed:
            given = self.echo[p]
            prompt_text = given if given is not None else self.tokens.tokenizer.decode(out.prompt_token_ids)
        start = self._offset.get(index, len(prompt_text))
        if self.top is not None:
            parts = [self.tokens.completion_logprobs(ids, scores or [], start)]
            if echoed:
                parts.insert(0, self.tokens.completion_logprobs(out.prompt_token_ids, out.prompt_logprobs or [], 0))
            logprobs = join_completion_logprobs(parts)
        if stream:
            self._offset[index] = start + sum(len(self.tokens.text(t)) for t in ids)
        return {"index": index, "text": prompt_text + text, "logprobs": logprobs, "finish_reason": reason}

    def usage_chunk(self, finals: list[RequestOutput]) -> dict[str, Any]:
        return {**self._chunk([]), "usage": usage(finals)}
