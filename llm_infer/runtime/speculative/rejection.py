"""The acceptance rule that makes speculation lossless.

Draft token x at position i is accepted with probability min(1, p_i(x) / q_i(x)); at the first
rejection the token is drawn from max(0, p_i - q_i), renormalised; if all K are accepted a bonus
token is drawn from p_{K+1}. p and q are the target's and the draft's distributions after the
request's temperature/top-k/top-p/min-p; a deterministic proposer (n-gram) has q = a point mass.
Greedy requests accept by exact match with the target's argmax. Every draw comes from a
generator seeded by (request seed, output index, purpose), so a seeded request is reproducible.

Without draft probabilities (a deterministic proposer such as n-gram, or any proposer in
deterministic mode) every position's token is the plain draw from p_i that decoding without
speculation would make at that output index, and a proposal is accepted iff it equals it.
That is exact (each token is drawn from p_i) and, for a point-mass proposer, accepts with the
same probability p_i(x) as the rule above; it also gives exactly the tokens of speculation off.
"""

from __future__ import annotations

import torch

from llm_infer.runtime.random_draws import draw, draw_seed

ACCEPT, RESIDUAL = 1, 2  # purposes mixed into the seeds


def _uniform(seed: int, index: int, device: torch.device) -> float:
    gen = torch.Generator(device=device).manual_seed(draw_seed(seed, index, ACCEPT))
    return float(torch.rand((), generator=gen, device=device))


def verify_greedy(target_logits: torch.Tensor, draft: list[int]) -> list[int]:
    """target_logits `[K+1, vocab]` -> the accepted prefix of `draft` plus one target token."""
    best = target_logits.argmax(dim=-1).tolist()
    n = 0
    while n < len(draft) and draft[n] == best[n]:
        n += 1
    return draft[:n] + [best[n]]


def verify_sampled(p: torch.Tensor, draft: list[int], q: torch.Tensor | None, seed: int,
                   output_index: int) -> list[int]:
    """p `[K+1, vocab]` target probabilities; q `[K, vocab]` draft probabilities (None: plain draws
    decide, see the module docstring). output_index: the index in the output of the first proposed token."""
    accepted: list[int] = []
    if q is None:
        for i, x in enumerate(draft):
            token = draw(p[i], draw_seed(seed, output_index + i))
            if token != x:
                return accepted + [token]
            accepted.append(x)
        return accepted + [draw(p[len(draft)], draw_seed(seed, output_index + len(draft)))]
    for i, x in enumerate(draft):
        qx = float(q[i, x])
        u = _uniform(seed, output_index + i, p.device)
        if qx > 0 and u < min(1.0, float(p[i, x]) / qx):
            accepted.append(x)
            continue
        residual = (p[i] - q[i]).clamp(min=0)
        if float(residual.sum()) <= 0:  # p == q: any draw from p is exact
            residual = p[i]
        return accepted + [draw(residual / residual.sum(), draw_seed(seed, output_index + i, RESIDUAL))]
    # all accepted: the bonus token, drawn exactly as plain decoding would draw that output index
    return accepted + [draw(p[len(draft)], draw_seed(seed, output_index + len(draft)))]
