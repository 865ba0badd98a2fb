"""The sampling rank's side of a speculative step: which logits to compute, and which
tokens each sequence keeps."""

from __future__ import annotations

import torch

from llm_infer.runtime.sampler import Sampler, per_sequence, select_rows
from llm_infer.runtime.speculative.rejection import verify_greedy, verify_sampled
from llm_infer.runtime.step_plan import StepPlan


def logit_rows(plan: StepPlan) -> tuple[list[int] | None, list[tuple[int, int]]]:
    """Hidden rows needing logits (None: all) and each sequence's span within them: every row
    for `return_logits`, the pending token and its proposals for a speculating sequence, else
    the last row of a sequence that samples."""
    rows: list[int] = []
    spans: list[tuple[int, int]] = []
    start = 0
    for i, (n, sample, want_all) in enumerate(zip(plan.query_lens, plan.sample, plan.return_logits)):
        first = len(rows)
        k = plan.spec.num_draft[i] if plan.spec is not None else 0
        if want_all:
            rows.extend(range(start, start + n))
        elif sample:
            rows.extend(range(start + n - 1 - k, start + n))
        spans.append((first, len(rows)))
        start += n
    return (None if len(rows) == plan.num_tokens else rows), spans


def proposals(plan: StepPlan) -> list[list[int]]:
    """Each sequence's proposed tokens, as they stand in the plan's input."""
    out, start = [], 0
    for n, k in zip(plan.query_lens, plan.spec.num_draft):
        out.append(plan.input_ids[start + n - k : start + n])
        start += n
    return out


def fill_proposals(plan: StepPlan, tokens: list[list[int]]) -> None:
    """Write the drafter's tokens over the plan's placeholders."""
    start = 0
    for n, k, toks in zip(plan.query_lens, plan.spec.num_draft, tokens):
        plan.input_ids[start + n - k : start + n] = toks
        start += n


def verify_step(plan: StepPlan, logits: torch.Tensor, spans: list[tuple[int, int]],
                drafted: tuple[list[list[int]], list[torch.Tensor | None]] | None,
                sampler: Sampler) -> list[list[int]]:
    """Per sequence, the tokens to append: for a speculating one, its accepted proposals plus one
    target token; for the others, one sampled token; [] for sequences that do not sample."""
    params = per_sequence(plan.sampling, plan.sample)
    proposed = proposals(plan)
    dists = drafted[1] if drafted is not None else [None] * plan.num_seqs
    out: list[list[int]] = []
    for i, samples in enumerate(plan.sample):
        if not samples:
            out.append([])
            continue
        first, end = spans[i]
        k = plan.spec.num_draft[i]
        rows = logits[end - 1 - k : end]
        p = params[i]
        if k == 0:
            out.append(sampler(rows, p))
        elif p.temperature[0] == 0:
            out.append(verify_greedy(rows, proposed[i]))
        else:
            probs = sampler.probs(rows, select_rows(p, [0] * (k + 1)))
            out.append(verify_sampled(probs, proposed[i], dists[i], p.seeds[0], p.output_index[0]))
    return out

