"""Chat templates: a conversation, its tools and template options -> the prompt text.

The checkpoint's own Jinja template (`chat_template.jinja`, or `chat_template` in
`tokenizer_config.json`) renders in a sandboxed Jinja environment; ChatML is the fallback.
The template receives (as Hugging Face's `apply_chat_template` passes them):

- `messages`: OpenAI-shaped messages, roles system/user/assistant/tool (`developer`, OpenAI's
  newer name for instructions, is rendered as `system`; any other role is a ChatTemplateError,
  as OpenAI refuses it). `content` is a string
  (a list of `{"type": "text", "text": ...}` parts is joined with newlines; a missing or null
  content, allowed on assistant messages, becomes ""). Assistant `tool_calls` keep OpenAI's
  shape `[{"id", "type": "function", "function": {"name", "arguments"}}]`, with `arguments`
  parsed from its JSON string into a mapping when it holds a JSON object (Qwen2.5's templates
  need the mapping, Qwen3's take either). `reasoning_content`, `tool_call_id`, `name` and
  any other keys pass through unchanged.
- `tools`: the OpenAI tool list, or None.
- `add_generation_prompt`, `bos_token`, `eos_token`, and every `chat_template_kwargs` entry
  (e.g. `enable_thinking`) as a variable of its own; the kwargs may not set `RESERVED` names.

`continue_final_message` renders the conversation so that it ends inside the last (assistant)
message, with no end of turn after it: the message's content is rendered followed by a cut
mark, and the text is cut there (so it works with empty content and with templates that
rewrite what follows the content). It excludes `add_generation_prompt`, which defaults to
`not continue_final_message`.

A template that never mentions `tools` (`handles_tools` False: the default model's plain ChatML,
or the ChatML fallback) would drop the tools and render tool calls and results wrongly: for it
the conversation itself carries them (`tool_prompt.with_tools_in_messages`: a tools section in
the system prompt when tools are offered, `<tool_call>` blocks in assistant turns,
`<tool_response>` blocks in user turns), and the template gets `tools=None`.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from llm_infer.errors import UserError
from llm_infer.runtime.chat_markers import MarkerEscape
from llm_infer.runtime.tool_prompt import with_tools_in_messages

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# Variables the renderer sets itself (or template globals): chat_template_kwargs cannot override them.
RESERVED = frozenset({"messages", "tools", "documents", "add_generation_prompt", "continue_final_message",
                      "bos_token", "eos_token", "raise_exception", "strftime_now"})


class ChatTemplateError(UserError):
    """A conversation the template cannot render; `param` names the argument at fault (`messages`,
    `tools`, `chat_template_kwargs`, `continue_final_message`), as the server's 400 reports it."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param


def read_template_source(folder: Path, tokenizer_config: dict[str, Any]) -> str | None:
    """The checkpoint's chat template text: `chat_template.jinja`, else `tokenizer_config.json`'s
    `chat_template` (the template named "default" when it lists several); None when it has none."""
    template_file = folder / "chat_template.jinja"
    template = template_file.read_text() if template_file.is_file() else tokenizer_config.get("chat_template")
    if isinstance(template, list):  # named templates: take the default one
        template = next((t["template"] for t in template if t.get("name") == "default"), None)
    return template if isinstance(template, str) else None


class ChatTemplate:
    """One compiled chat template. `source` is None for a checkpoint without one (ChatML is used)."""

    def __init__(self, source: str | None, bos_token: str | None, eos_token: str | None, origin: str = ""):
        self.source = source if source is not None else CHATML_TEMPLATE
        self.bos_token, self.eos_token = bos_token or "", eos_token or ""
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                            extensions=["jinja2.ext.loopcontrols"])
        env.globals["raise_exception"] = _raise_template_error
        env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
        env.filters["tojson"] = _tojson
        try:
            self._template = env.from_string(self.source)
        except jinja2.TemplateSyntaxError as e:
            raise UserError(f"chat template of {origin or 'the tokenizer'} does not parse: {e.message}") from None

    def mentions(self, text: str) -> bool:
        """Whether the template's source contains `text` (e.g. '</think>': the model reasons)."""
        return text in self.source

    @property
    def handles_tools(self) -> bool:
        """Whether the template shows `tools` itself; if not, `render` puts them in the messages."""
        return self.mentions("tools")

    def offers_tools(self, tools: list[dict[str, Any]] | None, tool_choice: Any = None) -> bool:
        """Whether `render` writes our tools section into the conversation for this request:
        tools given, `tool_choice` not `none`, and a template that does not handle tools."""
        return bool(tools) and tool_choice != "none" and not self.handles_tools

    def render(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None,
               add_generation_prompt: bool | None = None, continue_final_message: bool = False,
               chat_template_kwargs: dict[str, Any] | None = None, escape: MarkerEscape | None = None,
               tool_choice: Any = None) -> str:
        """The prompt text of this conversation. With `escape`, every caller-supplied string
        (messages, tools, kwargs) is escaped before rendering, so the text holds placeholders
        where the caller's text had control-token markers (`escape.restore` undoes it).
        `tool_choice` (OpenAI's: None, `auto`, `none`, `required` or a named function) matters
        only to a template that does not handle tools: with `none` the tools are not offered.
        Raises ChatTemplateError (a UserError naming the argument) for malformed messages,
        reserved or non-string kwargs keys, a continued conversation whose last message is not
        the assistant's, both flags set, or a template error."""
        if add_generation_prompt is None:
            add_generation_prompt = not continue_final_message
        if add_generation_prompt and continue_final_message:
            raise ChatTemplateError("continue_final_message", "add_generation_prompt and continue_final_message "
                                    "cannot both be true (a continued message gets no new turn)")
        messages = normalize_messages(messages)
        if continue_final_message and messages[-1]["role"] != "assistant":
            raise ChatTemplateError("continue_final_message", "continue_final_message needs the last message to "
                                    f"be the assistant's (it is {messages[-1]['role']!r})")
        if tools is not None and (not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools)):
            raise ChatTemplateError("tools", "tools must be a list of {type: 'function', function: {...}} objects")
        if not self.handles_tools:  # the conversation carries tools, calls and results itself
            try:
                messages = with_tools_in_messages(messages, tools if self.offers_tools(tools, tool_choice) else None)
            except (TypeError, ValueError) as e:  # an offline caller's values that are not JSON data
                raise ChatTemplateError("messages", f"tools and tool calls must be JSON data ({e})"[:300]) from None
            tools = None
        kwargs = _check_kwargs(chat_template_kwargs)
        if escape is None:  # nothing to escape; still a cut mark that occurs nowhere
            escape = MarkerEscape((), [messages, tools, kwargs, self.source])
        messages, tools, kwargs = escape.escape(messages), escape.escape(tools), escape.escape(kwargs)
        cut = None
        if continue_final_message:
            cut = escape.spare[0]
            messages[-1] = {**messages[-1], "content": messages[-1]["content"] + cut}
        try:
            text = self._template.render(**kwargs, messages=messages, tools=tools or None,
                                         add_generation_prompt=add_generation_prompt,
                                         bos_token=self.bos_token, eos_token=self.eos_token)
        except RecursionError:
            raise
        except Exception as e:  # noqa: BLE001 (the template's own errors, or a type error on the caller's values)
            raise ChatTemplateError("messages", f"chat template failed: {type(e).__name__}: {e}"[:500]) from None
        if cut is not None:
            end = text.rfind(cut)
            if end < 0:
                raise ChatTemplateError("continue_final_message", "the chat template does not show the last "
                                        "message's content, so it cannot be continued")
            text = text[:end].replace(cut, "")
        return text


# Message roles -> the role the template sees.
ROLES = {"system": "system", "user": "user", "assistant": "assistant", "tool": "tool", "developer": "system"}


def normalize_messages(messages: Any) -> list[dict[str, Any]]:
    """Copies of the messages as templates take them (see the module docstring); a
    ChatTemplateError naming the message for anything malformed."""
    if not isinstance(messages, list) or not messages:
        raise ChatTemplateError("messages", "messages must be a non-empty list of {role, content} objects")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise ChatTemplateError("messages", f"message {i} must have a string 'role' and a string 'content'")
        if m["role"] not in ROLES:
            raise ChatTemplateError("messages", f"message {i} has role {m['role']!r}; roles are "
                                    f"{', '.join(ROLES)}")
        m = dict(m, role=ROLES[m["role"]])
        m["content"] = _content_text(i, m)
        if m.get("tool_calls") is not None:
            m["tool_calls"] = [_tool_call(i, j, call) for j, call in enumerate(_list(i, "tool_calls", m))]
        out.append(m)
    return out


def _content_text(i: int, m: dict[str, Any]) -> str:
    content = m.get("content")
    if isinstance(content, str):
        return content
    if content is None and m["role"] == "assistant":  # an assistant turn of tool calls only
        return ""
    if isinstance(content, list):
        parts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise ChatTemplateError("messages", f"message {i}: only text content parts "
                                        "({type: 'text', text: ...}) are supported")
            parts.append(part["text"])
        return "\n".join(parts)
    raise ChatTemplateError("messages", f"message {i} must have a string 'role' and a string 'content'")


def _list(i: int, key: str, m: dict[str, Any]) -> list[Any]:
    if not isinstance(m[key], list):
        raise ChatTemplateError("messages", f"message {i}: '{key}' must be a list")
    return m[key]


def _tool_call(i: int, j: int, call: Any) -> dict[str, Any]:
    """An OpenAI tool call with its `arguments` JSON string parsed when it holds an object."""
    function = call.get("function") if isinstance(call, dict) else None
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        raise ChatTemplateError("messages", f"message {i}: tool_calls[{j}] must be "
                                "{id, type: 'function', function: {name, arguments}}")
    arguments = function.get("arguments")
    if isinstance(arguments, str):
        try:
            parsed = json.loads(arguments)
        except json.JSONDecodeError:
            parsed = None
        if isinstance(parsed, dict):
            arguments = parsed
    return {**call, "type": call.get("type", "function"), "function": {**function, "arguments": arguments}}


def _check_kwargs(kwargs: Any) -> dict[str, Any]:
    if kwargs is None:
        return {}
    if not isinstance(kwargs, dict):
        raise ChatTemplateError("chat_template_kwargs", "chat_template_kwargs must map names to values")
    for key in kwargs:
        if not isinstance(key, str) or not key.isidentifier():
            raise ChatTemplateError("chat_template_kwargs",
                                    f"chat_template_kwargs: {str(key)[:40]!r} is not a variable name")
        if key in RESERVED:
            raise ChatTemplateError("chat_template_kwargs",
                                    f"chat_template_kwargs cannot set '{key}' (it has an argument of its own)")
    return dict(kwargs)


def _tojson(value: Any, indent: int | None = None, separators: tuple[str, str] | None = None,
            sort_keys: bool = False) -> str:
    return json.dumps(value, ensure_ascii=False, indent=indent, separators=separators, sort_keys=sort_keys)


def _raise_template_error(message: str) -> None:
    raise jinja2.TemplateError(message)
