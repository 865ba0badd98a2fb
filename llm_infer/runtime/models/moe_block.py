"""The sparse MLP of Qwen2-MoE and Qwen3-MoE: a router, routed experts, and (Qwen2-MoE) a shared
expert scaled by a sigmoid gate.

    logits = x . W_router^T                     fp32, [tokens, experts]
    w, e   = top_k(softmax(logits))             renormalised when norm_topk_prob
    y      = sum_j w_j expert_{e_j}(x)  +  sigmoid(x . w_gate) * shared_expert(x)

(transformers' `Qwen2MoeSparseMoeBlock`.) The router and the shared-expert gate are
replicated; routed experts are sliced or distributed by `FusedExperts`, the shared expert is
tensor-parallel like a dense MLP. Every rank's contribution is a partial sum, so one
all-reduce per block covers routed and shared experts together.
"""

from __future__ import annotations

import torch
from torch import nn

from llm_infer.kernels import moe_torch
from llm_infer.kernels.dispatch import Kernels
from llm_infer.parallel.communication import tp_all_reduce
from llm_infer.parallel.experts import FusedExperts
from llm_infer.parallel.linear import DenseLinearMethod, ReplicatedLinear
from llm_infer.runtime.models.moe_config import MoEConfig


class SparseMoeBlock(nn.Module):
    def __init__(self, hidden_size: int, moe: MoEConfig, dtype: torch.dtype, kernels: Kernels, shared_expert=None,
                 experts: nn.Module | None = None):
        """`shared_expert`: a tensor-parallel MLP module whose down projection does not reduce, or None;
        `experts`: the routed experts when they are not `FusedExperts` (an `ExpertList` of quantized
        MLPs), called as `experts(x, topk_weights, topk_ids)`."""
        super().__init__()
        self.moe = moe
        # The router weight is kept in fp32 so its logits are fp32 in every dtype.
        self.gate = ReplicatedLinear(hidden_size, moe.num_experts, dtype=torch.float32,
                                     linear_method=DenseLinearMethod(kernels.linear))
        self.experts = experts if experts is not None else FusedExperts(moe.num_experts, hidden_size,
                                                                        moe.intermediate_size, dtype, kernels.moe)
        self.shared_expert = shared_expert
        if shared_expert is not None:
            self.shared_expert_gate = ReplicatedLinear(hidden_size, 1, dtype=dtype,
                                                       linear_method=DenseLinearMethod(kernels.linear))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x `[tokens, H]` (model dtype) -> `[tokens, H]`, reduced over the tensor-parallel ranks."""
        weights, ids = moe_torch.route(self.gate(x.float()), self.moe.top_k, self.moe.norm_topk_prob)
        out = self.experts(x, weights, ids)
        if self.shared_expert is not None:
            out = out + torch.sigmoid(self.shared_expert_gate(x)) * self.shared_expert(x)
        return tp_all_reduce(out)
