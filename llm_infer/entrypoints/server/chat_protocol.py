"""The chat route's nested request objects: messages (with tool calls, tool results, reasoning),
tools and tool_choice, as OpenAI shapes them; and what the chat template receives from them.

Like every nested object of a body, these refuse fields they do not declare (a 400 naming the
field), so nothing that would change the prompt is dropped silently. A tool_choice of
`required` or a named function needs a grammar, `parallel_tool_calls: false` one call at most
(`with_tool_choice`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from llm_infer.entrypoints.server.errors import ApiError
from llm_infer.errors import UserError
from llm_infer.runtime.sampling_params import SamplingParams
from llm_infer.runtime.structured_output.tool_calls import one_call_stop, tool_call_constraint
from llm_infer.runtime.tokenizer import Tokenizer

_NESTED = ConfigDict(strict=True, extra="forbid")


class TextPart(BaseModel):
    """One part of a message's content; only text parts are supported."""

    model_config = _NESTED
    type: Literal["text"]
    text: str


class FunctionCall(BaseModel):
    """The function an assistant's tool call names, with its arguments as JSON text."""

    model_config = _NESTED
    name: str
    arguments: str = Field(description="the arguments as a JSON string")


class ToolCallIn(BaseModel):
    """A tool call in an assistant message of the history."""

    model_config = _NESTED
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(BaseModel):
    """One chat message. `content` is a string or a list of text parts (joined by newlines); it may
    be null or absent only on an assistant message with `tool_calls`. A tool result is
    `{role: 'tool', tool_call_id, content}`; an assistant turn may carry its `reasoning_content`."""

    model_config = _NESTED
    role: str
    content: str | list[TextPart] | None = Field(
        None, description="a string or a list of {type: 'text', text: string} parts")
    name: str | None = None
    tool_calls: list[ToolCallIn] | None = Field(
        None, description="a list of {id, type: 'function', function: {name, arguments}} objects")
    tool_call_id: str | None = None
    reasoning_content: str | None = None

    def template_message(self, index: int, field: str = "messages") -> dict[str, Any]:
        """The message as the chat template takes it; a 400 naming it (in the body's `field`) when it
        is incomplete."""
        if self.tool_calls is not None and self.role != "assistant":
            raise ApiError(400, f"'{field}': {field}[{index}].tool_calls is only for assistant messages",
                           param=field)
        if self.content is None and not (self.role == "assistant" and self.tool_calls):
            raise ApiError(400, f"'{field}': {field}[{index}].content is required", param=field)
        if self.content is None or isinstance(self.content, str):
            text = self.content or ""
        else:
            text = "\n".join(p.text for p in self.content)
        message: dict[str, Any] = {"role": self.role, "content": text}
        extra = self.model_dump(include={"name", "tool_calls", "tool_call_id", "reasoning_content"},
                                exclude_none=True)
        return {**message, **extra}


class FunctionDefinition(BaseModel):
    """A tool's function: its name, what it does, and a JSON schema of its parameters."""

    model_config = _NESTED
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = Field(None, description="a JSON schema (an object)")
    strict: bool | None = None


class Tool(BaseModel):
    """One entry of `tools`."""

    model_config = _NESTED
    type: Literal["function"]
    function: FunctionDefinition


class FunctionName(BaseModel):
    model_config = _NESTED
    name: str


class NamedToolChoice(BaseModel):
    """`tool_choice` naming the function the reply must call."""

    model_config = _NESTED
    type: Literal["function"]
    function: FunctionName


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice


def template_tools(tools: list[Tool] | None) -> list[dict[str, Any]] | None:
    """The tool list as the chat template takes it (OpenAI's shape, nulls left out)."""
    return [t.model_dump(exclude_none=True) for t in tools] if tools else None


def check_tool_choice(tools: list[Tool] | None, choice: ToolChoice | None) -> str | dict[str, Any]:
    """The effective choice in OpenAI's shape: `none`, `auto`, `required`, or `{type: 'function',
    function: {name}}`. OpenAI's defaults: `auto` with tools, `none` without (`auto` without tools
    is `none`). A 400 for a choice that needs tools there are not."""
    if choice is None or choice == "auto":
        return "auto" if tools else "none"
    if isinstance(choice, NamedToolChoice):
        names = [t.function.name for t in tools or []]
        if choice.function.name not in names:
            raise ApiError(400, f"'tool_choice': function {choice.function.name[:60]!r} is not among the tools "
                                f"({', '.join(names) or 'none given'})", param="tool_choice")
        return choice.model_dump()
    if choice == "required" and not tools:
        raise ApiError(400, "'tool_choice': 'required' needs tools", param="tool_choice")
    return choice


@dataclass
class ChatPrompt:
    """A conversation as the model sees it: its token ids, and the tools and effective tool_choice
    (`check_tool_choice`) it was rendered with."""

    ids: list[int]
    tools: list[dict[str, Any]] | None
    choice: str | dict[str, Any]


def chat_prompt(tokenizer: Tokenizer, messages: list[ChatMessage], tools: list[Tool] | None,
                tool_choice: ToolChoice | None, add_generation_prompt: bool | None = None,
                continue_final_message: bool = False, chat_template_kwargs: dict[str, Any] | None = None,
                messages_field: str = "messages") -> ChatPrompt:
    """The prompt every route that takes a conversation builds (chat, responses, tokenize), so they
    agree token for token; a 400 naming the field at fault (`messages_field`: what the route calls
    its messages)."""
    dicts = [m.template_message(i, messages_field) for i, m in enumerate(messages)]
    tool_dicts = template_tools(tools)
    choice = check_tool_choice(tools, tool_choice)
    try:
        ids = tokenizer.encode_chat(dicts, add_generation_prompt, tools=tool_dicts, tool_choice=choice,
                                    continue_final_message=continue_final_message,
                                    chat_template_kwargs=chat_template_kwargs)
    except UserError as e:
        param = getattr(e, "param", "messages")
        param = messages_field if param == "messages" else param
        raise ApiError(400, f"'{param}': {e}", param=param) from None
    return ChatPrompt(ids, tool_dicts, choice)


def with_tool_choice(params: SamplingParams, tools: list[dict[str, Any]], choice: str | dict[str, Any],
                     tool_parser: bool = True, parallel: bool = True) -> SamplingParams:
    """The sampling parameters `choice` asks for. `required` or a named function: the reply is
    constrained to calls of the tools by `structured_output.tool_calls.tool_call_constraint` (one
    call unless `parallel`); `auto` without `parallel`: the reply ends after its first call. A 400
    with another output constraint, or without a tool-call parser (`tool_parser` False: the calls
    could not be returned as `tool_calls`)."""
    if choice == "none" or (choice == "auto" and parallel):
        return params
    field = "tool_choice" if choice != "auto" else "parallel_tool_calls"
    if not tool_parser:
        what = "'required' and named functions need" if choice != "auto" else "false needs"
        raise ApiError(400, f"'{field}': {what} a tool-call parser to return the calls (this server's "
                            "chat.tool_call_parser is off)", param=field)
    if choice == "auto":
        return dataclasses.replace(params, stop=one_call_stop(params.stop))
    if params.structured_outputs is not None:
        raise ApiError(400, "'tool_choice': 'required' and named functions cannot be combined with another output "
                            "constraint (response_format, structured_outputs)", param="tool_choice")
    try:
        return dataclasses.replace(params, structured_outputs=tool_call_constraint(tools, choice, parallel))
    except UserError as e:
        raise ApiError(400, f"'tool_choice': {e}", param="tool_choice") from None
