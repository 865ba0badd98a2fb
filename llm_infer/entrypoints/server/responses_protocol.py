"""The body of `POST /v1/responses` (OpenAI's Responses API) -> the chat prompt and SamplingParams.

The Responses API is stateless here: every turn sends the whole conversation in `input`, as
message items and the items earlier responses returned (`reasoning`, `message`, `function_call`)
followed by the caller's `function_call_output` items. They become chat messages (a reasoning
item is the next assistant turn's `reasoning_content`, function calls that assistant turn's
`tool_calls` with `call_id` as their id, an output a `tool` message), `instructions` a first
system message, and the prompt is built by the chat route's own `chat_prompt`. Function `tools`,
`tool_choice` and `parallel_tool_calls` act as on the chat route; `text.format` json_schema /
json_object constrain the answer through the grammar engine. `previous_response_id` and
`store: true` are 400s saying so (nothing is stored); fields this server does not implement
are 400s naming them, bookkeeping fields (`metadata`, `user`, ...) are ignored.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag

from llm_infer.entrypoints.server.chat_protocol import (_NESTED, ChatMessage, ChatPrompt, FunctionDefinition,
                                                         FunctionName, NamedToolChoice, Tool, chat_prompt,
                                                         with_tool_choice)
from llm_infer.entrypoints.server.errors import ApiError
from llm_infer.entrypoints.server.protocol import SamplingFields, check_fields, fit_max_tokens, validate_body
from llm_infer.errors import UserError
from llm_infer.runtime.sampling_params import SamplingParams
from llm_infer.runtime.structured_output.params import StructuredOutputsParams

# Bookkeeping on OpenAI's platform: accepted, changes nothing in the answer.
IGNORED = frozenset({"metadata", "user", "service_tier", "safety_identifier", "prompt_cache_key",
                     "prompt_cache_retention", "prompt_cache_options"})
# Not implemented: accepted only with the value in parentheses (or null).
REFUSED: dict[str, tuple[Any, ...]] = {
    "background": (None, False), "conversation": (None,), "prompt": (None,), "include": (None, []),
    "truncation": (None, "disabled"), "top_logprobs": (None, 0), "max_tool_calls": (None,),
    "context_management": (None,), "moderation": (None,), "stream_options": (None,),
}
STATELESS = ("this server keeps no responses: send the whole conversation (earlier output items and "
             "function_call_output items) in input")


class InputText(BaseModel):
    """A text part of an input message (`input_text`) or of an earlier reply (`output_text`)."""

    model_config = _NESTED
    type: Literal["input_text", "output_text"]
    text: str
    annotations: list[Any] | None = None  # output_text as returned (none are produced here)
    logprobs: list[Any] | None = None


class MessageItem(BaseModel):
    """A message: the caller's (`user`, `system`, `developer`) or an earlier reply (`assistant`)."""

    model_config = _NESTED
    type: Literal["message"] = "message"
    role: Literal["user", "system", "developer", "assistant"]
    content: str | list[InputText] = Field(description="a string or a list of {type: 'input_text', text} parts")
    id: str | None = None
    status: str | None = None
    phase: str | None = None

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "\n".join(p.text for p in self.content)


class FunctionCallItem(BaseModel):
    """A function call an earlier response returned."""

    model_config = _NESTED
    type: Literal["function_call"]
    call_id: str
    name: str
    arguments: str = Field(description="the arguments as a JSON string")
    id: str | None = None
    status: str | None = None


class FunctionCallOutputItem(BaseModel):
    """The caller's result of a function call."""

    model_config = _NESTED
    type: Literal["function_call_output"]
    call_id: str
    output: str | list[InputText] = Field(description="a string or a list of {type: 'input_text', text} parts")
    id: str | None = None
    status: str | None = None


class ReasoningText(BaseModel):
    model_config = _NESTED
    type: Literal["reasoning_text", "summary_text"]
    text: str


class ReasoningItem(BaseModel):
    """The reasoning an earlier response returned (its `content`, else its `summary`)."""

    model_config = _NESTED
    type: Literal["reasoning"]
    id: str | None = None
    summary: list[ReasoningText] = Field(default_factory=list)
    content: list[ReasoningText] | None = None
    encrypted_content: None = None
    status: str | None = None

    def text(self) -> str:
        return "\n".join(p.text for p in (self.content or self.summary))


def _item_type(item: Any) -> str | None:
    """An item's `type`; a message may leave it out (OpenAI's "easy input message")."""
    if isinstance(item, dict):
        return item.get("type", "message") if "role" in item or "type" in item else None
    return getattr(item, "type", None)


InputItem = Annotated[Annotated[MessageItem, Tag("message")] | Annotated[FunctionCallItem, Tag("function_call")]
                      | Annotated[FunctionCallOutputItem, Tag("function_call_output")]
                      | Annotated[ReasoningItem, Tag("reasoning")], Discriminator(_item_type)]


class FunctionTool(BaseModel):
    """A function tool, as the Responses API lays it out (flat: no `function` wrapper)."""

    model_config = _NESTED
    type: Literal["function"]
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = Field(None, description="a JSON schema (an object)")
    strict: bool | None = None

    def as_chat_tool(self) -> Tool:
        return Tool(type="function", function=FunctionDefinition(name=self.name, description=self.description,
                                                                 parameters=self.parameters, strict=self.strict))


class FunctionChoice(BaseModel):
    model_config = _NESTED
    type: Literal["function"]
    name: str


class TextFormat(BaseModel):
    """`text.format`: plain text, any JSON object, or a JSON schema (enforced whether or not `strict`)."""

    model_config = _NESTED
    type: Literal["text", "json_object", "json_schema"]
    name: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None
    description: str | None = None


class TextConfig(BaseModel):
    model_config = _NESTED
    format: TextFormat | None = None
    verbosity: None = None


class ReasoningConfig(BaseModel):
    """`reasoning`: accepted, but nothing here can be set (a reasoning model reasons as its template says)."""

    model_config = _NESTED
    effort: None = None
    summary: None = None
    generate_summary: None = None


class ResponsesRequest(BaseModel):
    """The body of /v1/responses."""

    model_config = ConfigDict(strict=True, extra="ignore")  # unknown fields are caught by check_fields
    model: str | None = None
    input: str | list[InputItem] = Field(description="a string or a list of message and function-call items")
    instructions: str | None = None
    max_output_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    tools: list[FunctionTool] | None = Field(
        None, description="a list of {type: 'function', name, description, parameters} objects")
    tool_choice: Literal["none", "auto", "required"] | FunctionChoice | None = Field(
        None, description="'none', 'auto', 'required' or {type: 'function', name}")
    parallel_tool_calls: bool | None = None
    text: TextConfig | None = Field(None, description="an object like {format: {type: 'json_schema', name, schema}}")
    reasoning: ReasoningConfig | None = Field(None, description="null (reasoning cannot be configured here)")
    stream: bool | None = None
    store: bool | None = None
    previous_response_id: str | None = None
    # Extensions, as on the chat route.
    seed: int | None = None
    top_k: int | None = None
    chat_template_kwargs: dict[str, Any] | None = Field(None, description="an object of template variables")
    thinking_budget: int | None = None


@dataclass
class ResponsesJob:
    """A parsed request: the prompt, how to sample, and what to echo back in the response."""

    body: ResponsesRequest
    prompt: ChatPrompt
    params: SamplingParams
    parse_tools: bool


def parse_responses(body: dict, tokenizer: Any, max_model_len: int, vocab_size: int,
                    tool_parser: bool = True) -> ResponsesJob:
    """A /v1/responses body as a job; any mistake is a 400 naming the field."""
    if body.get("store") is True or isinstance(body.get("previous_response_id"), str):
        field = "store" if body.get("store") is True else "previous_response_id"
        raise ApiError(400, f"'{field}': {STATELESS}", param=field)
    check_fields(body, ResponsesRequest, ignored=IGNORED, refused=REFUSED)
    reasoning = body.get("reasoning")
    asked = [k for k, v in reasoning.items() if v is not None] if isinstance(reasoning, dict) else []
    if asked:
        raise ApiError(400, f"'reasoning': reasoning.{asked[0]} is not supported by this server (a model reasons as "
                            "its chat template says; chat_template_kwargs such as enable_thinking apply)",
                       param="reasoning")
    req = validate_body(ResponsesRequest, body)
    messages = ([ChatMessage(role="system", content=req.instructions)] if req.instructions is not None else [])
    messages += chat_messages(req.input)
    tools = [t.as_chat_tool() for t in req.tools] if req.tools else None
    choice = req.tool_choice
    if isinstance(choice, FunctionChoice):
        choice = NamedToolChoice(type="function", function=FunctionName(name=choice.name))
    kwargs = req.chat_template_kwargs
    prompt = chat_prompt(tokenizer, messages, tools, choice, chat_template_kwargs=kwargs, messages_field="input")
    if req.max_output_tokens == 0:
        raise ApiError(400, "'max_output_tokens': must be at least 1", param="max_output_tokens")
    max_tokens = fit_max_tokens(prompt.ids, req.max_output_tokens, max_model_len, "input", "the input",
                                "max_output_tokens")
    fields = SamplingFields.model_validate({"temperature": req.temperature, "top_p": req.top_p, "seed": req.seed,
                                            "top_k": req.top_k, "thinking_budget": req.thinking_budget})
    params = dataclasses.replace(fields.sampling_params(max_tokens, vocab_size),
                                 structured_outputs=_text_constraint(req.text.format if req.text else None))
    params = with_tool_choice(params, prompt.tools or [], prompt.choice, tool_parser,
                              req.parallel_tool_calls is not False)
    return ResponsesJob(req, prompt, params, parse_tools=prompt.choice != "none")


def _text_constraint(fmt: TextFormat | None) -> StructuredOutputsParams | None:
    """`text.format` as an output constraint (None: plain text); a 400 naming `text`."""
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_schema" and fmt.schema_ is None:
        raise ApiError(400, "'text': format json_schema needs a schema", param="text")
    try:
        return StructuredOutputsParams(json=fmt.schema_) if fmt.type == "json_schema" \
            else StructuredOutputsParams(json_object=True)
    except UserError as e:
        raise ApiError(400, f"'text': {e}", param="text") from None


def chat_messages(items: str | list[MessageItem | FunctionCallItem | FunctionCallOutputItem | ReasoningItem]
                  ) -> list[ChatMessage]:
    """Input items as chat messages: a reasoning item goes with the next assistant turn, function
    calls join the assistant turn they follow (or start one), outputs are `tool` messages."""
    if isinstance(items, str):
        return [ChatMessage(role="user", content=items)]
    messages: list[dict[str, Any]] = []
    reasoning: str | None = None
    for item in items:
        if isinstance(item, ReasoningItem):
            reasoning = (reasoning + "\n" if reasoning else "") + item.text()
            continue
        last = messages[-1] if messages else None
        if isinstance(item, FunctionCallItem):
            call = {"id": item.call_id, "type": "function",
                    "function": {"name": item.name, "arguments": item.arguments}}
            if last is not None and last["role"] == "assistant" and reasoning is None:
                last.setdefault("tool_calls", []).append(call)
                continue
            messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif isinstance(item, FunctionCallOutputItem):
            output = item.output if isinstance(item.output, str) else "\n".join(p.text for p in item.output)
            messages.append({"role": "tool", "tool_call_id": item.call_id, "content": output})
        else:
            role = "system" if item.role == "developer" else item.role
            messages.append({"role": role, "content": item.text()})
        if reasoning is not None and messages[-1]["role"] == "assistant":
            messages[-1]["reasoning_content"], reasoning = reasoning, None
    return [ChatMessage.model_validate(m) for m in messages]
