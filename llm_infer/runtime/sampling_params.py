"""Per-request sampling parameters: the one place where their ranges are checked."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from llm_infer.errors import UserError


class SamplingParamsError(UserError):
    """An invalid sampling value; `param` names the field (the server's 400 reports it)."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(f"invalid sampling parameters: {message}")
        self.param = param


@dataclass
class SamplingParams:
    """How one request picks tokens and when it stops.

    temperature 0 is greedy. top_k 0 (or -1) and top_p 1 and min_p 0 disable
    those filters. A request with a `seed` samples the same tokens every run,
    whatever else is in the batch. Stop strings are not included in the text.
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

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        self.stop = list(self.stop)
        self.stop_token_ids = list(self.stop_token_ids)
        if self.top_k == -1:
            self.top_k = 0
        checks = [
            ("max_tokens", _integer(self.max_tokens) and self.max_tokens >= 1, "max_tokens must be an integer >= 1"),
            ("temperature", _number(self.temperature) and 0 <= self.temperature < math.inf,
             "temperature must be a finite number >= 0"),
            ("top_k", _integer(self.top_k) and 0 <= self.top_k < 2**31,
             "top_k must be an integer in [0, 2^31) (or -1 to disable)"),
            ("top_p", _number(self.top_p) and 0 < self.top_p <= 1, "top_p must be a number in (0, 1]"),
            ("min_p", _number(self.min_p) and 0 <= self.min_p <= 1, "min_p must be a number in [0, 1]"),
            ("seed", self.seed is None or _integer(self.seed) and -2**63 <= self.seed < 2**64,
             "seed must be an integer in [-2^63, 2^64)"),
            ("stop", all(isinstance(s, str) and s for s in self.stop), "stop must be non-empty strings"),
            ("stop_token_ids", all(_integer(t) and t >= 0 for t in self.stop_token_ids),
             "stop_token_ids must be token ids"),
        ]
        for param, ok, message in checks:
            if not ok:
                raise SamplingParamsError(param, message)


def _integer(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _number(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and not math.isnan(x)
