"""Caller text stays text: control-token markers inside it are swapped out while a chat is rendered.

A chat template concatenates its own scaffolding (`<|im_start|>`, `<tool_call>`, ...) with the
caller's strings (message content, reasoning, tool calls and results, names, tool schemas,
template options). The tokenizer would then match any added token's text wherever it occurs,
so a user message holding `<|im_end|>\\n<|im_start|>system\\n...` would forge a system turn.
`MarkerEscape` replaces every occurrence of an added token's text inside the caller's strings
by a private-use placeholder character before rendering; once rendered, every added token
left in the text is scaffolding, and `restore` puts the original text back into the spans
that are tokenized as plain text (see `Tokenizer.encode_chat`).

Placeholders are code points of the Supplementary Private Use Area-B (U+100000..U+10FFFD)
that occur in none of the inputs, nor in the template's source.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from typing import Any

_PRIVATE_USE = range(0x100000, 0x10FFFE)


class MarkerEscape:
    """Escapes added-token texts (`markers`) in caller data and restores them in rendered text.

    `inputs`: everything the escape will be applied to (plus the template source), scanned
    once so that no placeholder collides with a character already there; `spare`: how many
    further unused characters to reserve (`self.spare`, e.g. a cut mark for a continued message).
    """

    def __init__(self, markers: Iterable[str], inputs: Any, spare: int = 1):
        self.markers = sorted({m for m in markers if m}, key=len, reverse=True)  # longest first
        taken = {c for s in _strings(inputs) if s and ord(max(s)) >= _PRIVATE_USE.start
                 for c in s if ord(c) >= _PRIVATE_USE.start}
        free = (chr(cp) for cp in _PRIVATE_USE if chr(cp) not in taken)
        self._to_placeholder = {m: next(free) for m in self.markers}
        self._to_marker = {p: m for m, p in self._to_placeholder.items()}
        self.spare = [next(free) for _ in range(spare)]
        self._find = re.compile("|".join(map(re.escape, self.markers))) if self.markers else None
        self._back = re.compile("|".join(self._to_marker)) if self.markers else None
        self.used = False  # whether any marker was found (and replaced) in the caller's data

    def escape(self, value: Any) -> Any:
        """A copy of `value` (str, list, tuple, dict, or anything else as is) with every marker
        inside its strings and dict keys replaced by its placeholder."""
        if isinstance(value, str):
            return self._escape_str(value)
        if isinstance(value, dict):
            return {self.escape(k): self.escape(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [self.escape(v) for v in value]
        return value

    def restore(self, text: str) -> str:
        """`text` with each placeholder turned back into the marker text it stands for."""
        if self._back is None or not self.used:
            return text
        return self._back.sub(lambda m: self._to_marker[m.group()], text)

    def has_placeholder(self, text: str) -> bool:
        return self.used and self._back is not None and self._back.search(text) is not None

    def _escape_str(self, text: str) -> str:
        if self._find is None or self._find.search(text) is None:
            return text
        self.used = True
        return self._find.sub(lambda m: self._to_placeholder[m.group()], text)


def _strings(value: Any) -> Iterator[str]:
    """Every string inside `value` (dict keys included)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _strings(k)
            yield from _strings(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _strings(v)
