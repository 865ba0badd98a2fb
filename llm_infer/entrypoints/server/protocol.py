"""Request bodies of /v1/completions and /v1/chat/completions -> prompts + SamplingParams.

pydantic models declare each field's type (strictly: "5" is not an integer, true is
not 1). Which fields the server supports, ignores and refuses is declared here once: the
models' fields are supported, `IGNORED` fields change nothing in the answer, `REFUSED`
fields (and any field in none of these lists) are a 400 naming the field, so nothing that
would change what the client gets back is dropped silently. The sampling ranges are
`SamplingParams`' alone: its error names the field, and so does the 400.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from collections.abc import Collection, Mapping
from typing import Any, ClassVar, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from llm_infer.errors import UserError
from llm_infer.entrypoints.server.chat_protocol import (_NESTED, ChatMessage, Tool, ToolChoice, chat_prompt,
                                                         with_tool_choice)
from llm_infer.entrypoints.server.errors import ApiError, bad_request
from llm_infer.runtime.sampling_params import SamplingParams, SamplingParamsError
from llm_infer.runtime.structured_output.params import StructuredOutputsParams
from llm_infer.runtime.tokenizer import Tokenizer

_COMPLETION_MAX_TOKENS = 16  # OpenAI's default for /v1/completions
_BODY = ConfigDict(strict=True, extra="ignore")  # unknown top-level fields are caught by check_fields
# Nested objects (`_NESTED`, from chat_protocol.py) refuse what they do not know (a message's `name` or `tool_calls`, a part's
# `cache_control`, ...): the server would otherwise drop something that changes the answer.
_SAMPLING = {"temperature", "top_p", "top_k", "min_p", "seed", "stop", "ignore_eos", "presence_penalty",
             "frequency_penalty", "repetition_penalty", "min_tokens", "stop_token_ids", "n", "thinking_budget"}
_Body = TypeVar("_Body", bound=BaseModel)

# Fields that change nothing in the answer (bookkeeping on OpenAI's platform): accepted and ignored.
IGNORED = frozenset({"user", "store", "metadata", "service_tier", "prompt_cache_key", "safety_identifier"})
# OpenAI fields this server does not implement, with the values that ask for nothing (accepted):
# any other value is a 400 naming the field.
REFUSED: dict[str, tuple[Any, ...]] = {
    "suffix": (None, ""),
    "tools": (None, []),
    "tool_choice": (None, "none"),
    "functions": (None, []),
    "function_call": (None, "none"),
    "parallel_tool_calls": (None, True),  # completions (no tools); chat supports it
    "audio": (None,),
    "modalities": (None, ["text"]),
    "prediction": (None,),
    "reasoning_effort": (None,),
    "web_search_options": (None,),
}


@dataclass
class GenerationRequest:
    """A parsed request: what to generate, and how to answer."""

    chat: bool
    prompts: list[list[int]]  # one engine request (of params.n samples) each
    params: SamplingParams
    stream: bool
    include_usage: bool
    # Completions with echo: each prompt's text, returned before its completion (None: a token-id
    # prompt, decoded once the engine has accepted its ids).
    echo: list[str | None] | None = None
    parse_tools: bool = False  # chat with tools and tool_choice other than none: replies' tool calls are parsed


class StreamOptions(BaseModel):
    """`stream_options`: a final chunk with the token counts when `include_usage`."""

    model_config = _NESTED
    include_usage: bool | None = None


class JsonSchemaFormat(BaseModel):
    """`response_format.json_schema`: the schema is enforced whether or not `strict` is set."""

    model_config = _NESTED
    name: str
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None
    description: str | None = None


class ResponseFormat(BaseModel):
    """OpenAI's `response_format`: text (no constraint), any JSON object, or a JSON schema."""

    model_config = _NESTED
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


class StructuredOutputsField(BaseModel):
    """The extension `structured_outputs` (as vLLM names it): exactly one of these."""

    model_config = _NESTED
    json_: dict[str, Any] | str | None = Field(None, alias="json")
    json_object: bool | None = None
    regex: str | None = None
    choice: list[str] | None = None
    grammar: str | None = None


# vLLM's older names for the same constraints, accepted as aliases.
_GUIDED = {"guided_json": "json", "guided_regex": "regex", "guided_choice": "choice", "guided_grammar": "grammar"}
CONSTRAINT_FIELDS = ("response_format", "structured_outputs", *_GUIDED)


class SamplingFields(BaseModel):
    """Fields both routes share. null means the default, as an absent field does."""

    model_config = _BODY
    # Errors SamplingParams reports under its own name that the route's body calls otherwise.
    _renamed: ClassVar[dict[str, str]] = {}
    model: str | None = None  # checked by check_model
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    seed: int | None = None
    stop: str | list[str] | None = Field(None, description="a string or a list of strings")
    ignore_eos: bool | None = None
    n: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    repetition_penalty: float | None = None
    logit_bias: dict[str, float] | None = Field(None, description="an object of token ids (as strings) to numbers")
    min_tokens: int | None = None
    stop_token_ids: list[int] | None = Field(None, description="a list of token ids")
    thinking_budget: int | None = Field(None, description="reasoning tokens before the end of reasoning is forced")
    stream: bool | None = None
    stream_options: StreamOptions | None = Field(None, description="an object like {include_usage: true}")
    response_format: ResponseFormat | None = Field(
        None, description="an object like {type: 'json_schema', json_schema: {name, schema}}")
    structured_outputs: StructuredOutputsField | None = Field(
        None, description="an object with one of json, json_object, regex, choice, grammar")
    guided_json: dict[str, Any] | str | None = None
    guided_regex: str | None = None
    guided_choice: list[str] | None = None
    guided_grammar: str | None = None

    def output_constraint(self) -> tuple[str, StructuredOutputsParams] | None:
        """(the field that set it, the constraint) from response_format, structured_outputs or a
        guided_* alias; a 400 when more than one is given or the one given is malformed."""
        given: list[tuple[str, dict[str, Any]]] = []
        fmt = self.response_format
        if fmt is not None and fmt.type == "json_object":
            given.append(("response_format", {"json_object": True}))
        elif fmt is not None and fmt.type == "json_schema":
            if fmt.json_schema is None or fmt.json_schema.schema_ is None:
                raise ApiError(400, "'response_format': type json_schema needs json_schema: {name, schema}",
                               param="response_format")
            given.append(("response_format", {"json": fmt.json_schema.schema_}))
        if self.structured_outputs is not None:
            fields = self.structured_outputs.model_dump(exclude_none=True)
            given.append(("structured_outputs", {k.rstrip("_"): v for k, v in fields.items()}))
        given += [(name, {key: getattr(self, name)}) for name, key in _GUIDED.items() if getattr(self, name) is not None]
        if len(given) > 1:
            raise ApiError(400, f"'{given[1][0]}': only one of response_format, structured_outputs and guided_* "
                                f"may be given (also got '{given[0][0]}')", param=given[1][0])
        if not given:
            return None
        name, fields = given[0]
        try:
            return name, StructuredOutputsParams(**fields)
        except UserError as e:
            raise ApiError(400, f"'{name}': {e}", param=name) from None

    def sampling_params(self, max_tokens: int, vocab_size: int, **scores: int | None) -> SamplingParams:
        """SamplingParams from the fields sent (plus `scores`: logprobs, prompt_logprobs); its range
        errors become a 400 naming the field as the body calls it."""
        given: dict[str, Any] = self.model_dump(include=_SAMPLING, exclude_none=True)
        if "top_k" in given:
            given["top_k"] = min(given["top_k"], vocab_size)  # k > vocabulary keeps every token, as k = vocab does
        given["logit_bias"] = _token_keys(self.logit_bias or {}, vocab_size)
        outside = next((t for t in self.stop_token_ids or [] if t >= vocab_size), None)
        if outside is not None:
            raise ApiError(400, f"'stop_token_ids': token id {outside} is outside the vocabulary (size {vocab_size})",
                           param="stop_token_ids")
        constraint = self.output_constraint()
        if constraint is not None:
            given["structured_outputs"] = constraint[1]
        try:
            return SamplingParams(max_tokens=max_tokens, **given, **{k: v for k, v in scores.items() if v is not None})
        except SamplingParamsError as e:
            field = self._renamed.get(e.param, e.param)
            raise ApiError(400, str(e) if field == e.param else f"{e} (sent as '{field}')", param=field) from None

    def streaming(self) -> tuple[bool, bool]:
        """(stream, include_usage); a 400 for stream_options without stream (as OpenAI and vLLM answer)."""
        if self.stream_options is not None and not self.stream:
            raise ApiError(400, "'stream_options': only allowed when stream is true", param="stream_options")
        return bool(self.stream), bool(self.stream_options and self.stream_options.include_usage)


def _token_keys(bias: dict[str, float], vocab_size: int) -> dict[int, float]:
    """`logit_bias` as JSON sends it (keys are strings) -> token id -> value; a 400 for other keys."""
    out = {}
    for key, value in bias.items():
        if not re.fullmatch(r"[0-9]{1,12}", key):
            raise ApiError(400, f"'logit_bias': key {key[:20]!r} is not a token id", param="logit_bias")
        if int(key) >= vocab_size:
            raise ApiError(400, f"'logit_bias': token id {key} is outside the vocabulary (size {vocab_size})",
                           param="logit_bias")
        out[int(key)] = value
    return out


class CompletionRequest(SamplingFields):
    """The body of /v1/completions."""

    _renamed: ClassVar[dict[str, str]] = {"prompt_logprobs": "logprobs"}
    prompt: str | list[int] | list[str] | list[list[int]] = Field(
        description="a string, a list of token ids, or a list of either")
    max_tokens: int | None = None
    echo: bool | None = None
    logprobs: int | None = None
    best_of: int | None = None


class ChatCompletionRequest(SamplingFields):
    """The body of /v1/chat/completions."""

    _renamed: ClassVar[dict[str, str]] = {"logprobs": "top_logprobs"}
    messages: list[ChatMessage] = Field(min_length=1, description="a non-empty list of {role, content} objects")
    max_tokens: int | None = None
    max_completion_tokens: int | None = None  # OpenAI's newer name; it wins over max_tokens
    logprobs: bool | None = None
    top_logprobs: int | None = None
    # Chat template inputs (see chat_protocol.py): tools reach the template; tool_choice `none` keeps
    # them there but leaves the reply unparsed, as vLLM does.
    tools: list[Tool] | None = Field(
        None, description="a list of {type: 'function', function: {name, description, parameters}} objects")
    tool_choice: ToolChoice | None = Field(
        None, description="'none', 'auto', 'required' or {type: 'function', function: {name}}")
    parallel_tool_calls: bool | None = None  # false: at most one call per reply
    chat_template_kwargs: dict[str, Any] | None = Field(None, description="an object of template variables")
    add_generation_prompt: bool | None = None  # default: not continue_final_message
    continue_final_message: bool | None = None


def check_fields(body: dict, model: type[BaseModel], ignored: Collection[str] = IGNORED,
                 refused: Mapping[str, tuple[Any, ...]] = REFUSED) -> None:
    """A 400 naming the first field of `body` that the route's `model` does not declare: fields in
    `refused` pass only with a value that asks for nothing, `ignored` ones always (see IGNORED and
    REFUSED, the defaults of the generation routes)."""
    for name, value in body.items():
        if name in model.model_fields or name in ignored:
            continue
        if name in refused:
            if any(value == ok and type(value) is type(ok) for ok in refused[name]):
                continue
            allowed = " or ".join("null" if ok is None else repr(ok) for ok in refused[name])
            raise ApiError(400, f"'{name}': not supported by this server (only {allowed} is accepted)", param=name)
        supported = ", ".join(sorted(model.model_fields))
        also = f" (and ignores {', '.join(sorted(ignored))})" if ignored else ""
        raise ApiError(400, f"'{str(name)[:40]}': unknown field; this route takes {supported}{also}",
                       param=str(name)[:40])


def validate_body(model: type[_Body], body: dict) -> _Body:
    """`body` as the route's pydantic `model`; a 400 naming the field when it does not fit."""
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


def fit_max_tokens(prompt_ids: list[int], max_tokens: int | None, max_model_len: int, param: str, which: str,
                   tokens_field: str = "max_tokens") -> int:
    """max_tokens (the body's `tokens_field`), or what fits after the prompt when it is None; a 400
    when they do not fit. max_tokens 0 (scoring the prompt) lets the prompt fill the whole context."""
    room = max_model_len - len(prompt_ids)
    if room < (0 if max_tokens == 0 else 1):
        need = "" if max_tokens == 0 else " (prompt and at least one new token must fit)"
        raise ApiError(400, f"{which} has {len(prompt_ids)} tokens; this model's maximum context length "
                            f"is {max_model_len} tokens{need}", param=param)
    if max_tokens is None:
        return room
    if max_tokens > room:
        raise ApiError(400, f"this model's maximum context length is {max_model_len} tokens; {which} has "
                            f"{len(prompt_ids)} tokens and {tokens_field} is {max_tokens} "
                            f"({len(prompt_ids) + max_tokens} in all)", param=tokens_field)
    return max_tokens


def _prompts(prompt: str | list[int] | list[str] | list[list[int]]) -> list[str | list[int]]:
    """The prompts of a completion body: one string or token-id list, or a list of them."""
    if prompt and isinstance(prompt, list) and not isinstance(prompt[0], int):
        return list(prompt)
    return [prompt]  # type: ignore[list-item]


def parse_completion(body: dict, tokenizer: Tokenizer, max_model_len: int, vocab_size: int) -> GenerationRequest:
    """A /v1/completions body as a GenerationRequest; any mistake is a 400 naming the field."""
    check_fields(body, CompletionRequest)
    req = validate_body(CompletionRequest, body)
    if req.best_of is not None and req.best_of != (req.n if req.n is not None else 1):
        raise ApiError(400, "'best_of': only best_of equal to n is supported (this server returns every sample)",
                       param="best_of")
    asked = _COMPLETION_MAX_TOKENS if req.max_tokens is None else req.max_tokens
    if asked == 0 and not req.echo:
        raise ApiError(400, "'max_tokens': must be at least 1 (max_tokens 0 scores the prompt, with echo: true)",
                       param="max_tokens")
    prompts = _prompts(req.prompt)
    # The engine refuses empty prompts and ids outside the vocabulary (a 400 naming `prompt`).
    ids = [tokenizer.encode(p) if isinstance(p, str) else list(p) for p in prompts]
    for i, one in enumerate(ids):
        fit_max_tokens(one, asked, max_model_len, "prompt", "the prompt" if len(ids) == 1 else f"prompt {i}")
    echo = [p if isinstance(p, str) else None for p in prompts] if req.echo else None
    scores = {"logprobs": req.logprobs, "prompt_logprobs": req.logprobs if req.echo else None}
    params = req.sampling_params(asked, vocab_size, **scores)
    return GenerationRequest(False, ids, params, *req.streaming(), echo=echo)


def parse_chat(body: dict, tokenizer: Tokenizer, max_model_len: int, vocab_size: int, *,
               tool_parser: bool = True) -> GenerationRequest:
    """A /v1/chat/completions body as a GenerationRequest; any mistake is a 400 naming the field.
    `tool_parser`: whether replies' tool calls can be parsed (the server's chat.tool_call_parser
    is on); without it a tool_choice that forces calls is a 400."""
    check_fields(body, ChatCompletionRequest)
    req = validate_body(ChatCompletionRequest, body)
    if req.top_logprobs is not None and not req.logprobs:
        raise ApiError(400, "'top_logprobs': needs logprobs: true", param="top_logprobs")
    prompt = chat_prompt(tokenizer, req.messages, req.tools, req.tool_choice, req.add_generation_prompt,
                         bool(req.continue_final_message), req.chat_template_kwargs)
    ids, tools, choice = prompt.ids, prompt.tools, prompt.choice
    asked = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
    if asked == 0:
        raise ApiError(400, "'max_tokens': must be at least 1", param="max_tokens")
    max_tokens = fit_max_tokens(ids, asked, max_model_len, "messages", "the prompt")
    top = (req.top_logprobs or 0) if req.logprobs else None
    params = req.sampling_params(max_tokens, vocab_size, logprobs=top)
    params = with_tool_choice(params, tools or [], choice, tool_parser, req.parallel_tool_calls is not False)
    return GenerationRequest(True, [ids], params, *req.streaming(), parse_tools=choice != "none")

