"""What a request gives back: text, tokens, why it stopped, and its timings."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from llm_infer.runtime.output_parsers.chat_output import ParsedMessage


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
class TokenLogprob:
    """One position's score: the token there, its log-probability and rank (1: the most
    likely) under the model's distribution, and the `top` alternatives as (token id,
    log-probability), most likely first."""

    token_id: int
    logprob: float
    rank: int
    top: list[tuple[int, float]] = field(default_factory=list)


@dataclass
class CompletionOutput:
    """One of a request's `n` samples."""

    index: int
    text: str
    token_ids: list[int]
    finish_reason: str | None  # "stop", "length", "abort" or None while running
    finished: bool = False
    new_text: str = ""  # text that became visible with this update (for streaming)
    new_token_ids: list[int] = field(default_factory=list)  # tokens appended with this update
    logprobs: list[TokenLogprob] | None = None  # one per token, when the request asked for them
    message: ParsedMessage | None = None  # LLM.chat: the reply as content, reasoning_content and tool_calls


@dataclass
class RequestOutput:
    """A request's state after a step (streaming) or at the end. `outputs` holds its samples:
    all of them at the end, the ones that changed in a streaming update. `text`, `token_ids`,
    `finish_reason`, `new_text` and `logprobs` are the first sample's (all there is when n=1)."""

    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    finished: bool  # every sample finished
    metrics: RequestMetrics | None = None
    logits: torch.Tensor | None = field(default=None, repr=False)  # [positions, vocab] when requested
    prompt_logprobs: list[TokenLogprob | None] | None = None  # None for the first prompt token
    embedding: torch.Tensor | None = field(default=None, repr=False)  # float32 [dim]: an embedding request's

    @property
    def text(self) -> str:
        return self.outputs[0].text

    @property
    def token_ids(self) -> list[int]:
        return self.outputs[0].token_ids

    @property
    def finish_reason(self) -> str | None:
        return self.outputs[0].finish_reason

    @property
    def new_text(self) -> str:
        return self.outputs[0].new_text

    @property
    def logprobs(self) -> list[TokenLogprob] | None:
        return self.outputs[0].logprobs


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
    restarts: int = 0  # worker sets started after a failure
    recovered_requests: int = 0  # running requests recomputed on new workers

    @property
    def prefix_hit_rate(self) -> float:
        return self.prefix_hit_tokens / self.prefix_query_tokens if self.prefix_query_tokens else 0.0

    @property
    def spec_acceptance(self) -> float:
        return self.spec_accepted / self.spec_proposed if self.spec_proposed else 0.0
