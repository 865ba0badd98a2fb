"""Text that could still become a tag: what a streaming parser must hold back."""

from __future__ import annotations

from collections.abc import Iterable


def partial_tag_length(text: str, tags: Iterable[str]) -> int:
    """The length of the longest suffix of `text` that is a proper, non-empty prefix of one of
    `tags` (0 if none): those characters may be the start of a tag the next text completes."""
    best = 0
    for tag in tags:
        for n in range(min(len(tag) - 1, len(text)), best, -1):
            if text.endswith(tag[:n]):
                best = n
                break
    return best


def held_tail(text: str, tags: Iterable[str]) -> int:
    """How many trailing characters of `text` to hold back: a partial tag and the whitespace
    before it (whitespace next to a tag belongs to no section)."""
    partial = partial_tag_length(text, tags)
    body = text[: len(text) - partial]
    return partial + len(body) - len(body.rstrip())
