"""Tools for a chat template that knows none: the conversation carries them instead.

A template that never mentions `tools` (the default model's plain ChatML, or the ChatML fallback)
would drop the tool list, the assistant's `tool_calls` and the meaning of `tool` messages. For
such a template the conversation is rewritten before rendering, in the Hermes format Qwen
documents (https://qwen.readthedocs.io/en/latest/framework/function_call.html), which is also
the format the `hermes` parser reads and the `tool_choice` grammar forces:

- offered tools (tools given, `tool_choice` not `none`): a tools section of our own wording is
  added to the system prompt (after the first message's text when that message is the system
  one, else as a new first system message): each tool as one line of JSON inside
  `<tools></tools>`, then how to call one, a `<tool_call>` block holding
  `{"name": ..., "arguments": {...}}`;
- an assistant message's `tool_calls`: `<tool_call>` blocks after its content, as the model
  would have written them;
- `tool` messages: one user message per run of consecutive results, each result's content in
  a `<tool_response>` block.

Everything this writes becomes message content, so it goes through the same marker escaping as
the caller's text (`MarkerEscape`): an added token's text in it is tokenized as text.
"""

from __future__ import annotations

import json
from typing import Any

from llm_infer.runtime.structured_output.tool_calls import CLOSE, OPEN

RESPONSE_OPEN, RESPONSE_CLOSE = "<tool_response>\n", "\n</tool_response>"


def tools_section(tools: list[dict[str, Any]]) -> str:
    """The system-prompt text that offers `tools` (OpenAI's tool list) to the model."""
    lines = "\n".join(json.dumps(tool, ensure_ascii=False) for tool in tools)
    example = json.dumps({"name": "<the function's name>", "arguments": {"<parameter>": "<value>"}})
    return ("# Tools\n\nThese functions are available to help with the user's request. Their "
            f"signatures, one JSON object per line, are inside <tools></tools>:\n<tools>\n{lines}\n</tools>\n\n"
            "To call a function, reply with a JSON object naming it and giving its arguments inside "
            f"<tool_call></tool_call> tags, one block per call:\n{OPEN}{example}{CLOSE}")


def call_blocks(tool_calls: list[dict[str, Any]]) -> str:
    """An assistant's (normalized) tool calls as `<tool_call>` blocks, one per line."""
    blocks = []
    for call in tool_calls:
        function = call["function"]
        body = {"name": function["name"], "arguments": function.get("arguments")}
        blocks.append(OPEN + json.dumps(body, ensure_ascii=False) + CLOSE)
    return "\n".join(blocks)


def with_tools_in_messages(messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """`messages` (normalized: string content, parsed tool-call arguments) rewritten so that a
    template knowing only role and content shows the tools (`tools`: the offered tools, or None),
    the assistant's calls and the tool results (see the module docstring)."""
    out: list[dict[str, Any]] = []
    results = False  # whether out[-1] is a user turn of tool results (made here, so ours to extend)
    for m in messages:
        if m["role"] == "tool":
            block = RESPONSE_OPEN + m["content"] + RESPONSE_CLOSE
            if results:
                out[-1]["content"] += "\n" + block
            else:
                out.append({"role": "user", "content": block})
            results = True
            continue
        results = False
        if m["role"] == "assistant" and m.get("tool_calls"):
            blocks = call_blocks(m["tool_calls"])
            m = {k: v for k, v in m.items() if k != "tool_calls"}
            m["content"] = m["content"] + "\n" + blocks if m["content"] else blocks
        out.append(m)
    if tools:
        section = tools_section(tools)
        if out[0]["role"] == "system":
            first = out[0]["content"]
            out[0] = {**out[0], "content": f"{first}\n\n{section}" if first else section}
        else:
            out.insert(0, {"role": "system", "content": section})
    return out
