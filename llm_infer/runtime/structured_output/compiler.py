"""Grammars compiled against one model's tokenizer, with a cache.

The llguidance tokenizer is built from the checkpoint's `tokenizer.json` (the `tokenizers`
library's serialization, no transformers), with the model's end-of-sequence ids: a grammar that
is complete allows exactly those. Compiling a grammar makes an `LLMatcher`; the cache keeps one
fresh matcher per grammar text and hands out deep copies (a copy costs ~20 µs, a compile
~0.7 ms for a small JSON schema on this project's CPU: benchmarks/results/grammar_engines.json).
"""

from __future__ import annotations

import json
from collections import OrderedDict
from pathlib import Path

from llm_infer.errors import UserError
from llm_infer.runtime.models.model_config import ModelConfig
from llm_infer.runtime.structured_output.lark_terminals import regex_terminals
from llm_infer.runtime.token_bytes import TokenBytes
from llm_infer.runtime.tokenizer import Tokenizer


def end_of_sequence_ids(tokenizer: Tokenizer, model_config: ModelConfig) -> list[int]:
    """The tokens that end a request: the tokenizer's end-of-sequence tokens and the model config's."""
    return sorted(set(tokenizer.eos_token_ids) | set(model_config.eos_token_ids))


class GrammarCompiler:
    def __init__(self, tokenizer: Tokenizer, vocab_size: int, eos_token_ids: list[int], cache_size: int = 256):
        """`vocab_size`: the model's logits width (ids past the tokenizer's vocabulary are never allowed)."""
        from llguidance import LLTokenizer, TokenizerWrapper

        # Bitmask width: the larger of the logits and the tokenizer (a test model may have fewer
        # rows than its tokenizer has tokens); ids past the logits are cut off when applied.
        self.vocab_size = max(vocab_size, tokenizer.vocab_size)
        self.eos_token_ids = list(eos_token_ids)
        self.ll_tokenizer = LLTokenizer(TokenizerWrapper(_Vocabulary(tokenizer, self.vocab_size, self.eos_token_ids)),
                                        n_vocab=self.vocab_size, eos_token=self.eos_token_ids or None)
        self._cache: OrderedDict[str, object] = OrderedDict()
        self._cache_size = cache_size
        self.compiled = 0  # grammars compiled (cache misses), for tests and stats

    @classmethod
    def for_model(cls, model_dir: Path, model_config: ModelConfig) -> GrammarCompiler:
        """The compiler a worker builds for its model: end-of-sequence ids as the engine takes them
        (the tokenizer's and the model config's)."""
        tokenizer = Tokenizer(model_dir)
        return cls(tokenizer, model_config.vocab_size, end_of_sequence_ids(tokenizer, model_config))

    def check(self, grammar: str, user_grammar: bool = False) -> None:
        """Raise UserError naming the problem if `grammar` is invalid or cannot match anything; for a
        `user_grammar` (Lark or GBNF from a request), also if one of its regex terminals matches the
        empty string (see `lark_terminals.py`; a lone top-level regex may, it cannot recurse)."""
        from llguidance import LLMatcher

        error = LLMatcher.validate_grammar(grammar, self.ll_tokenizer)
        if error:
            raise UserError(f"invalid structured output: {_one_line(error)}")
        for lark in _lark_texts(grammar) if user_grammar else []:
            for terminal in regex_terminals(lark):
                if LLMatcher(self.ll_tokenizer, LLMatcher.grammar_from_lark(f"start: {terminal}")).is_accepting():
                    raise UserError(f"invalid structured output: the grammar's terminal {terminal[:60]} can match the "
                                    "empty string (zero-width terminals are not allowed, as in Lark)")

    def matcher(self, grammar: str):
        """A fresh `llguidance.LLMatcher` for `grammar` (compiled once, then copied)."""
        from llguidance import LLMatcher

        template = self._cache.get(grammar)
        if template is None:
            template = LLMatcher(self.ll_tokenizer, grammar)
            if template.is_error():
                raise UserError(f"invalid structured output: {_one_line(template.get_error())}")
            self.compiled += 1
            self._cache[grammar] = template
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(grammar)
        return template.deep_copy()


def _lark_texts(grammar: str) -> list[str]:
    """The Lark sources inside an llguidance grammar: a `{"grammars": [...]}` document's
    `lark_grammar` entries, or the text itself when it is Lark already."""
    try:
        parts = json.loads(grammar).get("grammars", [])
    except ValueError:
        return [grammar]
    return [p["lark_grammar"] for p in parts if p.get("lark_grammar")]


class _Vocabulary:
    """The vocabulary as llguidance's `TokenizerWrapper` reads it: each token's exact bytes, the
    special tokens (which grammar text never matches), and a tokenize function. Built from the
    `tokenizers` vocabulary rather than handing llguidance `tokenizer.json`, because llguidance
    treats every added token as special: Qwen's `<tool_call>` and `<think>` are added but not
    special (plain text to the model), and a grammar's "<tool_call>" must accept them."""

    def __init__(self, tokenizer: Tokenizer, vocab_size: int, eos_token_ids: list[int]):
        exact = TokenBytes(tokenizer.backend)
        self.tokens = [exact(i) for i in range(vocab_size)]
        self.special_token_ids = exact.special_ids
        self.eos_token_id = eos_token_ids[0] if eos_token_ids else None
        self.bos_token_id = None
        self._tokenizer = tokenizer

    def __call__(self, text: bytes) -> list[int]:
        return self._tokenizer.backend.encode(text.decode("utf-8", errors="replace"), add_special_tokens=False).ids


def _one_line(error: str, limit: int = 300) -> str:
    text = " ".join(error.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
