"""Incremental detokenization that never splits a multi-byte character.

Each new token is decoded together with a few tokens before it, and only the
text past that context is emitted; when the tail decodes to an incomplete
UTF-8 sequence (U+FFFD) nothing is emitted until the next token completes it.
"""

from __future__ import annotations

from llm_infer.runtime.tokenizer import Tokenizer

_CONTEXT_TOKENS = 5


class IncrementalDetokenizer:
    def __init__(self, tokenizer: Tokenizer, prompt_ids: list[int]):
        self.tokenizer = tokenizer
        # A little prompt context keeps tokenizers that strip a leading space (SentencePiece) honest.
        self._ids = list(prompt_ids[-_CONTEXT_TOKENS:])
        self._prefix = 0
        self._read = len(self._ids)

    def add(self, token_id: int, final: bool = False) -> str:
        """Append a token; return the newly completed text (possibly empty)."""
        self._ids.append(token_id)
        return self._advance(final)

    def flush(self) -> str:
        """At the end of the output, emit whatever is left, even an incomplete character."""
        return self._advance(final=True)

    def _advance(self, final: bool) -> str:
        before = self.tokenizer.decode(self._ids[self._prefix : self._read])
        after = self.tokenizer.decode(self._ids[self._prefix :])
        if len(after) <= len(before) or (after.endswith("\ufffd") and not final):
            return ""
        delta = after[len(before) :]
        self._prefix, self._read = self._read, len(self._ids)
        return delta
