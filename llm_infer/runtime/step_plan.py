"""The message the controller sends to every worker each step, and the one that comes back.

Plain Python data (no tensors), cheap to pickle and never changed after it is built: the
new tokens of each scheduled request (speculative proposals last), how much context each
has, its block table, the sampling parameters of the requests that produce tokens this
step, and what the drafter must see before it proposes for the next step. Workers derive
positions and cache slots from these.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from llm_infer.runtime.pooling import step_pooling
from llm_infer.runtime.structured_output.params import ConstraintSpec

if TYPE_CHECKING:
    import torch

    from llm_infer.runtime.lora.registry import SlotLoad

    from llm_infer.runtime.outputs import TokenLogprob
    from llm_infer.runtime.request import Request


@dataclass
class SamplingBatch:
    """Sampling parameters of the rows that sample, in plan order."""

    temperature: list[float] = field(default_factory=list)
    top_k: list[int] = field(default_factory=list)
    top_p: list[float] = field(default_factory=list)
    min_p: list[float] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    # Index of the token being sampled within its request's output: with the
    # seed it fixes the random draw, so results do not depend on batching.
    output_index: list[int] = field(default_factory=list)
    # Logit processing (see SamplingParams and logits_processors.py): whether the row is
    # processed, its penalties, and the tokens masked while `min_tokens_left` tokens remain.
    process: list[bool] = field(default_factory=list)
    presence_penalty: list[float] = field(default_factory=list)
    frequency_penalty: list[float] = field(default_factory=list)
    repetition_penalty: list[float] = field(default_factory=list)
    min_tokens_left: list[int] = field(default_factory=list)
    suppress: list[list[int]] = field(default_factory=list)
    logprobs: list[int] = field(default_factory=list)  # top alternatives to report; -1: no logprobs
    # Requests processed for the first time (or again, by new workers after a restart):
    # row -> (prompt token ids, logit bias, output token ids so far).
    first_seen: dict[int, tuple[list[int], dict[int, float], list[int]]] = field(default_factory=dict)
    # Output constraints (structured_output/): whether the row has one, and, for requests the
    # sampling rank does not know yet, row -> (its constraint, output token ids so far).
    constrained: list[bool] = field(default_factory=list)
    constraints: dict[int, tuple[ConstraintSpec, list[int]]] = field(default_factory=dict)

    @property
    def all_greedy(self) -> bool:
        return all(t == 0 for t in self.temperature)


@dataclass(frozen=True)
class DraftPlan:
    """What the sampling rank's drafter (speculative method draft or layers) does at the end of
    the step: for request i, process `catch_up[i]` (tokens up to the step's last non-speculative
    input token that the draft model has not seen) followed by the tokens the step appends,
    then propose `num_draft[i]` tokens (0: nothing) for the next step."""

    method: str
    num_draft: list[int]
    catch_up: list[list[int]]


@dataclass(frozen=True)
class StepPlan:
    seq_ids: list[int]
    input_ids: list[int]  # new tokens of all requests, concatenated
    query_lens: list[int]  # new tokens per request
    seq_lens: list[int]  # context length per request once this step is done
    block_tables: list[list[int]]
    sample: list[bool]  # whether each request produces tokens this step
    sampling: SamplingBatch
    return_logits: list[bool]  # whether to return the logits of every new position
    step_id: int = 0
    # Speculative tokens that end each request's input (verified this step); None: none at all.
    spec_lens: list[int] | None = None
    draft: DraftPlan | None = None
    # KV blocks to copy (source, destination) before the forward: copy-on-write of shared blocks.
    block_copies: list[tuple[int, int]] = field(default_factory=list)
    # Requests that ended since the last plan: workers drop what they keep per request.
    finished_seq_ids: list[int] = field(default_factory=list)
    # Prompt logprobs: per request, the prompt tokens its first rows of this step predict
    # (empty: none) and how many alternatives to report.
    prompt_targets: list[list[int]] | None = None
    prompt_top: list[int] | None = None
    # Overlapped scheduling: planned while the previous step is in flight. Inputs equal to
    # `request.PLACEHOLDER` are the tokens that step samples for the same request; every request
    # is plain (`Request.plain`), and the sampling rank may return its tokens still on the device.
    overlapped: bool = False
    # Embedding requests: per request, what the sampling rank pools of its rows this step
    # (`pooling.step_pooling`: "last", "first", "sum", "" for nothing); None: no embedding request.
    pool: list[str] | None = None
    # LoRA adapters (runtime/lora/): each request's device slot (-1: none; None: no request has one),
    # the slots the workers fill before the forward, and adapters whose host copies they may drop.
    lora_slots: list[int] | None = None
    lora_loads: list[SlotLoad] = field(default_factory=list)
    lora_dropped: list[int] = field(default_factory=list)

    @property
    def num_seqs(self) -> int:
        return len(self.seq_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.input_ids)

    def spec_len(self, i: int) -> int:
        return self.spec_lens[i] if self.spec_lens is not None else 0


@dataclass
class StepTiming:
    """Where the sampling rank's time went in one step, in seconds (profiling only)."""

    worker_s: float = 0.0  # from receiving the plan to having the tokens
    comm_s: float = 0.0  # of which in collectives and stage-to-stage transfers
    verify_s: float = 0.0  # forward, logits and sampling/verification
    draft_s: float = 0.0  # the drafter proposing for the next step


@dataclass
class StepOutput:
    step_id: int
    # Per request of the plan: the tokens it appends (one, or accepted proposals plus one
    # under speculative decoding; none when it did not sample).
    token_ids: list[list[int]]
    logits: dict[int, "torch.Tensor"] = field(default_factory=dict)  # seq_id -> float32 [query_len, vocab]
    # Per request: the drafter's proposals for the next step (None: no drafter ran this step).
    draft_token_ids: list[list[int]] | None = None
    # Per request: scores of the appended tokens (None: no request asked for logprobs).
    logprobs: list[list[TokenLogprob]] | None = None
    prompt_logprobs: dict[int, list[TokenLogprob]] = field(default_factory=dict)  # seq_id -> its prompt rows
    pooled: dict[int, "torch.Tensor"] = field(default_factory=dict)  # seq_id -> float32 part of its embedding
    timing: StepTiming | None = None  # only while profiling (executor.set_profiling)
    # An overlapped step's tokens while they may still be on their way from the device (`resolve`).
    pending: "PendingTokens | None" = None

    def resolve(self) -> "StepOutput":
        """Wait for pending tokens and fill `token_ids` with them; returns self."""
        if self.pending is not None:
            self.token_ids, self.pending = self.pending.result(), None
        return self


class PendingTokens:
    """Sampled tokens on their way to the host: a device-to-host copy into pinned memory, started
    at once, and an event to wait for. `sample[i]`: whether request i has a token (in order)."""

    def __init__(self, tokens: "torch.Tensor", sample: list[bool], host: "torch.Tensor"):
        import torch

        self.sample = sample
        self.host = host[: tokens.shape[0]]
        self.host.copy_(tokens, non_blocking=True)
        self.event = torch.cuda.Event() if tokens.is_cuda else None
        if self.event is not None:
            self.event.record()

    def result(self) -> list[list[int]]:
        if self.event is not None:
            self.event.synchronize()
        values = iter(self.host.tolist())
        return [[next(values)] if s else [] for s in self.sample]


def build_step_plan(scheduled: list[tuple[Request, int]], step_id: int, block_copies: list[tuple[int, int]],
                    finished_seq_ids: list[int], draft_method: str | None = None,
                    eos_token_ids: list[int] = (), overlapped: bool = False,
                    lora: tuple[list[int], list[SlotLoad], list[int]] | None = None) -> StepPlan:
    """Turn the scheduler's (request, new token count) decisions into a plan. Tokens beyond a
    request's pending ones are its speculative proposals (`spec_token_ids`). `lora`: each request's
    adapter slot, the slot loads and the dropped adapters (`LoRARegistry.assign`)."""
    seq_ids, input_ids, query_lens, seq_lens, tables, sample, logits = [], [], [], [], [], [], []
    spec_lens, num_draft, catch_up, targets, top, pool = [], [], [], [], [], []
    sampling = SamplingBatch()
    for seq, n in scheduled:
        start = seq.num_computed_tokens
        spec = max(0, n - seq.num_pending_tokens)
        tokens = seq.tokens_between(start, start + n - spec) + seq.spec_token_ids[:spec]
        samples = start + n >= seq.num_tokens and seq.num_outputs < seq.params.max_tokens
        seq_ids.append(seq.seq_id)
        input_ids.extend(tokens)
        query_lens.append(n)
        seq_lens.append(start + n)
        tables.append(list(seq.block_table))
        sample.append(samples)
        logits.append(seq.return_logits)
        spec_lens.append(spec)
        drafts = seq.spec.num_draft if (samples and draft_method and seq.spec is not None) else 0
        num_draft.append(drafts)
        last_input = start + n - spec  # positions below it are in the target's cache after the step
        catch_up.append(seq.tokens_between(min(seq.spec.draft_from, last_input - 1), last_input)
                        if drafts and draft_method == "draft" else [])
        # Prompt logprobs: rows at positions below len(prompt) - 1 predict the next prompt token.
        prompt_len = len(seq.prompt_token_ids)
        wants = seq.prompt_logprobs is not None  # the first sample only: the others share its prompt
        targets.append(seq.prompt_token_ids[start + 1 : min(start + n, prompt_len - 1) + 1] if wants else [])
        top.append(seq.params.prompt_logprobs or 0)
        pool.append(step_pooling(seq.pooling, start, n, prompt_len) if seq.pooling is not None else "")
        if samples:
            _add_sampling_row(sampling, seq, eos_token_ids)
    return StepPlan(seq_ids, input_ids, query_lens, seq_lens, tables, sample, sampling, logits, step_id,
                    spec_lens=spec_lens if any(spec_lens) else None,
                    draft=DraftPlan(draft_method, num_draft, catch_up) if any(num_draft) else None,
                    block_copies=block_copies, finished_seq_ids=finished_seq_ids,
                    prompt_targets=targets if any(targets) else None, prompt_top=top if any(targets) else None,
                    overlapped=overlapped, pool=pool if any(pool) else None,
                    lora_slots=lora[0] if lora and any(s >= 0 for s in lora[0]) else None,
                    lora_loads=lora[1] if lora else [], lora_dropped=lora[2] if lora else [])


def _add_sampling_row(sampling: SamplingBatch, seq: Request, eos_token_ids: list[int]) -> None:
    p = seq.params
    sampling.temperature.append(float(p.temperature))
    sampling.top_k.append(p.top_k)
    sampling.top_p.append(float(p.top_p))
    sampling.min_p.append(float(p.min_p))
    sampling.seeds.append(seq.seed)
    sampling.output_index.append(seq.num_outputs)
    sampling.process.append(seq.processed)
    sampling.presence_penalty.append(float(p.presence_penalty))
    sampling.frequency_penalty.append(float(p.frequency_penalty))
    sampling.repetition_penalty.append(float(p.repetition_penalty))
    left = max(0, p.min_tokens - seq.num_outputs)
    sampling.min_tokens_left.append(left)
    sampling.suppress.append(([] if p.ignore_eos else list(eos_token_ids)) + list(p.stop_token_ids) if left else [])
    sampling.logprobs.append(-1 if p.logprobs is None else p.logprobs)
    if seq.processed and not seq.processor_known:
        sampling.first_seen[len(sampling.temperature) - 1] = (list(seq.prompt_token_ids), dict(p.logit_bias),
                                                              list(seq.output_token_ids))
        seq.processor_known = True
    sampling.constrained.append(seq.constraint is not None)
    if seq.constraint is not None and not seq.constraint_known:
        sampling.constraints[len(sampling.temperature) - 1] = (seq.constraint, list(seq.output_token_ids))
        seq.constraint_known = True
