"""Text <-> token ids through the `tokenizers` library, and chat prompts as token ids.

Chat rendering is `runtime/chat_template.py`'s; `encode_chat` tokenizes the rendered prompt so
that only the template's own scaffolding can become control tokens (see `encode_chat`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer as HFTokenizer

from llm_infer.errors import UserError
from llm_infer.runtime.chat_markers import MarkerEscape
from llm_infer.runtime.chat_template import CHATML_TEMPLATE, ChatTemplate, ChatTemplateError, read_template_source

__all__ = ["CHATML_TEMPLATE", "Tokenizer"]


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def _token_text(value: Any) -> str | None:
    if isinstance(value, dict):
        return value.get("content")
    return value


class Tokenizer:
    def __init__(self, path: str | Path):
        path = Path(path)
        file = path / "tokenizer.json"
        if not file.is_file():
            raise UserError(f"no tokenizer.json in {path}")
        self._tok = HFTokenizer.from_file(str(file))
        cfg = _read_json(path / "tokenizer_config.json")
        gen = _read_json(path / "generation_config.json")
        model = _read_json(path / "config.json")
        self.bos_token = _token_text(cfg.get("bos_token"))
        self.eos_token = _token_text(cfg.get("eos_token"))
        eos_ids: set[int] = set()
        for source in (gen.get("eos_token_id"), model.get("eos_token_id")):
            if isinstance(source, int):
                eos_ids.add(source)
            elif isinstance(source, list):
                eos_ids.update(source)
        if self.eos_token is not None and self._tok.token_to_id(self.eos_token) is not None:
            eos_ids.add(self._tok.token_to_id(self.eos_token))
        self.eos_token_ids = sorted(eos_ids)
        source = read_template_source(path, cfg)
        self.has_chat_template = source is not None
        self.chat_template = ChatTemplate(source, self.bos_token, self.eos_token, origin=str(path))
        added = self._tok.get_added_tokens_decoder()
        self._added_ids = frozenset(added)
        self._added_texts = [t.content for t in added.values()]
        self._strips = {i: (t.lstrip, t.rstrip) for i, t in added.items() if t.lstrip or t.rstrip}

    @property
    def backend(self) -> HFTokenizer:
        """The `tokenizers` object underneath (its raw vocabulary pieces give tokens' exact bytes)."""
        return self._tok

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        self._check_text(text)
        return self._tok.encode(text, add_special_tokens=add_special_tokens).ids

    @staticmethod
    def _check_text(text: str) -> None:
        if not text.isascii():
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:  # a lone surrogate: not text the tokenizer can take
                raise UserError("the text is not valid Unicode (it contains an unpaired surrogate)") from None

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return self._tok.decode(ids, skip_special_tokens=skip_special_tokens)

    def token_id(self, text: str) -> int | None:
        """The id of the token whose text is exactly `text` (an added token such as `</think>`), or None."""
        return self._tok.token_to_id(text)

    def render_chat(self, messages: list[dict[str, Any]], add_generation_prompt: bool | None = None, *,
                    tools: list[dict[str, Any]] | None = None, continue_final_message: bool = False,
                    chat_template_kwargs: dict[str, Any] | None = None, tool_choice: Any = None) -> str:
        """The conversation rendered by the chat template, as text (see `ChatTemplate.render`;
        `add_generation_prompt` defaults to `not continue_final_message`; `tool_choice` `none`
        keeps a template that does not handle tools from being offered them). Tokenizing this
        text with `encode` would let markers in the messages become control tokens: `encode_chat`
        does not."""
        text, escape = self._render(messages, add_generation_prompt, tools, continue_final_message,
                                    chat_template_kwargs, tool_choice)
        return escape.restore(text)

    def encode_chat(self, messages: list[dict[str, Any]], add_generation_prompt: bool | None = None, *,
                    tools: list[dict[str, Any]] | None = None, continue_final_message: bool = False,
                    chat_template_kwargs: dict[str, Any] | None = None, tool_choice: Any = None) -> list[int]:
        """The prompt's token ids, where text from the caller is always tokenized as text.

        Every added token's text inside the caller's strings (message content, reasoning, tool
        calls and results, names, tool schemas, template options, and the tools section and
        blocks written for a template that does not handle tools) is swapped for a placeholder
        before rendering (`MarkerEscape`), so the added tokens left in the rendered text are the
        template's own. The text is tokenized as `encode(text, add_special_tokens=False)` would;
        the stretches between scaffolding tokens that hold placeholders are then re-tokenized
        with the caller's text restored and no added-token matching (normalizer, pre-tokenizer,
        model: what the tokenizer does between added tokens). Without markers in the caller's
        text the ids are exactly `encode(render_chat(...), add_special_tokens=False)`.
        """
        text, escape = self._render(messages, add_generation_prompt, tools, continue_final_message,
                                    chat_template_kwargs, tool_choice)
        self._check_text(text)
        encoding = self._tok.encode(text, add_special_tokens=False)
        if not escape.used:
            return encoding.ids
        ids: list[int] = []
        run: list[int] = []  # ids of the text since the last scaffolding token
        start, strip_left = 0, False
        for token, (begin, end) in zip(encoding.ids, encoding.offsets):
            if token not in self._added_ids:
                run.append(token)
                continue
            lstrip, rstrip = self._strips.get(token, (False, False))
            ids += self._text_run(text[start:begin], run, escape, strip_left, lstrip)
            ids.append(token)
            run, start, strip_left = [], end, rstrip
        return ids + self._text_run(text[start:], run, escape, strip_left, False)

    def _render(self, messages: Any, add_generation_prompt: bool | None, tools: Any, continue_final_message: bool,
                kwargs: Any, tool_choice: Any) -> tuple[str, MarkerEscape]:
        """The rendered text with the caller's markers escaped, and the escape that restores them."""
        try:
            escape = MarkerEscape(self._added_texts, [messages, tools, kwargs, self.chat_template.source])
            return self.chat_template.render(messages, tools, add_generation_prompt, continue_final_message,
                                             kwargs, escape, tool_choice), escape
        except RecursionError:
            raise ChatTemplateError("messages", "the messages, tools or chat_template_kwargs are nested too "
                                    "deeply to render") from None

    def _text_run(self, segment: str, ids: list[int], escape: MarkerEscape, strip_left: bool,
                  strip_right: bool) -> list[int]:
        """The ids of the text between two scaffolding tokens: as tokenized (`ids`), or, where it
        holds placeholders, its restored text tokenized with no added-token matching. Whitespace
        that a neighbouring added token absorbs (its lstrip/rstrip) is left out, as `encode` does."""
        if not escape.has_placeholder(segment):
            return ids
        segment = segment.lstrip() if strip_left else segment
        segment = segment.rstrip() if strip_right else segment
        return self._encode_as_text(escape.restore(segment))

    def _encode_as_text(self, text: str) -> list[int]:
        normalizer, pre_tokenizer = self._tok.normalizer, self._tok.pre_tokenizer
        text = normalizer.normalize_str(text) if normalizer is not None else text
        pieces = [p for p, _ in pre_tokenizer.pre_tokenize_str(text)] if pre_tokenizer is not None else [text]
        return [t.id for piece in pieces for t in self._tok.model.tokenize(piece)]
