"""OpenAI-shaped response bodies and server-sent-event chunks for one HTTP request.

A request holds one engine request per prompt, each of `n` samples: choice `index` is
prompt index x n + sample index. A stream sends a chunk per choice that has something new.
Chat replies go through the model's output parsers (`ChatOutputParser`, one state per choice)
when it reasons or the request parses tool calls. Every chat message has
`message.reasoning_content` (null when there is none), `message.content` (null when empty), `message.tool_calls` and finish reason
`tool_calls`; streamed as `reasoning_content` / `content` deltas and, per call, a delta with its
`index`, `id`, `type` and `function.name` (arguments "") and then one with its arguments.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from llm_infer.entrypoints.server.logprobs import TokenText, join_completion_logprobs
from llm_infer.runtime.output_parsers import ChatDelta, ChatOutputParser, ChatOutputStream, ParsedMessage
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
    `echo` the prompts' texts for completions with echo (None entries: decode the prompt's ids);
    `parser` the model's chat output parsers, `parse_tools` whether tool calls are parsed.
    """

    chat: bool
    model: str
    tokens: TokenText
    n: int = 1
    top: int | None = None
    echo: list[str | None] | None = None
    parser: ChatOutputParser | None = None
    parse_tools: bool = False
    id: str = ""
    created: int = field(default_factory=lambda: int(time.time()))
    _offset: dict[int, int] = field(default_factory=dict)  # streaming: choice -> text_offset of its next token
    _finished: set[int] = field(default_factory=set)  # streaming: choices whose finish_reason was sent
    _streams: dict[int, ChatOutputStream] = field(default_factory=dict)  # streaming: each choice's parser state

    def __post_init__(self) -> None:
        self.id = self.id or f"{'chatcmpl' if self.chat else 'cmpl'}-{uuid.uuid4().hex}"
        parser = self.parser
        self._parsing = self.chat and parser is not None and (
            parser.reasoning is not None or (self.parse_tools and parser.tool_calls is not None))

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
            scores = c.logprobs[len(c.logprobs) - len(c.new_token_ids):] if c.logprobs is not None else None
            if finishing:
                self._finished.add(index)
            if self._parsing:
                result += self._parsed_chunks(index, out, c, finishing, (scores or []) if scored else None)
                continue
            if not (c.new_text or scored or finishing or (first and self.echo)):
                continue
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
            elif self._parsing:
                parsed = self.parser.parse(text, out.prompt_token_ids, self.parse_tools, cut=reason == "length")
                choice = {"index": index, "message": self._message(parsed)}
                reason = parsed.finish_reason(reason)
            else:
                choice = {"index": index, "message": {"role": "assistant", "content": text, "reasoning_content": None}}
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

    def _message(self, parsed: ParsedMessage) -> dict[str, Any]:
        # reasoning_content always present (null without reasoning, as vLLM sends it): clients read it directly
        message: dict[str, Any] = {"role": "assistant", "content": parsed.content,
                                   "reasoning_content": parsed.reasoning_content}
        if parsed.tool_calls:
            message["tool_calls"] = [call.to_openai() for call in parsed.tool_calls]
        return message

    def _parsed_chunks(self, index: int, out: RequestOutput, c: CompletionOutput, finishing: bool,
                       scores: list[TokenLogprob] | None) -> list[dict[str, Any]]:
        """A parsed chat choice's chunks for one update: its reasoning/content delta (with the
        update's token `scores`, if asked), then two per completed tool call; the last carries
        the finish. Text a parser holds back (a tag may be starting) comes in a later chunk."""
        stream = self._streams.get(index)
        if stream is None:
            stream = self._streams[index] = self.parser.stream(out.prompt_token_ids, self.parse_tools)
        delta: ChatDelta = stream.feed(c.new_text)
        if finishing:
            delta += stream.finish(cut=c.finish_reason == "length")
        choices = []
        text = {key: value for key, value in (("reasoning_content", delta.reasoning), ("content", delta.content))
                if value}
        logprobs = self.tokens.chat_logprobs(scores) if scores is not None else None
        if text or logprobs is not None:
            choices.append({"index": index, "delta": text, "logprobs": logprobs, "finish_reason": None})
        for k, call in delta.tool_calls:
            head = {"index": k, "id": call.id, "type": "function", "function": {"name": call.name, "arguments": ""}}
            choices.append({"index": index, "delta": {"tool_calls": [head]}, "logprobs": None, "finish_reason": None})
            arguments = {"index": k, "function": {"arguments": call.arguments}}
            choices.append({"index": index, "delta": {"tool_calls": [arguments]}, "logprobs": None,
                            "finish_reason": None})
        if finishing:
            if not choices:
                choices.append({"index": index, "delta": {}, "logprobs": None, "finish_reason": None})
            choices[-1]["finish_reason"] = stream.message.finish_reason(c.finish_reason)
        return [self._chunk([choice]) for choice in choices]
