"""Per-request sampling parameters."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from llm_infer.errors import UserError


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
            (isinstance(self.max_tokens, int) and self.max_tokens >= 1, "max_tokens must be an integer >= 1"),
            (_number(self.temperature) and 0 <= self.temperature < math.inf, "temperature must be a finite number >= 0"),
            (isinstance(self.top_k, int) and 0 <= self.top_k < 2**31,
             "top_k must be an integer in [0, 2^31) (or -1 to disable)"),
            (_number(self.top_p) and 0 < self.top_p <= 1, "top_p must be in (0, 1]"),
            (_number(self.min_p) and 0 <= self.min_p <= 1, "min_p must be in [0, 1]"),
            (self.seed is None or isinstance(self.seed, int), "seed must be an integer"),
            (all(isinstance(s, str) and s for s in self.stop), "stop must be non-empty strings"),
            (all(isinstance(t, int) and t >= 0 for t in self.stop_token_ids), "stop_token_ids must be token ids"),
        ]
        for ok, message in checks:
            if not ok:
                raise UserError(f"invalid sampling parameters: {message}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def _number(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and not math.isnan(x)
