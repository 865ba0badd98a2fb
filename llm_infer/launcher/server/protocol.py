"""Request bodies of /v1/completions and /v1/chat/completions -> prompt token ids + SamplingParams.

Explicit checks rather than a schema library, so every mistake becomes a 400 that
names the field. Fields we do not know are ignored (clients send e.g. `user`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from llm_infer.errors import UserError
from llm_infer.launcher.server.errors import ApiError
from llm_infer.runtime.sampling_params import SamplingParams
from llm_infer.runtime.tokenizer import Tokenizer

_INT64 = 1 << 63


@dataclass
class GenerationRequest:
    chat: bool
    prompt_ids: list[int]
    params: SamplingParams
    stream: bool
    include_usage: bool


def _bad(param: str, message: str) -> ApiError:
    return ApiError(400, f"'{param}': {message}", param=param)


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _int(body: dict, name: str, default: int | None, low: int, high: int = _INT64 - 1) -> int | None:
    value = body.get(name)
    if value is None:
        return default
    if not _is_int(value) or not low <= value <= high:
        raise _bad(name, f"must be an integer in [{low}, {high}]")
    return value


def _float(body: dict, name: str, default: float, low: float, high: float = math.inf) -> float:
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) \
            or not low <= value <= high:
        raise _bad(name, f"must be a number in [{low}, {high}]")
    return float(value)


def _bool(body: dict, name: str, default: bool = False) -> bool:
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise _bad(name, "must be true or false")
    return value


def check_model(body: dict, names: set[str]) -> None:
    """A missing model means the served one; an unknown one is a 404 as OpenAI answers it."""
    model = body.get("model")
    if model is None:
        return
    if not isinstance(model, str):
        raise _bad("model", "must be a string")
    if model not in names:
        raise ApiError(404, f"the model '{model}' does not exist; this server serves {sorted(names)}",
                       param="model", code="model_not_found")


def _stop(body: dict) -> list[str]:
    stop = body.get("stop")
    if stop is None:
        return []
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops):
        raise _bad("stop", "must be a non-empty string or a list of non-empty strings")
    return stops


def _stream(body: dict) -> tuple[bool, bool]:
    stream = _bool(body, "stream")
    options = body.get("stream_options")
    if options is None:
        return stream, False
    if not isinstance(options, dict):
        raise _bad("stream_options", "must be an object")
    return stream, _bool(options, "include_usage")


def _params(body: dict, max_tokens: int, vocab_size: int) -> SamplingParams:
    if _int(body, "n", 1, 1, 1 << 31) != 1:
        raise _bad("n", "only n=1 is supported (send one request per completion)")
    top_k = _int(body, "top_k", 0, -1)
    try:
        return SamplingParams(
            max_tokens=max_tokens,
            temperature=_float(body, "temperature", 1.0, 0.0),
            top_p=_float(body, "top_p", 1.0, 0.0, 1.0),
            top_k=min(top_k, vocab_size),  # more than the vocabulary keeps every token, as k = vocab does
            min_p=_float(body, "min_p", 0.0, 0.0, 1.0),
            seed=_int(body, "seed", None, -_INT64, (1 << 64) - 1),
            stop=_stop(body),
            ignore_eos=_bool(body, "ignore_eos"),
        )
    except UserError as e:
        raise ApiError(400, str(e)) from None


def _fit(prompt_ids: list[int], max_tokens: int | None, max_model_len: int, param: str) -> int:
    """max_tokens, or what fits after the prompt when it is None; a 400 when they do not fit."""
    room = max_model_len - len(prompt_ids)
    if room < 1:
        raise ApiError(400, f"the prompt has {len(prompt_ids)} tokens; this model's maximum context length "
                            f"is {max_model_len} tokens (prompt and at least one new token must fit)", param=param)
    if max_tokens is None:
        return room
    if max_tokens > room:
        raise ApiError(400, f"this model's maximum context length is {max_model_len} tokens; the prompt has "
                            f"{len(prompt_ids)} tokens and max_tokens is {max_tokens} ({len(prompt_ids) + max_tokens}"
                            " in all)", param="max_tokens")
    return max_tokens


def _prompt_ids(prompt: Any, tokenizer: Tokenizer) -> list[int]:
    """`prompt`: a string, a token-id list, or a one-element list of either."""
    if isinstance(prompt, list) and prompt and all(isinstance(p, (str, list)) for p in prompt):
        if len(prompt) > 1:
            raise _bad("prompt", f"got {len(prompt)} prompts; this server takes one prompt per request")
        prompt = prompt[0]
    if isinstance(prompt, str):
        ids = tokenizer.encode(prompt)
    elif isinstance(prompt, list) and all(_is_int(t) for t in prompt):
        ids = prompt
    else:
        raise _bad("prompt", "must be a string, a list of token ids, or a one-element list of either")
    return ids  # the engine refuses empty prompts and ids outside the vocabulary (a 400 naming `prompt`)


def parse_completion(body: dict, tokenizer: Tokenizer, max_model_len: int, vocab_size: int) -> GenerationRequest:
    if "prompt" not in body:
        raise _bad("prompt", "is required")
    if body.get("echo") not in (None, False):
        raise _bad("echo", "only echo=false is supported")
    ids = _prompt_ids(body["prompt"], tokenizer)
    max_tokens = _fit(ids, _int(body, "max_tokens", 16, 1), max_model_len, "prompt")
    return GenerationRequest(False, ids, _params(body, max_tokens, vocab_size), *_stream(body))


def _messages(body: dict) -> list[dict[str, str]]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _bad("messages", "must be a non-empty list of {role, content} objects")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise _bad("messages", f"message {i} must be an object with a string 'role'")
        content = m.get("content")
        if isinstance(content, list):
            if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                       for p in content):
                raise _bad("messages", f"message {i}: content parts must be {{type: 'text', text: string}}")
            content = "\n".join(p["text"] for p in content)
        if not isinstance(content, str):
            raise _bad("messages", f"message {i} must have a string 'content' (or a list of text parts)")
        out.append({"role": m["role"], "content": content})
    return out


def parse_chat(body: dict, tokenizer: Tokenizer, max_model_len: int, vocab_size: int) -> GenerationRequest:
    messages = _messages(body)
    try:
        ids = tokenizer.encode_chat(messages)
    except UserError as e:
        raise _bad("messages", str(e)) from None
    max_tokens = _int(body, "max_completion_tokens", None, 1)
    if max_tokens is None:
        max_tokens = _int(body, "max_tokens", None, 1)
    max_tokens = _fit(ids, max_tokens, max_model_len, "messages")
    return GenerationRequest(True, ids, _params(body, max_tokens, vocab_size), *_stream(body))
