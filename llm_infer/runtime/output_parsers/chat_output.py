"""A chat reply's text -> reasoning, content and tool calls, whole or as it streams.

One state machine per reply (per sample): the reasoning parser splits the text into reasoning
and answer; the answer goes through the tool-call parser, which splits it into content and
tool calls. Tags inside the reasoning are reasoning. The whole reply's parse is the stream's
result fed at once, so a stream's deltas always join into the non-streamed message.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from llm_infer.errors import UserError
from llm_infer.runtime.output_parsers.reasoning import REASONING, UNDECIDED, Qwen3ReasoningParser, ReasoningStream
from llm_infer.runtime.output_parsers.tool_calls import HermesToolParser, ToolCall, ToolCallStream
from llm_infer.runtime.structured_output.params import ReasoningStart
from llm_infer.runtime.tokenizer import Tokenizer

REASONING_PARSERS = {"qwen3": Qwen3ReasoningParser}
TOOL_CALL_PARSERS = {"hermes": HermesToolParser}


@dataclass
class ChatDelta:
    """What one piece of text added: reasoning and content text, and the tool calls completed
    (with their index among the reply's calls)."""

    reasoning: str = ""
    content: str = ""
    tool_calls: list[tuple[int, ToolCall]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.reasoning or self.content or self.tool_calls)

    def __iadd__(self, other: ChatDelta) -> ChatDelta:
        self.reasoning += other.reasoning
        self.content += other.content
        self.tool_calls += other.tool_calls
        return self


@dataclass
class ParsedMessage:
    """A whole reply: `content` and `reasoning_content` are None when empty (as OpenAI's
    `content` is for a reply of tool calls only)."""

    content: str | None
    reasoning_content: str | None = None
    tool_calls: list[ToolCall] = field(default_factory=list)

    def finish_reason(self, reason: str | None) -> str | None:
        """OpenAI's `tool_calls` for a reply that ended by itself (`stop`) after calling tools."""
        return "tool_calls" if self.tool_calls and reason == "stop" else reason


class ChatOutputStream:
    """One reply's parser state: `feed` each text delta, `finish` at the end."""

    def __init__(self, reasoning: ReasoningStream | None, tools: ToolCallStream | None):
        self._reasoning, self._tools = reasoning, tools
        self.message = ParsedMessage(None)
        self._content = self._thoughts = ""

    def feed(self, text: str) -> ChatDelta:
        reasoning, answer = self._reasoning.feed(text) if self._reasoning else ("", text)
        return self._record(reasoning, *(self._tools.feed(answer) if self._tools else (answer, [])))

    def finish(self, cut: bool = False) -> ChatDelta:
        """Release held text; afterwards `message` is the whole reply. `cut`: the reply was cut short
        (max_tokens), so a tag it was writing is dropped rather than shown (an unfinished tool call
        never is)."""
        reasoning, answer = self._reasoning.finish(cut) if self._reasoning else ("", "")
        delta = ChatDelta()
        if self._tools:
            content, calls = self._tools.feed(answer)
            delta += self._record(reasoning, content, calls)
            delta += self._record("", *self._tools.finish(cut))
        else:
            delta += self._record(reasoning, answer, [])
        self.message.content = self._content or None
        self.message.reasoning_content = self._thoughts or None
        return delta

    def _record(self, reasoning: str, content: str, calls: list[ToolCall]) -> ChatDelta:
        self._thoughts += reasoning
        self._content += content
        first = len(self.message.tool_calls)
        self.message.tool_calls += calls
        return ChatDelta(reasoning, content, list(enumerate(calls, start=first)))


class ChatOutputParser:
    """The parsers a model's chat replies go through, chosen once from the config.

    `reasoning` / `tool_calls`: a parser name, `auto` (`qwen3` when the chat template mentions
    `</think>`; `hermes` when it mentions `<tool_call>`, or when it does not handle tools at all,
    since tools are then offered in our Hermes-format tools section: `runtime/tool_prompt.py`),
    or None (off).
    """

    def __init__(self, tokenizer: Tokenizer, reasoning: str | None = "auto", tool_calls: str | None = "auto"):
        template = tokenizer.chat_template
        if reasoning == "auto":
            reasoning = "qwen3" if template.mentions(Qwen3ReasoningParser.end_tag) else None
        if tool_calls == "auto":
            hermes = template.mentions(HermesToolParser.start_tag) or not template.handles_tools
            tool_calls = "hermes" if hermes else None
        if reasoning is not None and reasoning not in REASONING_PARSERS:
            raise UserError(f"unknown reasoning parser {reasoning!r} (known: {', '.join(REASONING_PARSERS)})")
        if tool_calls is not None and tool_calls not in TOOL_CALL_PARSERS:
            raise UserError(f"unknown tool-call parser {tool_calls!r} (known: {', '.join(TOOL_CALL_PARSERS)})")
        self.reasoning = REASONING_PARSERS[reasoning](tokenizer) if reasoning else None
        self.tool_calls = TOOL_CALL_PARSERS[tool_calls]() if tool_calls else None

    def budget_problem(self) -> str | None:
        """Why a thinking budget cannot be enforced for this model's chat replies (None: it can)."""
        if self.reasoning is None:
            return ("this model has no reasoning parser (chat.reasoning_parser is off, or `auto` found no "
                    "</think> in its chat template)")
        if self.reasoning.end_token_id is None:
            return (f"{self.reasoning.end_tag} is not a single token in this model's tokenizer, so the end of the "
                    "reasoning cannot be forced")
        return None

    def reasoning_start(self, prompt_token_ids: Sequence[int]) -> ReasoningStart | None:
        """How a reply to this prompt begins, for the engine (thinking budget, constraints that
        apply after the reasoning); None without a reasoning parser or a single end token. An
        undecided start without a single `<think>` token counts as the answer there."""
        if self.reasoning is None or self.reasoning.end_token_id is None:
            return None
        start = self.reasoning.reply_start(prompt_token_ids)
        return ReasoningStart(self.reasoning.end_token_id, start == REASONING,
                              self.reasoning.start_token_id if start == UNDECIDED else None)

    def stream(self, prompt_token_ids: Sequence[int], parse_tools: bool = True) -> ChatOutputStream:
        """A fresh state for one reply to this prompt; `parse_tools` False leaves tool-call
        markup in the content (a request without tools, or with `tool_choice: none`)."""
        reasoning = self.reasoning.stream(self.reasoning.reply_start(prompt_token_ids)) if self.reasoning else None
        tools = self.tool_calls.stream() if self.tool_calls and parse_tools else None
        return ChatOutputStream(reasoning, tools)

    def parse(self, text: str, prompt_token_ids: Sequence[int], parse_tools: bool = True,
              cut: bool = False) -> ParsedMessage:
        """A whole reply's text as a message (`cut`: it ended at max_tokens, see `ChatOutputStream.finish`)."""
        stream = self.stream(prompt_token_ids, parse_tools)
        stream.feed(text)
        stream.finish(cut)
        return stream.message
