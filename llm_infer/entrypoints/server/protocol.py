"""Request bodies of /v1/completions and /v1/chat/completions -> prompt token ids + SamplingParams.

pydantic models declare each field's type (strictly: "5" is not an integer, true is
not 1); fields we do not know are ignored (clients send e.g. `user`). The sampling
ranges are `SamplingParams`' alone: its error names the field, and so does the 400.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from llm_infer.errors import UserError
from llm_infer.entrypoints.server.errors import ApiError, bad_request
from llm_infer.runtime.sampling_params import SamplingParams, SamplingParamsError
from llm_infer.runtime.tokenizer import Tokenizer

_COMPLETION_MAX_TOKENS = 16  # OpenAI's default for /v1/completions
_BODY = ConfigDict(strict=True, extra="ignore")
_SAMPLING = {"temperature", "top_p", "top_k", "min_p", "seed", "stop", "ignore_eos"}
_Body = TypeVar("_Body", bound=BaseModel)


@dataclass
class GenerationRequest:
    """A parsed request: what to generate, and how to answer."""

    chat: bool
    prompt_ids: list[int]
    params: SamplingParams
    stream: bool
    include_usage: bool


class StreamOptions(BaseModel):
    """`stream_options`: a final chunk with the token counts when `include_usage`."""

    model_config = _BODY
    include_usage: bool | None = None


class SamplingFields(BaseModel):
    """Fields both routes share. null means the default, as an absent field does."""

    model_config = _BODY
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    seed: int | None = None
    stop: str | list[str] | None = Field(None, description="a string or a list of strings")
    ignore_eos: bool | None = None
    n: int | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = Field(None, description="an object like {include_usage: true}")

    def sampling_params(self, max_tokens: int, vocab_size: int) -> SamplingParams:
        """SamplingParams from the fields sent; its range errors become a 400 naming the field."""
        if self.n not in (None, 1):
            raise ApiError(400, "'n': only n=1 is supported (send one request per completion)", param="n")
        given: dict[str, Any] = self.model_dump(include=_SAMPLING, exclude_none=True)
        if "top_k" in given:
            given["top_k"] = min(given["top_k"], vocab_size)  # k > vocabulary keeps every token, as k = vocab does
        try:
            return SamplingParams(max_tokens=max_tokens, **given)
        except SamplingParamsError as e:
            raise ApiError(400, str(e), param=e.param) from None

    def streaming(self) -> tuple[bool, bool]:
        """(stream, include_usage)."""
        return bool(self.stream), bool(self.stream_options and self.stream_options.include_usage)


class CompletionRequest(SamplingFields):
    """The body of /v1/completions."""

    prompt: str | list[int] | list[str] | list[list[int]] = Field(
        description="a string, a list of token ids, or a one-element list of either")
    max_tokens: int | None = None
    echo: bool | None = None


class TextPart(BaseModel):
    """One part of a message's content; only text parts are supported."""

    model_config = _BODY
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    """One chat message: `content` is a string or a list of text parts (joined by newlines)."""

    model_config = _BODY
    role: str
    content: str | list[TextPart] = Field(description="a string or a list of {type: 'text', text: string} parts")

    def text(self) -> str:
        """The content as one string."""
        return self.content if isinstance(self.content, str) else "\n".join(p.text for p in self.content)


class ChatCompletionRequest(SamplingFields):
    """The body of /v1/chat/completions."""

    messages: list[ChatMessage] = Field(min_length=1, description="a non-empty list of {role, content} objects")
    max_tokens: int | None = None
    max_completion_tokens: int | None = None  # OpenAI's newer name; it wins over max_tokens


def _validate(model: type[_Body], body: dict) -> _Body:
    try:
        return model.model_validate(body)
    except ValidationError as e:
        raise bad_request(e, model) from None


def check_model(body: dict, names: set[str]) -> None:
    """A missing model means the served one; an unknown one is a 404 as OpenAI answers it."""
    model = body.get("model")
    if model is None:
        return
    if not isinstance(model, str):
        raise ApiError(400, "'model': must be a string", param="model")
    if model not in names:
        raise ApiError(404, f"the model '{model}' does not exist; this server serves {sorted(names)}",
                       param="model", code="model_not_found")


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


def _prompt_ids(prompt: str | list[int] | list[str] | list[list[int]], tokenizer: Tokenizer) -> list[int]:
    """The token ids of the one prompt (a one-element list of prompts is unwrapped)."""
    if prompt and isinstance(prompt, list) and not isinstance(prompt[0], int):
        if len(prompt) > 1:
            raise ApiError(400, f"'prompt': got {len(prompt)} prompts; this server takes one prompt per request",
                           param="prompt")
        prompt = prompt[0]
    # The engine refuses empty prompts and ids outside the vocabulary (a 400 naming `prompt`).
    return tokenizer.encode(prompt) if isinstance(prompt, str) else list(prompt)


def parse_completion(body: dict, tokenizer: Tokenizer, max_model_len: int, vocab_size: int) -> GenerationRequest:
    """A /v1/completions body as a GenerationRequest; any mistake is a 400 naming the field."""
    req = _validate(CompletionRequest, body)
    if req.echo:
        raise ApiError(400, "'echo': only echo=false is supported", param="echo")
    ids = _prompt_ids(req.prompt, tokenizer)
    asked = _COMPLETION_MAX_TOKENS if req.max_tokens is None else req.max_tokens
    max_tokens = _fit(ids, asked, max_model_len, "prompt")
    return GenerationRequest(False, ids, req.sampling_params(max_tokens, vocab_size), *req.streaming())


def parse_chat(body: dict, tokenizer: Tokenizer, max_model_len: int, vocab_size: int) -> GenerationRequest:
    """A /v1/chat/completions body as a GenerationRequest; any mistake is a 400 naming the field."""
    req = _validate(ChatCompletionRequest, body)
    try:
        ids = tokenizer.encode_chat([{"role": m.role, "content": m.text()} for m in req.messages])
    except UserError as e:
        raise ApiError(400, f"'messages': {e}", param="messages") from None
    asked = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
    max_tokens = _fit(ids, asked, max_model_len, "messages")
    return GenerationRequest(True, ids, req.sampling_params(max_tokens, vocab_size), *req.streaming())
