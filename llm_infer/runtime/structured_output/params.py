"""What a request's output must match (a JSON schema, any JSON object, a regular expression, one
of a list of strings, or a grammar), and the plain data the sampling rank needs to enforce it.

The formats are turned into llguidance grammars (https://github.com/guidance-ai/llguidance,
docs/syntax.md and docs/json_schema.md): JSON schemas as llguidance's JSON-schema subset
(laid out as `JSON_LAYOUT` says)
(validated against this model's tokenizer on the controller, so an invalid or unsatisfiable
schema is a 400 before anything runs), regular expressions in Rust `regex` syntax, grammars in
Lark syntax or llama.cpp's GBNF (converted to Lark).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from llm_infer.errors import UserError

# JSON is laid out as Python's json.dumps writes it ({"a": 1, "b": [2, 3]}): free whitespace lets a
# model wander into endless newlines. A schema's own "x-guidance" options override this.
JSON_LAYOUT = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


@dataclass
class StructuredOutputsParams:
    """Exactly one of: `json` (a JSON schema, as a dict or its JSON text), `json_object` (any
    JSON object), `regex`, `choice` (the output is one of these strings), `grammar` (Lark or GBNF)."""

    json: dict[str, Any] | str | None = None
    json_object: bool = False
    regex: str | None = None
    choice: list[str] | None = None
    grammar: str | None = None

    def __post_init__(self) -> None:
        given = [name for name in ("json", "regex", "choice", "grammar") if getattr(self, name) is not None]
        given += ["json_object"] if self.json_object else []
        if len(given) != 1:
            raise UserError(f"structured outputs take exactly one of json, json_object, regex, choice, grammar "
                            f"(got {', '.join(given) or 'none'})")
        if self.choice is not None and (not isinstance(self.choice, list) or not self.choice
                                        or not all(isinstance(c, str) and c for c in self.choice)):
            raise UserError("structured outputs: choice must be a non-empty list of non-empty strings")
        for name in ("regex", "grammar"):
            if getattr(self, name) is not None and not isinstance(getattr(self, name), str):
                raise UserError(f"structured outputs: {name} must be a string")
        if self.json is not None and not isinstance(self.json, (dict, str)):
            raise UserError("structured outputs: json must be a JSON schema (an object)")

    def to_grammar(self) -> str:
        """The llguidance grammar text (a `{"grammars": [...]}` JSON document). Raises UserError
        for text that is not a JSON schema or a grammar llguidance can convert."""
        try:
            return self._to_grammar()
        except RecursionError:  # json.dumps of a schema nested past Python's recursion limit
            raise UserError("the JSON schema is nested too deeply") from None
        except ValueError as e:  # llguidance's own parse errors (e.g. its JSON nesting limit of 128)
            raise UserError(f"invalid structured output: {e}") from None

    def _to_grammar(self) -> str:
        from llguidance import LLMatcher
        from llguidance.gbnf_to_lark import any_to_lark

        if self.json_object:
            return LLMatcher.grammar_from_json_schema({"type": "object"}, defaults=JSON_LAYOUT)
        if self.json is not None:
            schema = self.json
            if isinstance(schema, str):
                try:
                    schema = json.loads(schema)
                except json.JSONDecodeError as e:
                    raise UserError(f"the JSON schema is not valid JSON: {e}") from None
            if not isinstance(schema, (dict, bool)):
                raise UserError("the JSON schema must be an object")
            return LLMatcher.grammar_from_json_schema(json.dumps(schema), defaults=JSON_LAYOUT)
        if self.regex is not None:
            return LLMatcher.grammar_from_regex(self.regex)
        if self.choice is not None:
            return LLMatcher.grammar_from_lark("start: " + " | ".join(json.dumps(c) for c in self.choice))
        try:
            return LLMatcher.grammar_from_lark(any_to_lark(self.grammar))
        except Exception as e:  # the GBNF converter raises plain exceptions
            raise UserError(f"the grammar is neither Lark nor GBNF: {e}") from None


@dataclass(frozen=True)
class ConstraintSpec:
    """Sent to the sampling rank once per request. `grammar`: the llguidance grammar (None: no
    grammar). Reasoning (chat requests with a reasoning parser): `reasoning_end_id` is the token
    that closes the reasoning (`</think>`), `in_reasoning` whether the output starts inside the
    reasoning, `reasoning_start_id` (only when it does not) the token that opens reasoning if it
    is the output's first token (`<think>`; None: the output is all answer), `thinking_budget` how
    many reasoning tokens may be generated before the end token is forced (None: no limit). The
    grammar applies only once the reasoning has ended (or never began)."""

    grammar: str | None = None
    reasoning_end_id: int | None = None
    in_reasoning: bool = False
    thinking_budget: int | None = None
    reasoning_start_id: int | None = None


@dataclass(frozen=True)
class ReasoningStart:
    """How a chat request's output begins (the reasoning parser decides from the prompt):
    `end_token_id` closes the reasoning (`</think>`); `in_reasoning` whether the prompt left the
    model inside it; otherwise, `start_token_id` when the reply may still open it with its first
    token (`<think>`: the prompt neither opened nor closed it), None when it is all answer."""

    end_token_id: int
    in_reasoning: bool
    start_token_id: int | None = None


def constraint_spec(grammar: str | None, thinking_budget: int | None,
                    reasoning: ReasoningStart | None) -> ConstraintSpec | None:
    """The constraint a request carries to the sampling rank (None: nothing to enforce). Raises
    UserError for a thinking budget on a request that has no reasoning to limit."""
    if thinking_budget is not None and reasoning is None:
        from llm_infer.runtime.sampling_params import SamplingParamsError  # imports this module

        raise SamplingParamsError("thinking_budget", "thinking_budget needs a chat request (a plain prompt has no "
                                  "reasoning to limit) to a model whose reasoning parser can force its end")
    in_reasoning = reasoning is not None and reasoning.in_reasoning
    start_id = reasoning.start_token_id if reasoning is not None and not in_reasoning else None
    if grammar is None and (thinking_budget is None or not (in_reasoning or start_id is not None)):
        return None
    return ConstraintSpec(grammar, reasoning.end_token_id if reasoning else None, in_reasoning, thinking_budget,
                          start_id)
