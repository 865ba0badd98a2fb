"""LoRA weights of one linear layer, for a fixed pool of adapter slots, sharded as the layer is.

A column-parallel layer's adapter keeps A whole (every rank sees the whole input) and splits B
by output rows exactly as the base weight is split (`output_part`: q/k/v heads, including
replicated KV heads, and gate/up halves). A row-parallel layer's adapter splits A along the
input, as the base weight, and keeps B whole: each rank's `B (A_shard x_shard)` is a partial
sum that joins the layer's own partial output before its one all-reduce, so adapters add no
collective. Each rank reads only its shard from the adapter file (`shard`), keeps it on the host,
and copies it into a device slot when the slot is (re)filled (`set_slot`).

Which slot each token uses is the step's business: `LoRAContext.token_slots` (int64 `[tokens]`,
-1 for none, None when no token of the step has an adapter, and then the layers skip LoRA).
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from llm_infer.parallel.linear import _shard
from llm_infer.parallel.weight_utils import WeightShapeError, materialize


class LoRAContext:
    """The step's token -> slot map, shared by every LoRA layer of a model (set by the model runner)."""

    def __init__(self) -> None:
        self.token_slots: torch.Tensor | None = None


class LoRAStack:
    """`slots` adapters of rank <= `max_rank` on `layer` (a Column/Merged/QKV or Row parallel linear),
    whose checkpoint projections are `parts` (shard ids, e.g. ["q", "k", "v"]; [None] for one).
    `lora_add` is the kernel (`Kernels.lora_add`); `silu_and_mul` computes a gated input."""

    def __init__(self, layer: Any, parts: list[Any], slots: int, max_rank: int, dtype: torch.dtype,
                 context: LoRAContext, lora_add: Callable[..., None], silu_and_mul: Callable[..., torch.Tensor]):
        self.row_parallel = hasattr(layer, "input_part")
        self.parts = list(parts)
        self.rank = max_rank
        self.context, self.lora_add, self.silu_and_mul = context, lora_add, silu_and_mul
        in_size = layer.input_size_per_partition
        out_size = layer.output_size_per_partition
        if self.row_parallel:
            self.places = [(0, out_size, 0, 1)]
        else:
            self.places = [layer.output_part(p) for p in self.parts]
        self.offsets = tuple([p[0] for p in self.places] + [out_size])
        self._input_part = layer.input_part if self.row_parallel else None
        self.a = torch.zeros(slots, len(self.parts) * max_rank, in_size, dtype=dtype)
        self.b = torch.zeros(slots, max_rank, out_size, dtype=dtype)
        self.filled: set[int] = set()  # slots holding an adapter of this projection (the others are zero)

    def shard(self, weights: dict[Any, tuple[Any, Any, float]]) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's slot contents on the host, in the layer's dtype: `weights` maps a part to
        (A `[r, in]`, B `[out, r]` as tensors or lazy safetensors slices, scale); parts without
        an adapter stay zero. Returns (a `[n_sub*R, in/rank]`, b `[R, out/rank]`, B transposed)."""
        a = torch.zeros(self.a.shape[1:], dtype=self.a.dtype)
        b = torch.zeros(self.b.shape[1:], dtype=self.b.dtype)
        for i, part in enumerate(self.parts):
            if part not in weights:
                continue
            lora_a, lora_b, scale = weights[part]
            if self.row_parallel:
                lora_a = self._input_part(lora_a)
            lora_a = materialize(lora_a)
            rank = lora_a.shape[0]
            if rank > self.rank:
                raise WeightShapeError(f"rank {rank} above the slots' {self.rank}")
            a[i * self.rank : i * self.rank + rank] = lora_a.to(a.dtype)
            offset, size, index, count = self.places[i]
            if not self.row_parallel:
                lora_b = _shard(lora_b, 0, index, size, count)
            lora_b = materialize(lora_b).float() * scale
            b[:rank, offset : offset + size] = lora_b.T.to(b.dtype)
        return a, b

    def set_slot(self, slot: int, a: torch.Tensor, b: torch.Tensor) -> None:
        """Fill device slot `slot` with a host shard from `shard`."""
        self.a[slot].copy_(a, non_blocking=True)
        self.b[slot].copy_(b, non_blocking=True)
        self.filled.add(slot)

    def clear_slot(self, slot: int) -> None:
        if slot in self.filled:
            self.a[slot].zero_()
            self.b[slot].zero_()
            self.filled.discard(slot)

    def __call__(self, x: torch.Tensor, y: torch.Tensor, gated: bool = False) -> torch.Tensor:
        """y `[T, out/rank]` (the layer's output, or its partial sum) plus each token's adapter
        product of x `[T, in/rank]` (`gated`: x is [gate | up], the input silu(gate) * up)."""
        slots = self.context.token_slots
        if slots is None or not self.filled:  # no adapter in any slot adapts this projection
            return y
        self.lora_add(y, self.silu_and_mul(x) if gated else x, self.a, self.b, slots, self.offsets)
        return y
