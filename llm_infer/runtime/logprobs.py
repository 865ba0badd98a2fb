"""Log-probabilities of chosen tokens, their ranks and the most likely alternatives.

They report the model's own distribution: log-softmax of the raw logits, before logit
processing and temperature (vLLM's default), computed for a step's rows at once.
"""

from __future__ import annotations

import torch

from llm_infer.runtime.outputs import TokenLogprob
from llm_infer.runtime.step_plan import StepPlan


def token_logprobs(logits: torch.Tensor, tokens: list[int], top_n: list[int]) -> list[TokenLogprob]:
    """logits `[R, vocab]`; for row r: the log-probability and rank (1: most likely) of
    `tokens[r]` and the `top_n[r]` most likely (token, log-probability), most likely first."""
    if not tokens:
        return []
    lp = torch.log_softmax(logits.float(), dim=-1)
    ids = torch.tensor(tokens, device=lp.device).unsqueeze(1)
    chosen = lp.gather(1, ids)
    k = max(max(top_n), 1)
    top_values, top_ids = lp.topk(k, dim=-1)
    # A token among the top k has every more likely token there too: count within the top k;
    # only rows whose token lies outside it count over the whole vocabulary.
    ranks = (top_values > chosen).sum(dim=-1) + 1
    outside = ~(top_ids == ids).any(dim=-1)
    if bool(outside.any()):
        ranks[outside] = (lp[outside] > chosen[outside]).sum(dim=-1) + 1
    ranks, top_values, top_ids = ranks.tolist(), top_values.tolist(), top_ids.tolist()
    return [TokenLogprob(t, float(c), rank, list(zip(ids[:n], vals[:n])))
            for t, c, rank, ids, vals, n in zip(tokens, chosen[:, 0].tolist(), ranks, top_ids, top_values, top_n)]


def prompt_logprobs(plan: StepPlan, logits: torch.Tensor, spans: list[tuple[int, int]]) -> dict[int, list[TokenLogprob]]:
    """seq_id -> scores of the prompt tokens its first rows of this step predict (`plan.prompt_targets`)."""
    rows, tokens, top, owners = [], [], [], []
    for i, targets in enumerate(plan.prompt_targets):
        if targets:
            rows += range(spans[i][0], spans[i][0] + len(targets))
            tokens += targets
            top += [plan.prompt_top[i]] * len(targets)
            owners += [plan.seq_ids[i]] * len(targets)
    result: dict[int, list[TokenLogprob]] = {}
    for owner, score in zip(owners, token_logprobs(logits[rows], tokens, top)):
        result.setdefault(owner, []).append(score)
    return result
