"""Prompt lookup: propose the tokens that followed the most recent earlier occurrence of the
sequence's longest matching suffix (up to `max_n` tokens) in its prompt and output so far."""

from __future__ import annotations


class NgramIndex:
    """Per sequence: for n = 1..max_n, where each n-gram last ended; updated as tokens arrive."""

    def __init__(self, max_n: int, min_n: int = 1):
        self.max_n, self.min_n = max_n, min_n
        self.tokens: list[int] = []
        self.last_end: list[dict[tuple[int, ...], int]] = [dict() for _ in range(max_n + 1)]

    def extend(self, tokens: list[int]) -> None:
        for t in tokens:
            self.tokens.append(t)
            end = len(self.tokens)
            # Record the n-grams ending just before the new token: the suffix itself must not match itself.
            for n in range(1, self.max_n + 1):
                if end - 1 - n >= 0:
                    self.last_end[n][tuple(self.tokens[end - 1 - n : end - 1])] = end - 1

    def propose(self, k: int) -> list[int]:
        """Up to k tokens continuing the longest suffix (of at least min_n tokens) seen before; []
        when there is none."""
        for n in range(min(self.max_n, len(self.tokens)), self.min_n - 1, -1):
            end = self.last_end[n].get(tuple(self.tokens[-n:]))
            if end is not None:
                return self.tokens[end : end + k]
        return []
