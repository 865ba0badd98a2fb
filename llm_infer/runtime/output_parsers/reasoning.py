"""Reasoning parser `qwen3`: a reply's `<think>...</think>` text is its reasoning, the rest its answer.

Qwen3's templates either let the model open the block itself (the hybrid models' template
ends the prompt with `<|im_start|>assistant\n`: a thinking reply starts with `<think>`, and
Qwen3-Instruct-2507, under a template that still mentions `</think>`, answers at once), or
open it in the prompt (Qwen3-Thinking-2507's template ends it with `<think>\n`), or close an
empty block in the prompt (`enable_thinking: false`). So the prompt decides where the reply
starts (`reply_start`), from what follows its last `<|im_start|>`: a `</think>` -> the answer;
a `<think>` without one -> the reasoning; neither -> undecided, and the reply's first text
decides: `<think>` at its very start opens the reasoning, anything else (blanks included) is
the answer (the engine's constraint state applies the same rule to the first token). Reasoning runs up to
the first `</think>` (a reply that never closes it is all reasoning); the rest is the answer,
where tags are plain text.

Whitespace next to the tags is part of neither: the reasoning is stripped, the answer after
`</think>` starts at its first non-blank character (Qwen's templates strip both when the turn
goes back into the history). An answer that starts the reply keeps its text as written.

    prompt: <think> open ────────────────> reasoning ── </think> ──> answer ──> content | tool calls
    prompt: neither ── reply starts <think> ──┘                      ^
                    └─ anything else ────────────────────────────────┘
    prompt: </think> closed ─────────────────────────────────────────┘
"""

from __future__ import annotations

from collections.abc import Sequence

from llm_infer.runtime.output_parsers.tags import held_tail
from llm_infer.runtime.tokenizer import Tokenizer

_UNDECIDED, _OPENING, _REASONING, _AFTER, _ANSWER = range(5)
REASONING, ANSWER, UNDECIDED = "reasoning", "answer", "undecided"  # where a reply starts


class Qwen3ReasoningParser:
    """The `<think>`/`</think>` format over one tokenizer: its end token, the prompt's state,
    and a `ReasoningStream` per reply."""

    name = "qwen3"
    start_tag, end_tag = "<think>", "</think>"
    turn_start = "<|im_start|>"

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer
        self.start_token_id = tokenizer.token_id(self.start_tag)  # None when `<think>` is no single token
        self.end_token_id = tokenizer.token_id(self.end_tag)  # None when `</think>` is no single token
        self._turn_start_id = tokenizer.token_id(self.turn_start)

    def reply_start(self, prompt_token_ids: Sequence[int]) -> str:
        """Where a reply to this prompt starts (REASONING, ANSWER or UNDECIDED), from what follows
        the prompt's last `<|im_start|>` (the whole prompt when it has none). Compares token ids
        where the tags are single tokens (a `</think>` the user typed is text, not that token),
        the decoded text otherwise."""
        ids = list(prompt_token_ids)
        starts = [i for i, t in enumerate(ids) if t == self._turn_start_id]
        tail = ids[starts[-1] + 1:] if starts else ids
        text = None if self.start_token_id is not None and self.end_token_id is not None else self.tokenizer.decode(tail)

        def has(tag: str, token_id: int | None) -> bool:
            return token_id in tail if token_id is not None else tag in text

        if has(self.end_tag, self.end_token_id):
            return ANSWER
        return REASONING if has(self.start_tag, self.start_token_id) else UNDECIDED

    def stream(self, start: str) -> ReasoningStream:
        return ReasoningStream(self.start_tag, self.end_tag, start)


class ReasoningStream:
    """One reply's text, split as it arrives into (reasoning, answer) deltas. A partial tag (and
    the whitespace before it) is held back until the next text decides it, so neither side ever
    sees part of a tag; `finish` releases what is held. Chunking never changes the result."""

    def __init__(self, start_tag: str, end_tag: str, start: str):
        self.start_tag, self.end_tag = start_tag, end_tag
        self._state = {REASONING: _OPENING, ANSWER: _ANSWER, UNDECIDED: _UNDECIDED}[start]
        self._opened = False  # the reply's own `<think>` was seen
        self._pending = ""

    def feed(self, text: str) -> tuple[str, str]:
        """(reasoning delta, answer delta) after `text`."""
        self._pending += text
        reasoning, answer = "", ""
        while True:
            state = self._state
            if state == _UNDECIDED:  # the reply's first text decides, as its first token does in the engine
                if self._pending.startswith(self.start_tag):
                    self._pending, self._opened, self._state = self._pending[len(self.start_tag):], True, _OPENING
                    continue
                if self.start_tag.startswith(self._pending):  # nothing yet, or part of the tag
                    return reasoning, answer
                self._state = _ANSWER
            elif state == _OPENING:  # before the first reasoning text: blanks and one `<think>` are skipped
                rest = self._pending.lstrip()
                if not self._opened and rest.startswith(self.start_tag):
                    self._pending, self._opened = rest[len(self.start_tag):], True
                    continue
                if not rest or (not self._opened and self.start_tag.startswith(rest)):
                    self._pending = rest
                    return reasoning, answer
                self._pending, self._state = rest, _REASONING
            elif state == _REASONING:
                end = self._pending.find(self.end_tag)
                if end < 0:
                    emit = len(self._pending) - held_tail(self._pending, [self.end_tag])
                    reasoning += self._pending[:emit]
                    self._pending = self._pending[emit:]
                    return reasoning, answer
                reasoning += self._pending[:end].rstrip()
                self._pending, self._state = self._pending[end + len(self.end_tag):], _AFTER
            elif state == _AFTER:
                self._pending = self._pending.lstrip()
                if not self._pending:
                    return reasoning, answer
                self._state = _ANSWER
            else:
                answer += self._pending
                self._pending = ""
                return reasoning, answer

    def finish(self, cut: bool = False) -> tuple[str, str]:
        """The deltas left at the end of the reply: held text is what it is (an unclosed tag is text),
        unless the reply was `cut` short (max_tokens) on part of a tag, which is then dropped."""
        pending, self._pending = self._pending, ""
        if cut and self._state in (_UNDECIDED, _OPENING, _REASONING):
            pending = pending[: len(pending) - held_tail(pending, [self.start_tag, self.end_tag])]
        if self._state == _UNDECIDED:
            return "", pending
        if self._state in (_OPENING, _REASONING):
            return pending.rstrip(), ""
        return "", pending if self._state == _ANSWER else ""

    @property
    def in_reasoning(self) -> bool:
        return self._state in (_OPENING, _REASONING)

