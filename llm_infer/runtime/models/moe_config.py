"""The mixture-of-experts facts of a Qwen2-MoE / Qwen3-MoE `config.json`.

Routing as in both: softmax over `num_experts` router logits, the `num_experts_per_tok`
largest probabilities, renormalised to sum to 1 when `norm_topk_prob`. Layer i is sparse
unless it is in `mlp_only_layers` or (i + 1) is not a multiple of `decoder_sparse_step`
(transformers' `Qwen2MoeDecoderLayer`); dense layers use `intermediate_size`. Qwen2-MoE adds a
shared expert of `shared_expert_intermediate_size` scaled by sigmoid(x . w_gate).

Routing options of other MoE families (group-limited routing, score corrections, scaled
weights) are refused by name rather than ignored.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from llm_infer.errors import UserError

# Routing options we do not implement, with the value that means "off" (None: absent only).
_UNSUPPORTED_ROUTING: dict[str, Any] = {
    "scoring_func": "softmax",
    "routed_scaling_factor": 1.0,
    "topk_method": "greedy",
    "n_group": None,
    "topk_group": None,
    "n_shared_experts": None,
    "first_k_dense_replace": None,
    "moe_layer_freq": None,
    "num_experts_group": None,
    "norm_topk_prob_eps": None,
}


@dataclass(frozen=True)
class MoEConfig:
    num_experts: int
    top_k: int
    intermediate_size: int  # each routed expert's
    norm_topk_prob: bool
    shared_expert_intermediate_size: int  # 0: no shared expert
    decoder_sparse_step: int
    mlp_only_layers: tuple[int, ...]

    def is_sparse(self, layer: int) -> bool:
        """Whether decoder layer `layer` has a MoE block (else a dense MLP)."""
        return (layer not in self.mlp_only_layers and self.num_experts > 0
                and (layer + 1) % self.decoder_sparse_step == 0)

    @classmethod
    def from_config(cls, raw: dict[str, Any], shared_expert: bool, source: str) -> "MoEConfig":
        """Raises UserError naming a routing option we do not implement or a missing key."""
        for key, neutral in _UNSUPPORTED_ROUTING.items():
            if raw.get(key) is not None and raw[key] != neutral:
                raise UserError(f"{source}: MoE routing option {key}={raw[key]!r} is not supported")
        if "num_experts" not in raw and "num_local_experts" in raw:  # transformers 5 writes Qwen3-MoE's so
            raw = {**raw, "num_experts": raw["num_local_experts"]}
        for key in ("num_experts", "num_experts_per_tok", "moe_intermediate_size"):
            if key not in raw:
                raise UserError(f"{source}: missing required key {key!r}")
        shared = int(raw.get("shared_expert_intermediate_size") or 0) if shared_expert else 0
        if shared_expert and not shared:
            raise UserError(f"{source}: missing required key 'shared_expert_intermediate_size'")
        top_k, experts = int(raw["num_experts_per_tok"]), int(raw["num_experts"])
        if not 1 <= top_k <= experts:
            raise UserError(f"{source}: num_experts_per_tok={top_k} must be between 1 and num_experts={experts}")
        return cls(num_experts=experts, top_k=top_k, intermediate_size=int(raw["moe_intermediate_size"]),
                   norm_topk_prob=bool(raw.get("norm_topk_prob", False)), shared_expert_intermediate_size=shared,
                   decoder_sparse_step=int(raw.get("decoder_sparse_step") or 1),
                   mlp_only_layers=tuple(int(i) for i in raw.get("mlp_only_layers") or ()))
