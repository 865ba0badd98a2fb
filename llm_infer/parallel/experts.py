"""A MoE layer's routed experts, sharded across the tensor-parallel ranks one of two ways.

- Tensor parallelism (default): every rank holds every expert, each expert's intermediate
  dimension split Megatron-style: gate/up column-parallel (rows tp_rank * I/tp .. of each),
  down row-parallel (the same columns). A rank's output is a partial sum.
- Expert parallelism (`parallel.expert_parallel`): rank r holds whole experts
  r * E/tp .. (r + 1) * E/tp - 1 (a contiguous range, as vLLM's default); its output is the
  contribution of its experts only.

Either way the sum over ranks is the layer's output, so the MoE block all-reduces once (with
the shared expert's partial sum). Weights load from the per-expert checkpoint layout
(`experts.{e}.gate_proj.weight` `[I, H]`, `up_proj` `[I, H]`, `down_proj` `[H, I]`) or from
transformers' fused one (`experts.gate_up_proj` `[E, 2I, H]`, `experts.down_proj` `[E, H, I]`);
each rank reads only its experts and its slice.

Quantized (AWQ) checkpoints keep each expert as its own linear layers instead (`ExpertList`):
every expert is a dense-style MLP whose gate/up and down layers shard as the dense MLP's do.
"""

from __future__ import annotations

from typing import Any, Callable, Container

import torch
from torch import nn

from llm_infer.kernels.moe_torch import expert_loop
from llm_infer.parallel.state import get_parallel_state
from llm_infer.parallel.weight_utils import WeightShapeError, copy_checked, divide, narrow_dims, shape_of

# Per-expert checkpoint projections -> (our parameter, part of it).
_PER_EXPERT = {"gate_proj": ("gate_up_proj", "gate"), "up_proj": ("gate_up_proj", "up"), "down_proj": ("down_proj", "down")}


def expert_range(num_experts: int, tp_size: int, tp_rank: int, expert_parallel: bool) -> range:
    """The global ids of the experts this rank holds (all of them under tensor parallelism)."""
    if not expert_parallel:
        return range(num_experts)
    per_rank = divide(num_experts, tp_size, "experts")
    return range(tp_rank * per_rank, (tp_rank + 1) * per_rank)


class FusedExperts(nn.Module):
    """`gate_up_proj` `[local experts, 2 * local I, H]` ([gate | up] rows) and `down_proj`
    `[local experts, H, local I]`, in the model dtype; `forward` runs the `moe` kernel."""

    def __init__(self, num_experts: int, hidden_size: int, intermediate_size: int, dtype: torch.dtype,
                 moe_kernel: Callable[..., torch.Tensor]):
        super().__init__()
        state = get_parallel_state()
        self.num_experts, self.hidden_size, self.intermediate_size = num_experts, hidden_size, intermediate_size
        self.experts = expert_range(num_experts, state.tp_size, state.tp_rank, state.expert_parallel)
        tp_slices = 1 if state.expert_parallel else state.tp_size
        self.local_intermediate = divide(intermediate_size, tp_slices, "expert intermediate size")
        self.inter_offset = 0 if state.expert_parallel else state.tp_rank * self.local_intermediate
        n, i = len(self.experts), self.local_intermediate
        self.gate_up_proj = nn.Parameter(torch.empty(n, 2 * i, hidden_size, dtype=dtype), requires_grad=False)
        self.down_proj = nn.Parameter(torch.empty(n, hidden_size, i, dtype=dtype), requires_grad=False)
        for param in (self.gate_up_proj, self.down_proj):
            param.weight_loader = self.weight_loader
        self.moe_kernel = moe_kernel

    def checkpoint_names(self, prefix: str, leaf: str, available: Container[str]) -> list[tuple[str, Any]]:
        """The checkpoint tensors (and shard ids) filling parameter `leaf` of the experts module
        named `prefix`: the fused tensor when the checkpoint has it, else this rank's experts'."""
        if f"{prefix}.{leaf}" in available:
            return [(f"{prefix}.{leaf}", ("fused", None))]
        parts = [name for name, (param, _) in _PER_EXPERT.items() if param == leaf]
        return [(f"{prefix}.{e}.{name}.weight", (_PER_EXPERT[name][1], e)) for e in self.experts for name in parts]

    def weight_loader(self, param: nn.Parameter, loaded: Any, shard_id: tuple[str, int | None]) -> None:
        """`shard_id`: ("gate" | "up" | "down", expert) for a per-expert tensor, ("fused", None)
        for transformers' 3-D tensor. Raises WeightShapeError when the shape does not fit."""
        part, expert = shard_id
        h, i, off = self.hidden_size, self.local_intermediate, self.inter_offset
        if part == "fused":
            self._load_fused(param, loaded)
            return
        local = expert - self.experts.start
        if part in ("gate", "up"):
            _check_shape(loaded, (self.intermediate_size, h))
            rows = param.data[local].narrow(0, 0 if part == "gate" else i, i)
            copy_checked(rows, narrow_dims(loaded, {0: (off, i)}))
        else:
            _check_shape(loaded, (h, self.intermediate_size))
            copy_checked(param.data[local], narrow_dims(loaded, {1: (off, i)}))

    def _load_fused(self, param: nn.Parameter, loaded: Any) -> None:
        e0, n = self.experts.start, len(self.experts)
        h, i, off, full = self.hidden_size, self.local_intermediate, self.inter_offset, self.intermediate_size
        if param is self.gate_up_proj:
            _check_shape(loaded, (self.num_experts, 2 * full, h))
            copy_checked(param.data[:, :i], narrow_dims(loaded, {0: (e0, n), 1: (off, i)}))
            copy_checked(param.data[:, i:], narrow_dims(loaded, {0: (e0, n), 1: (full + off, i)}))
        else:
            _check_shape(loaded, (self.num_experts, h, full))
            copy_checked(param.data, narrow_dims(loaded, {0: (e0, n), 2: (off, i)}))

    def forward(self, x: torch.Tensor, topk_weights: torch.Tensor, topk_ids: torch.Tensor) -> torch.Tensor:
        """x `[tokens, H]`, topk_weights fp32 `[tokens, k]`, topk_ids int64 `[tokens, k]` (global
        expert ids) -> this rank's partial sum `[tokens, H]` in x's dtype (not reduced)."""
        return self.moe_kernel(x, self.gate_up_proj, self.down_proj, topk_weights, topk_ids, self.experts.start)


class ExpertList(nn.ModuleList):
    """Routed experts as separate MLP modules `{e}` (their own linear layers, e.g. AWQ int4:
    `experts.{e}.gate_up_proj.qweight` loads from `experts.{e}.gate_proj.qweight` and `up_proj`),
    each tensor-parallel like a dense MLP whose down projection does not reduce. Holds every
    expert (no expert parallelism); `forward` runs each hit expert once over its tokens."""

    def forward(self, x: torch.Tensor, topk_weights: torch.Tensor, topk_ids: torch.Tensor) -> torch.Tensor:
        """As `FusedExperts.forward`: x `[tokens, H]`, topk_weights fp32 / topk_ids int64
        `[tokens, k]` -> this rank's partial sum `[tokens, H]` in x's dtype (not reduced)."""
        return expert_loop(x, lambda e, xs: self[e](xs), len(self), topk_weights, topk_ids, 0)


def _check_shape(loaded: Any, expected: tuple[int, ...]) -> None:
    if shape_of(loaded) != expected:
        raise WeightShapeError(f"expected shape {list(expected)}, checkpoint has {list(shape_of(loaded))}")
