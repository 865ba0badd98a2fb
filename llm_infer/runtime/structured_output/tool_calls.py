"""Grammars that force tool calls, for `tool_choice: required` and a named function.

The calls are written in the Hermes format Qwen's chat templates teach the model
(https://qwen.readthedocs.io/en/latest/framework/function_call.html):

    <tool_call>
    {"name": "get_weather", "arguments": {"city": "Paris"}}
    </tool_call>

`required`: one or more such blocks (separated by a newline), each naming one of `tools` with
arguments valid for its `parameters` schema (exactly one with `parallel_tool_calls: false`); a
named function: exactly one block calling it. `auto` with `parallel_tool_calls: false` needs no
grammar: the reply stops at the first `</tool_call>` (`one_call_stop`), and the parser takes the
block the stop left unclosed as the call.
"""

from __future__ import annotations

import json
from typing import Any

from llm_infer.errors import UserError
from llm_infer.runtime.structured_output.params import JSON_LAYOUT, StructuredOutputsParams

OPEN, CLOSE = "<tool_call>\n", "\n</tool_call>"
END_TAG = "</tool_call>"


def _call_schema(function: dict[str, Any]) -> dict[str, Any]:
    parameters = function.get("parameters") or {"type": "object", "properties": {}}
    return {"type": "object", "properties": {"name": {"const": function["name"]}, "arguments": parameters},
            "required": ["name", "arguments"], "additionalProperties": False}


def one_call_stop(stop: list[str]) -> list[str]:
    """`tool_choice: auto` with `parallel_tool_calls: false`: the stop strings that end the reply
    after its first call (a reasoning that writes `</tool_call>` ends it too)."""
    return stop if END_TAG in stop else [*stop, END_TAG]


def tool_call_constraint(tools: list[dict[str, Any]], tool_choice: Any,
                         parallel: bool = True) -> StructuredOutputsParams | None:
    """The output constraint for `tool_choice` over OpenAI-shaped `tools`
    (`[{"type": "function", "function": {"name", "description", "parameters"}}]`): None for
    `auto`/`none`/absent, else a Lark grammar (`required`: one call unless `parallel`). Raises
    UserError for a named function that is not among the tools, or `required` without tools."""
    if tool_choice in (None, "auto", "none"):
        return None
    functions = [t["function"] for t in tools or [] if t.get("type", "function") == "function"]
    if tool_choice == "required":
        if not functions:
            raise UserError("tool_choice 'required' needs at least one tool")
        chosen, many = functions, parallel
    else:
        name = tool_choice.get("function", {}).get("name") if isinstance(tool_choice, dict) else None
        chosen = [f for f in functions if f["name"] == name]
        if not chosen:
            raise UserError(f"tool_choice names the function {name!r}, which is not among the tools")
        many = False
    schema = {"anyOf": [_call_schema(f) for f in chosen]} if len(chosen) > 1 else _call_schema(chosen[0])
    schema["x-guidance"] = JSON_LAYOUT
    call = f"{json.dumps(OPEN)} %json {json.dumps(schema)} {json.dumps(CLOSE)}"
    return StructuredOutputsParams(grammar=f"start: call ({json.dumps(chr(10))} call)*\ncall: {call}\n" if many
                                   else f"start: {call}\n")
