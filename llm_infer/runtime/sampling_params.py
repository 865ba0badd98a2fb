"""Per-request sampling parameters: the one place where their ranges are checked."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from llm_infer.errors import UserError
from llm_infer.runtime.structured_output.params import StructuredOutputsParams


class SamplingParamsError(UserError):
    """An invalid sampling value; `param` names the field (the server's 400 reports it)."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(f"invalid sampling parameters: {message}")
        self.param = param


@dataclass
class SamplingParams:
    """How one request picks tokens and when it stops.

    temperature 0 is greedy. top_k 0 (or -1) and top_p 1 and min_p 0 disable
    those filters; top_p 0 keeps only the most likely token. A request with a `seed`
    samples the same tokens every run, whatever else is in the batch. Stop strings are
    not included in the text.

    Logit processing, before temperature and the filters, in this order: `logit_bias`
    (token id -> value added, -100..100, as OpenAI), `min_tokens` (end-of-sequence and
    `stop_token_ids` masked until that many tokens were generated; stop strings are not
    checked before either), `repetition_penalty` (Hugging Face: logits of tokens seen in the
    prompt or the output are divided by it when positive, multiplied when negative),
    `frequency_penalty` and `presence_penalty` (OpenAI: minus count x frequency and
    (count > 0) x presence, over output tokens). Greedy requests are processed too.

    `logprobs` (0..20): each generated token's log-probability, rank and the `logprobs`
    most likely alternatives; `prompt_logprobs` (0..20) the same for every prompt token
    after the first. Both report the model's own distribution (log-softmax of the raw
    logits, before processing and temperature, as vLLM does by default).
    `n` samples share the prompt's prefill; sample i draws with seed `seed + i` (so it
    equals a request of `n=1` with that seed). `max_tokens` 0 only scores the prompt.

    `structured_outputs` (a `StructuredOutputsParams` or its fields as a dict): the output must
    match a JSON schema, any JSON object, a regular expression, a choice or a grammar; tokens that
    cannot continue a match are masked before sampling (after the processing above), and once
    the match is complete only end-of-sequence tokens are allowed. A request that reaches
    `max_tokens` first ends with finish reason `length` and text that is a prefix of a match.
    In a chat request whose model reasons (a reasoning parser is on), the constraint applies
    to the answer after the reasoning; `thinking_budget` caps the reasoning tokens (the end of
    reasoning is forced when they are spent).

    `lora`: the name of a LoRA adapter loaded into the engine (`LLM.add_lora`, `lora_modules`); the
    request runs with it (None: the base model). Unknown names are refused when the request is added.
    """

    max_tokens: int = 16
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    logit_bias: dict[int, float] = field(default_factory=dict)
    min_tokens: int = 0
    logprobs: int | None = None
    prompt_logprobs: int | None = None
    n: int = 1
    structured_outputs: StructuredOutputsParams | None = None
    thinking_budget: int | None = None
    lora: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        for name in ("stop", "stop_token_ids"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, (list, tuple)):
                raise SamplingParamsError(name, f"{name} must be a list")
            setattr(self, name, list(value or []))
        if self.top_k == -1:
            self.top_k = 0
        self.logit_bias = dict(self.logit_bias or {})
        if isinstance(self.structured_outputs, dict):
            try:
                self.structured_outputs = StructuredOutputsParams(**self.structured_outputs)
            except TypeError as e:
                raise SamplingParamsError("structured_outputs", f"structured_outputs: {e}") from None
            except UserError as e:
                raise SamplingParamsError("structured_outputs", str(e)) from None
        checks = [
            ("max_tokens", _integer(self.max_tokens) and self.max_tokens >= 0, "max_tokens must be an integer >= 0"),
            ("temperature", _number(self.temperature) and 0 <= self.temperature < math.inf,
             "temperature must be a finite number >= 0"),
            ("top_k", _integer(self.top_k) and 0 <= self.top_k < 2**31,
             "top_k must be an integer in [0, 2^31) (or -1 to disable)"),
            ("top_p", _number(self.top_p) and 0 <= self.top_p <= 1, "top_p must be a number in [0, 1]"),
            ("min_p", _number(self.min_p) and 0 <= self.min_p <= 1, "min_p must be a number in [0, 1]"),
            ("seed", self.seed is None or _integer(self.seed) and -2**63 <= self.seed < 2**64,
             "seed must be an integer in [-2^63, 2^64)"),
            ("stop", all(isinstance(s, str) and s for s in self.stop), "stop must be non-empty strings"),
            ("stop_token_ids", all(_integer(t) and t >= 0 for t in self.stop_token_ids),
             "stop_token_ids must be token ids"),
            ("presence_penalty", _number(self.presence_penalty) and -2 <= self.presence_penalty <= 2,
             "presence_penalty must be a number in [-2, 2]"),
            ("frequency_penalty", _number(self.frequency_penalty) and -2 <= self.frequency_penalty <= 2,
             "frequency_penalty must be a number in [-2, 2]"),
            ("repetition_penalty", _number(self.repetition_penalty) and 0 < self.repetition_penalty < math.inf,
             "repetition_penalty must be a finite number > 0"),
            ("logit_bias", all(_integer(t) and t >= 0 and _number(b) and -100 <= b <= 100
                               for t, b in self.logit_bias.items()),
             "logit_bias must map token ids to numbers in [-100, 100]"),
            ("min_tokens", _integer(self.min_tokens) and 0 <= self.min_tokens <= max(self.max_tokens, 0),
             "min_tokens must be an integer in [0, max_tokens]"),
            ("logprobs", self.logprobs is None or _integer(self.logprobs) and 0 <= self.logprobs <= 20,
             "logprobs must be an integer in [0, 20]"),
            ("prompt_logprobs", self.prompt_logprobs is None or _integer(self.prompt_logprobs)
             and 0 <= self.prompt_logprobs <= 20, "prompt_logprobs must be an integer in [0, 20]"),
            ("n", _integer(self.n) and 1 <= self.n <= 128, "n must be an integer in [1, 128]"),
            ("structured_outputs", self.structured_outputs is None
             or isinstance(self.structured_outputs, StructuredOutputsParams),
             "structured_outputs must be a StructuredOutputsParams or a dict of its fields"),
            ("thinking_budget", self.thinking_budget is None or _integer(self.thinking_budget)
             and self.thinking_budget >= 0, "thinking_budget must be an integer >= 0"),
            ("lora", self.lora is None or isinstance(self.lora, str) and bool(self.lora),
             "lora must be the name of a loaded adapter"),
        ]
        for param, ok, message in checks:
            if not ok:
                raise SamplingParamsError(param, message)


def _integer(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _number(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and not math.isnan(x)


def needs_processing(p: SamplingParams) -> bool:
    """Whether the request's logits are changed before sampling (bias, min_tokens, penalties)."""
    return bool(p.logit_bias or p.min_tokens or p.presence_penalty or p.frequency_penalty
                or p.repetition_penalty != 1.0)
