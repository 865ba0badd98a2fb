"""Token scores in OpenAI's two shapes: the completions' legacy lists and the chat's `content` entries.

A token's string is its id decoded on its own (as vLLM does), so a token that holds part of a
multi-byte character reads as U+FFFD; its `bytes` (chat) are the token's exact UTF-8 bytes, which
join across tokens into the character (as OpenAI's do). `text_offset` counts the characters of
the token strings before each token, from the start of its part of the returned text (the echoed
prompt starts at 0, the completion at the prompt text's length).
"""

from __future__ import annotations

from typing import Any

from llm_infer.runtime.outputs import TokenLogprob
from llm_infer.runtime.token_bytes import TokenBytes
from llm_infer.runtime.tokenizer import Tokenizer

_FLOOR = -9999.0  # -inf is not JSON; vLLM reports it as this


def _lp(value: float) -> float:
    return max(value, _FLOOR)


class TokenText:
    """Each token id's string and exact bytes, cached (the vocabulary bounds the caches)."""

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer
        self._strings: dict[int, str] = {}
        self._bytes: dict[int, list[int]] = {}
        self._exact_bytes = TokenBytes(tokenizer.backend)

    def text(self, token_id: int) -> str:
        s = self._strings.get(token_id)
        if s is None:
            s = self._strings[token_id] = self.tokenizer.decode([token_id], skip_special_tokens=False)
        return s

    def bytes(self, token_id: int) -> list[int]:
        b = self._bytes.get(token_id)
        if b is None:
            b = self._bytes[token_id] = list(self._exact_bytes(token_id))
        return b

    def completion_logprobs(self, ids: list[int], scores: list[TokenLogprob | None], offset: int) -> dict[str, Any]:
        """The legacy lists of /v1/completions for `ids` (a None score: the first prompt token);
        each `top_logprobs` dict holds the token itself and the `logprobs` most likely ones, so
        its largest value is always the most likely token's (lm-eval's greedy check)."""
        tokens = [self.text(t) for t in ids]
        offsets = []
        for s in tokens:
            offsets.append(offset)
            offset += len(s)
        top: list[dict[str, float] | None] = []
        for token, score in zip(tokens, scores):
            if score is None:
                top.append(None)
                continue
            alternatives = {token: _lp(score.logprob)}
            for t, lp in score.top:  # tokens that read the same (U+FFFD) keep the most likely's value
                key = self.text(t)
                alternatives[key] = max(alternatives.get(key, _FLOOR), _lp(lp))
            top.append(alternatives)
        return {"tokens": tokens, "token_logprobs": [None if s is None else _lp(s.logprob) for s in scores],
                "top_logprobs": top, "text_offset": offsets}

    def chat_logprobs(self, scores: list[TokenLogprob]) -> dict[str, Any]:
        """The `logprobs` of a chat choice: `{"content": [{token, logprob, bytes, top_logprobs}]}`."""
        def entry(token_id: int, logprob: float) -> dict[str, Any]:
            return {"token": self.text(token_id), "logprob": _lp(logprob), "bytes": self.bytes(token_id)}

        return {"content": [{**entry(s.token_id, s.logprob), "top_logprobs": [entry(t, lp) for t, lp in s.top]}
                            for s in scores]}


def join_completion_logprobs(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Legacy logprob lists one after the other (the echoed prompt's, then the completion's)."""
    return {key: [v for part in parts for v in part[key]] for key in parts[0]}
