"""Torch reference for mixture-of-experts: routing and the loop over experts.

The oracle for the fused C++ kernel and the path wherever none is built. Numerics follow
transformers' `Qwen2MoeTopKRouter` / `Qwen2MoeExperts`, except that the routing weights stay
fp32 and each expert's output is weighted and summed in fp32 (transformers casts the weights
to the model dtype first; in fp32 the two are identical).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F


def route(router_logits: torch.Tensor, top_k: int, renormalize: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """router_logits fp32 `[tokens, experts]` -> (weights fp32 `[tokens, top_k]`, expert ids int64
    `[tokens, top_k]`): softmax over the experts, the top_k largest probabilities, divided by
    their sum when `renormalize` (`norm_topk_prob`)."""
    probs = torch.softmax(router_logits, dim=-1, dtype=torch.float32)
    weights, ids = torch.topk(probs, top_k, dim=-1)
    if renormalize:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    return weights, ids


def fused_moe(x: torch.Tensor, gate_up: torch.Tensor, down: torch.Tensor, topk_weights: torch.Tensor,
              topk_ids: torch.Tensor, first_expert: int) -> torch.Tensor:
    """sum_j topk_weights[t, j] * down_e(silu(gate_e(x_t)) * up_e(x_t)) over the slots j whose expert
    e = topk_ids[t, j] is one of this rank's, experts first_expert .. first_expert + E_local - 1.

    x `[tokens, H]`; gate_up `[E_local, 2I, H]` ([gate | up] rows); down `[E_local, H, I]`;
    topk_weights fp32 `[tokens, k]`; topk_ids int64 `[tokens, k]` -> `[tokens, H]` in x's dtype.
    Each expert runs once over the tokens routed to it; experts with none are skipped."""

    def expert(e: int, xs: torch.Tensor) -> torch.Tensor:
        gate, up = F.linear(xs, gate_up[e]).chunk(2, dim=-1)
        return F.linear(F.silu(gate) * up, down[e])

    return expert_loop(x, expert, gate_up.shape[0], topk_weights, topk_ids, first_expert)


def expert_loop(x: torch.Tensor, expert: Callable[[int, torch.Tensor], torch.Tensor], num_local: int,
                topk_weights: torch.Tensor, topk_ids: torch.Tensor, first_expert: int) -> torch.Tensor:
    """sum_j topk_weights[t, j] * expert(e - first_expert, x_t) over the slots j whose expert e is
    one of this rank's `num_local` (first_expert ..), each hit expert called once on all its
    tokens: `expert(local id, [n, H]) -> [n, H]` (any kernel: dense slices, AWQ layers).
    x `[tokens, H]`, topk_weights fp32 / topk_ids int64 `[tokens, k]` -> `[tokens, H]` in x's
    dtype, accumulated in fp32."""
    out = torch.zeros(x.shape[0], x.shape[1], dtype=torch.float32, device=x.device)
    local = topk_ids - first_expert
    hit = torch.unique(local[(local >= 0) & (local < num_local)])
    for e in hit.tolist():
        tokens, slots = torch.where(local == e)
        out.index_add_(0, tokens, expert(e, x[tokens]).float() * topk_weights[tokens, slots, None])
    return out.to(x.dtype)
