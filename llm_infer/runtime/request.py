"""One request as the controller tracks it: its tokens and their progress through the KV cache,
its blocks, its speculative proposals, and the text it has produced so far.

The scheduler reads the token counts and the block manager the block table; the engine
appends tokens and text. Nothing here is a tensor except the logits kept for requests
that asked for them.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field

import torch

from llm_infer.runtime.detokenizer import IncrementalDetokenizer
from llm_infer.runtime.outputs import TokenLogprob
from llm_infer.runtime.pooling import PoolingParams
from llm_infer.runtime.sampling_params import SamplingParams
from llm_infer.runtime.speculative.ngram import NgramIndex
from llm_infer.runtime.structured_output.params import ConstraintSpec


PLACEHOLDER = -1  # a token id not known on the host yet: sampled by a step still in flight


class RequestStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass
class SpecState:
    """Speculative decoding, per request: acceptance so far and what the drafter has seen."""

    rate: float = 0.7  # running acceptance rate (exponential average), for adaptive K
    ngrams: NgramIndex | None = None  # method ngram: the request's n-gram index
    draft_from: int = 0  # method draft: positions below this are in the draft model's cache
    num_draft: int = 0  # tokens the drafter proposes at the end of the request's next sampling step


@dataclass(eq=False)
class Request:
    seq_id: int  # the engine's own id, which workers know the request by
    request_id: str  # the caller's id
    prompt_token_ids: list[int]
    params: SamplingParams
    seed: int
    return_logits: bool = False
    prompt: str | None = None  # the prompt text, when it came as text
    detokenizer: IncrementalDetokenizer | None = None
    status: RequestStatus = RequestStatus.WAITING
    output_token_ids: list[int] = field(default_factory=list)
    # Tokens whose K/V are in the cache (or, under overlapped scheduling, are being computed by a
    # step in flight); the rest are computed by coming steps.
    num_computed_tokens: int = 0
    # Overlapped scheduling: tokens sampled by steps still in flight, not yet appended. They count
    # as positions (`num_tokens`) so the next step can be planned with them as `PLACEHOLDER` inputs.
    num_placeholders: int = 0
    # Speculative decoding: proposed tokens to verify after the pending one in the next step.
    spec_token_ids: list[int] = field(default_factory=list)
    spec: SpecState | None = None
    block_table: list[int] = field(default_factory=list)
    # Prefix caching: keys of the full blocks of token_ids (as far as computed), and how many
    # leading blocks of block_table were already offered to the cache.
    block_hashes: list[bytes] = field(default_factory=list)
    num_cached_blocks: int = 0
    finish_reason: str | None = None
    num_preemptions: int = 0
    arrival_time: float = field(default_factory=time.perf_counter)
    first_scheduled_time: float | None = None
    first_token_time: float | None = None
    finish_time: float | None = None
    text: str = ""  # the output text (stop strings cut off)
    streamed: int = 0  # characters of `text` already reported as new text
    stop_from: int = 0  # stop strings match only from here (the text before min_tokens was reached)
    logits: list[torch.Tensor] = field(default_factory=list, repr=False)  # float32 [positions, vocab] pieces
    index: int = 0  # which of the request's `n` samples this is
    forks: list[Request] = field(default_factory=list)  # samples 1..n-1, started once the prompt is computed
    processed: bool = False  # logits processed before sampling (penalties, bias, min_tokens)
    processor_known: bool = False  # the sampling rank has this request's processing state
    constraint: ConstraintSpec | None = None  # grammar / reasoning gate, enforced on the sampling rank
    constraint_known: bool = False  # the sampling rank has this request's constraint state
    logprobs: list[TokenLogprob] | None = None  # of the output tokens, when asked for
    prompt_logprobs: list[TokenLogprob | None] | None = None  # of the prompt tokens, when asked for
    # Embedding requests (runtime/pooling.py): how to pool, and the sum of the parts pooled so far.
    pooling: PoolingParams | None = None
    pooled: torch.Tensor | None = field(default=None, repr=False)
    lora_id: int = 0  # its LoRA adapter (runtime/lora/registry.py); 0: the base model

    @property
    def token_ids(self) -> list[int]:
        return self.prompt_token_ids + self.output_token_ids

    @property
    def num_tokens(self) -> int:
        """Positions so far: prompt, output, and tokens sampled by steps in flight (placeholders)."""
        return len(self.prompt_token_ids) + len(self.output_token_ids) + self.num_placeholders

    @property
    def num_known_tokens(self) -> int:
        """Tokens whose ids the controller has (`token_ids`): `num_tokens` without placeholders."""
        return len(self.prompt_token_ids) + len(self.output_token_ids)

    @property
    def num_outputs(self) -> int:
        """Output tokens so far, counting those still in flight."""
        return len(self.output_token_ids) + self.num_placeholders

    @property
    def plain(self) -> bool:
        """Nothing about it needs the host between steps (no logit processing, constraint,
        logprobs or logits): its next step may be planned before its token is known."""
        return (not self.processed and self.constraint is None and self.logprobs is None
                and not self.return_logits and self.prompt_logprobs is None and self.pooling is None)

    @property
    def num_pending_tokens(self) -> int:
        """Tokens known but not yet in the KV cache (speculative proposals not counted)."""
        return self.num_tokens - self.num_computed_tokens

    @property
    def num_tokens_with_spec(self) -> int:
        return self.num_tokens + len(self.spec_token_ids)

    @property
    def finished(self) -> bool:
        return self.status is RequestStatus.FINISHED

    @property
    def needs_prompt_rows(self) -> bool:
        """Whether its prompt positions' logits, or (mean and cls pooling) hidden states, are wanted
        (so cached blocks cannot be reused)."""
        return (self.return_logits or self.prompt_logprobs is not None
                or (self.pooling is not None and self.pooling.needs_every_row))

    def tokens_between(self, start: int, end: int) -> list[int]:
        """Token ids of positions [start, end); `PLACEHOLDER` for those still in flight."""
        known = self.num_known_tokens
        if end > known:
            head = self.tokens_between(start, known) if start < known else []
            return head + [PLACEHOLDER] * (end - max(start, known))
        n_prompt = len(self.prompt_token_ids)
        if end <= n_prompt:
            return self.prompt_token_ids[start:end]
        if start >= n_prompt:
            return self.output_token_ids[start - n_prompt : end - n_prompt]
        return self.prompt_token_ids[start:] + self.output_token_ids[: end - n_prompt]

    def keep_logits(self, start: int, rows: torch.Tensor) -> None:
        """Record the logits of positions `start..start + rows - 1`; a recomputation after
        preemption starts again at an earlier position and replaces what followed it."""
        kept = 0
        for i, piece in enumerate(self.logits):
            if kept + piece.shape[0] >= start:
                self.logits[i:] = [piece[: start - kept]] if start > kept else []
                break
            kept += piece.shape[0]
        self.logits.append(rows)

    def add_pooled(self, part: torch.Tensor) -> None:
        """A step's pooled part (runtime/pooling.py): added to the parts before it."""
        self.pooled = part if self.pooled is None else self.pooled + part

    def forget_worker_state(self) -> None:
        """The workers were replaced: nothing kept on them for this request survives. Every flag
        saying "the workers already know this request" is reset here, so the next sampled row
        sends the sampling rank what it needs again (`SamplingBatch.first_seen`)."""
        self.processor_known = False
        self.constraint_known = False

    def reset_for_recompute(self) -> None:
        """Preempted: its KV is gone; it will be prefilled again from position 0."""
        self.num_computed_tokens = 0
        self.pooled = None
        self.spec_token_ids = []
        if self.spec is not None:
            self.spec.draft_from = 0
        self.status = RequestStatus.WAITING
        self.num_preemptions += 1
