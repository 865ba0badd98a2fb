"""Megatron-style linear layers. Sharding is decided here, and only here.

ColumnParallelLinear splits output features across tensor-parallel ranks;
RowParallelLinear splits input features and all-reduces its output (the bias is
added once, after the reduction). Merged variants pack several checkpoint
tensors (q/k/v, gate/up) into one parameter; each parameter's `weight_loader`
narrows a checkpoint tensor to this rank's slice and copies it into place.

How weights are stored and multiplied is delegated to a `LinearMethod`
(dense here; AWQ int4 adds another), so quantized parameters shard the same way:
a parameter whose output dimension is packed (8 int4 per int32) is narrowed in
proportion (`_out_ratio`).
"""

from __future__ import annotations

from typing import Any, Callable, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from llm_infer.kernels.torch_ref import silu_and_mul
from llm_infer.parallel.communication import tp_all_reduce
from llm_infer.parallel.state import get_parallel_state
from llm_infer.parallel.weight_utils import (
    WeightShapeError,
    copy_checked,
    divide,
    narrow,
    set_weight_attrs,
    shape_of,
)


class LinearMethod(Protocol):
    def create_weights(
        self, layer: nn.Module, input_size_per_partition: int, output_size_per_partition: int,
        dtype: torch.dtype,
    ) -> None: ...

    def apply(self, layer: nn.Module, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor: ...

    def apply_gated(self, layer: nn.Module, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """`apply` to silu(gate) * up, where x `[M, 2 * in]` is [gate | up] (SwiGLU fused where possible)."""
        ...

    def process_weights_after_loading(self, layer: nn.Module) -> None: ...


class DenseLinearMethod:
    """A plain `[out, in]` weight, multiplied by the selected kernel (`torch.nn.functional.linear`
    in the reference path); `linear_gated(x, weight, bias)` multiplies silu(gate) * up of
    x = [gate | up] (default: the torch reference of both steps)."""

    def __init__(self, linear: Callable[..., torch.Tensor] = F.linear,
                 linear_gated: Callable[..., torch.Tensor] | None = None):
        self.linear = linear
        self.linear_gated = linear_gated or (lambda x, weight, bias: linear(silu_and_mul(x), weight, bias))

    def create_weights(self, layer, input_size_per_partition, output_size_per_partition, dtype):
        weight = nn.Parameter(torch.empty(output_size_per_partition, input_size_per_partition, dtype=dtype),
                              requires_grad=False)
        set_weight_attrs(weight, {"input_dim": 1, "output_dim": 0, "weight_loader": layer.weight_loader})
        layer.register_parameter("weight", weight)

    def apply(self, layer, x, bias):
        return self.linear(x, layer.weight, bias)

    def apply_gated(self, layer, x, bias):
        return self.linear_gated(x, layer.weight, bias)

    def process_weights_after_loading(self, layer):
        pass


class LinearBase(nn.Module):
    # LoRA weights riding on this layer (`parallel/lora.py` LoRAStack), attached when adapters are enabled.
    lora: Any = None

    def __init__(
        self,
        input_size: int,
        output_size: int,
        input_size_per_partition: int,
        output_size_per_partition: int,
        bias: bool,
        dtype: torch.dtype,
        linear_method: LinearMethod | None,
    ):
        super().__init__()
        self.input_size = input_size
        self.output_size = output_size
        self.input_size_per_partition = input_size_per_partition
        self.output_size_per_partition = output_size_per_partition
        self.linear_method = linear_method or DenseLinearMethod()
        self.linear_method.create_weights(self, input_size_per_partition, output_size_per_partition, dtype)
        if bias:
            self.bias = nn.Parameter(torch.empty(self._bias_size(), dtype=dtype), requires_grad=False)
            set_weight_attrs(self.bias, {"output_dim": 0, "weight_loader": self.weight_loader})
        else:
            self.register_parameter("bias", None)

    def _bias_size(self) -> int:
        return self.output_size_per_partition

    def _out_ratio(self, param: torch.Tensor) -> float:
        """Parameter elements per logical output feature along its output dim (1/8 for packed int4)."""
        return param.shape[param.output_dim] / self.output_size_per_partition

    def process_weights_after_loading(self) -> None:
        self.linear_method.process_weights_after_loading(self)

    def weight_loader(self, param: nn.Parameter, loaded: Any, shard_id: Any = None) -> None:
        raise NotImplementedError

    def _load_split(self, param: nn.Parameter, loaded: Any, dim_attr: str) -> None:
        """This rank's equal shard along the parameter's `dim_attr` dimension (whole if it has none)."""
        dim = getattr(param, dim_attr, None)
        if dim is None:
            copy_checked(param.data, loaded)
            return
        tp = get_parallel_state()
        size = param.shape[dim]
        copy_checked(param.data, _shard(loaded, dim, tp.tp_rank, size, tp.tp_size))


def _shard(loaded: Any, dim: int, index: int, size: int, parts: int) -> Any:
    """Shard `index` of `parts` equal shards of `size` along `dim`; the tensor must hold exactly that many."""
    full = shape_of(loaded)[dim]
    if full != size * parts:
        raise WeightShapeError(f"dim {dim} has {full} rows, expected {size * parts} ({parts} shards of {size})")
    return narrow(loaded, dim, index * size, size)


def _scaled(size: float, what: str) -> int:
    if size != int(size):
        raise WeightShapeError(f"{what}: shard of {size} packed units does not fall on a pack boundary")
    return int(size)


class ReplicatedLinear(LinearBase):
    """Every rank holds the whole weight and computes the whole output (MoE routers and gates)."""

    def __init__(self, input_size: int, output_size: int, bias: bool = False,
                 dtype: torch.dtype = torch.float32, linear_method: LinearMethod | None = None):
        super().__init__(input_size, output_size, input_size, output_size, bias, dtype, linear_method)

    def weight_loader(self, param, loaded, shard_id=None):
        copy_checked(param.data, loaded)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_method.apply(self, x, self.bias)


class ColumnParallelLinear(LinearBase):
    """Output features split across TP ranks; output stays sharded."""

    def __init__(self, input_size: int, output_size: int, bias: bool = False,
                 dtype: torch.dtype = torch.float32, linear_method: LinearMethod | None = None):
        tp = get_parallel_state().tp_size
        super().__init__(input_size, output_size, input_size, divide(output_size, tp, "output features"),
                         bias, dtype, linear_method)

    def weight_loader(self, param, loaded, shard_id=None):
        """A whole checkpoint tensor (`shard_id` None), or the projection `shard_id` of a merged layer
        into its place (`output_part`)."""
        dim = getattr(param, "output_dim", None)
        if dim is None or shard_id is None:
            return self._load_split(param, loaded, "output_dim")
        ratio = self._out_ratio(param)
        offset, size, index, parts = self.output_part(shard_id)
        offset, size = _scaled(offset * ratio, "merged offset"), _scaled(size * ratio, "merged shard")
        copy_checked(param.data.narrow(dim, offset, size), _shard(loaded, dim, index, size, parts))

    def output_part(self, shard_id: Any = None) -> tuple[int, int, int, int]:
        """Where the checkpoint projection `shard_id` lands: (offset in this rank's output, size,
        which equal shard of the checkpoint tensor that is, how many shards it is cut into)."""
        tp = get_parallel_state()
        return 0, self.output_size_per_partition, tp.tp_rank, tp.tp_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.linear_method.apply(self, x, self.bias)
        return y if self.lora is None else self.lora(x, y)


class MergedColumnParallelLinear(ColumnParallelLinear):
    """Several column-parallel projections of the same input in one parameter (gate/up)."""

    def __init__(self, input_size: int, output_sizes: list[int], bias: bool = False,
                 dtype: torch.dtype = torch.float32, linear_method: LinearMethod | None = None):
        self.output_sizes = output_sizes
        super().__init__(input_size, sum(output_sizes), bias, dtype, linear_method)

    def output_part(self, shard_id: Any = None) -> tuple[int, int, int, int]:
        if shard_id is None:
            return super().output_part()
        tp = get_parallel_state()
        local = [s // tp.tp_size for s in self.output_sizes]
        return sum(local[:shard_id]), local[shard_id], tp.tp_rank, tp.tp_size


class QKVParallelLinear(ColumnParallelLinear):
    """Fused q/k/v projection. Query heads are split across ranks; KV heads are split
    when tp <= num_kv_heads and replicated (tp / num_kv_heads copies) otherwise."""

    def __init__(self, hidden_size: int, head_dim: int, num_heads: int, num_kv_heads: int,
                 bias: bool = False, dtype: torch.dtype = torch.float32,
                 linear_method: LinearMethod | None = None):
        tp = get_parallel_state().tp_size
        self.head_dim = head_dim
        self.num_heads = divide(num_heads, tp, "query heads")
        if tp >= num_kv_heads:
            self.kv_replicas = divide(tp, num_kv_heads, "tensor-parallel size over KV heads")
            self.num_kv_heads = 1
        else:
            self.kv_replicas = 1
            self.num_kv_heads = divide(num_kv_heads, tp, "KV heads")
        self.q_size = self.num_heads * head_dim
        self.kv_size = self.num_kv_heads * head_dim
        local_out = self.q_size + 2 * self.kv_size
        LinearBase.__init__(self, hidden_size, (num_heads + 2 * num_kv_heads) * head_dim,
                            hidden_size, local_out, bias, dtype, linear_method)

    def output_part(self, shard_id: Any = None) -> tuple[int, int, int, int]:
        if shard_id is None:
            return super().output_part()
        tp = get_parallel_state()
        kv_parts = tp.tp_size // self.kv_replicas
        if shard_id == "q":
            return 0, self.q_size, tp.tp_rank, tp.tp_size
        if shard_id == "k":
            return self.q_size, self.kv_size, tp.tp_rank // self.kv_replicas, kv_parts
        if shard_id == "v":
            return self.q_size + self.kv_size, self.kv_size, tp.tp_rank // self.kv_replicas, kv_parts
        raise ValueError(f"unknown qkv shard {shard_id!r}")


class RowParallelLinear(LinearBase):
    """Input features split across TP ranks; partial outputs are all-reduced, unless
    `reduce_results=False` leaves the partial sum to a caller that reduces once for several
    (a MoE block: routed and shared experts together; a bias is then refused)."""

    def __init__(self, input_size: int, output_size: int, bias: bool = False,
                 dtype: torch.dtype = torch.float32, linear_method: LinearMethod | None = None,
                 reduce_results: bool = True):
        tp = get_parallel_state().tp_size
        if bias and not reduce_results:
            raise ValueError("a row-parallel bias is added after the reduction: it needs reduce_results")
        super().__init__(input_size, output_size, divide(input_size, tp, "input features"), output_size,
                         bias, dtype, linear_method)
        self.reduce_results = reduce_results

    def weight_loader(self, param, loaded, shard_id=None):
        self._load_split(param, loaded, "input_dim")

    def input_part(self, loaded: Any) -> Any:
        """This rank's equal shard of `loaded` along its last (input) dimension."""
        tp = get_parallel_state()
        return _shard(loaded, len(shape_of(loaded)) - 1, tp.tp_rank, self.input_size_per_partition, tp.tp_size)

    def forward(self, x: torch.Tensor, gated: bool = False) -> torch.Tensor:
        """x `[tokens, in/tp]`; `gated`: x is `[tokens, 2 * in/tp]` = [gate | up] of a SwiGLU MLP and
        the layer's input is silu(gate) * up (fused into the matmul where the kernel allows)."""
        out = (self.linear_method.apply_gated if gated else self.linear_method.apply)(self, x, None)
        if self.lora is not None:  # its partial sum joins the layer's, before the one reduction
            out = self.lora(x, out, gated)
        if not self.reduce_results:
            return out
        out = tp_all_reduce(out)
        if self.bias is not None:
            out = out + self.bias
        return out
