"""The compact message the controller sends to every worker each step.

Plain Python data (no tensors), cheap to pickle: the new tokens of each
scheduled sequence, how much context each has, its block table, and the
sampling parameters of the sequences that produce a token this step.
Workers derive positions and cache slots from these.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from llm_infer.runtime.sequence import Sequence
    from llm_infer.runtime.speculative.planner import SpecPlanner


@dataclass
class SamplingBatch:
    """Sampling parameters of the rows that sample, in plan order."""

    temperature: list[float] = field(default_factory=list)
    top_k: list[int] = field(default_factory=list)
    top_p: list[float] = field(default_factory=list)
    min_p: list[float] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    # Index of the token being sampled within its sequence's output: with the
    # seed it fixes the random draw, so results do not depend on batching.
    output_index: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.temperature)

    @property
    def all_greedy(self) -> bool:
        return all(t == 0 for t in self.temperature)


@dataclass
class SpecPlan:
    """Speculative decoding in this step. For sequence i, num_draft[i] tokens follow its pending
    token in the plan's input (n-gram: the proposals themselves; draft/layers: placeholders the
    sampling rank's drafter fills); catch_up[i] are the tokens the drafter must process first
    (ending with the pending token)."""

    method: str
    num_draft: list[int]
    catch_up: list[list[int]]


@dataclass
class StepPlan:
    seq_ids: list[int]
    input_ids: list[int]  # new tokens of all sequences, concatenated
    query_lens: list[int]  # new tokens per sequence
    seq_lens: list[int]  # context length per sequence once this step is done
    block_tables: list[list[int]]
    sample: list[bool]  # whether each sequence produces a token this step
    sampling: SamplingBatch
    return_logits: list[bool]  # whether to return the logits of every new position
    step_id: int = 0
    spec: SpecPlan | None = None
    # KV blocks to copy (source, destination) before the forward: copy-on-write of shared blocks.
    block_copies: list[tuple[int, int]] = field(default_factory=list)

    @property
    def num_seqs(self) -> int:
        return len(self.seq_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.input_ids)


@dataclass
class StepOutput:
    step_id: int
    sampled: list[int]  # one token per sequence with sample=True, in plan order
    logits: dict[int, "object"] = field(default_factory=dict)  # seq_id -> float32 [query_len, vocab]
    worker_time_s: float = 0.0  # on the sampling rank, from receiving the plan to having the tokens
    comm_time_s: float = 0.0  # of which in collectives and stage-to-stage transfers
    # Speculative steps: per sequence, the tokens to append (accepted proposals + one more);
    # the time the drafter and the verifying forward took.
    accepted: list[list[int]] | None = None
    draft_time_s: float = 0.0
    verify_time_s: float = 0.0


def build_step_plan(scheduled: list[tuple["Sequence", int]], step_id: int,
                    speculation: "SpecPlanner | None" = None) -> StepPlan:
    """Turn the scheduler's (sequence, new token count) decisions into a plan. A decoding
    sequence given more than its pending token speculates: the planner supplies the tokens."""
    plan = StepPlan([], [], [], [], [], [], SamplingBatch(), [], step_id)
    num_draft: list[int] = []
    catch_up: list[list[int]] = []
    for seq, n in scheduled:
        start = seq.num_computed_tokens
        extra = max(0, n - seq.num_pending_tokens)
        tokens = seq.tokens_between(start, start + n - extra)
        drafted, catch = (speculation.proposal(seq, extra) if extra else ([], []))
        tokens += drafted
        n = len(tokens)
        num_draft.append(len(drafted))
        catch_up.append(catch)
        samples = start + n >= seq.num_tokens
        plan.seq_ids.append(seq.seq_id)
        plan.input_ids.extend(tokens)
        plan.query_lens.append(n)
        plan.seq_lens.append(start + n)
        plan.block_tables.append(list(seq.block_table))
        plan.sample.append(samples)
        plan.return_logits.append(seq.return_logits)
        if samples:
            p, s = seq.params, plan.sampling
            s.temperature.append(float(p.temperature))
            s.top_k.append(p.top_k)
            s.top_p.append(float(p.top_p))
            s.min_p.append(float(p.min_p))
            s.seeds.append(seq.seed)
            s.output_index.append(len(seq.output_token_ids))
    if speculation is not None and any(num_draft):
        plan.spec = SpecPlan(speculation.config.method, num_draft, catch_up)
    return plan
