"""What a request gives back: text, tokens, why it stopped, and its timings."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class RequestMetrics:
    arrival_time: float
    first_scheduled_time: float | None = None
    first_token_time: float | None = None
    finish_time: float | None = None
    num_prompt_tokens: int = 0
    num_output_tokens: int = 0
    num_preemptions: int = 0

    @property
    def ttft(self) -> float | None:
        """Seconds from arrival to the first output token."""
        return None if self.first_token_time is None else self.first_token_time - self.arrival_time

    @property
    def decode_time(self) -> float | None:
        if self.finish_time is None or self.first_token_time is None:
            return None
        return self.finish_time - self.first_token_time


@dataclass
class RequestOutput:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    text: str
    token_ids: list[int]
    finished: bool
    finish_reason: str | None  # "stop", "length", "abort" or None while running
    new_text: str = ""  # text that became visible with this update (for streaming)
    metrics: RequestMetrics | None = None
    logits: torch.Tensor | None = field(default=None, repr=False)  # [positions, vocab] when requested


@dataclass(frozen=True)
class EngineSnapshot:
    """The engine's counters at one moment (what the server's /metrics shows; safe to read from any thread)."""

    running: int = 0
    waiting: int = 0
    kv_usage: float = 0.0
    prefix_query_tokens: int = 0
    prefix_hit_tokens: int = 0
    spec_proposed: int = 0
    spec_accepted: int = 0

    @property
    def prefix_hit_rate(self) -> float:
        return self.prefix_hit_tokens / self.prefix_query_tokens if self.prefix_query_tokens else 0.0

    @property
    def spec_acceptance(self) -> float:
        return self.spec_accepted / self.spec_proposed if self.spec_proposed else 0.0
