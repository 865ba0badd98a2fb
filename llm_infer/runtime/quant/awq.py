"""Loading AutoAWQ int4 checkpoints: the AWQ settings, and the linear method that
holds a layer's `qweight`/`qzeros`/`scales` and multiplies through the selected kernel.

Tensor parallelism needs nothing special: the parameters declare their input/output
dims, so column-parallel layers split the packed output dimension in packed units (8
outputs per int32) and row-parallel layers split the input dimension in whole groups;
a shard that would cut a pack or a group is a one-line error naming the layer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from llm_infer.errors import ConfigError, UserError
from llm_infer.kernels.dispatch import Kernels
from llm_infer.parallel.linear import LinearMethod
from llm_infer.parallel.weight_utils import set_weight_attrs
from llm_infer.runtime.quant.config import QuantConfig

PACK = 8  # int4 values per int32


@dataclass(frozen=True)
class AWQConfig(QuantConfig):
    group_size: int
    modules_to_not_convert: tuple[str, ...] = ()

    @classmethod
    def from_raw(cls, raw: dict[str, Any]) -> "AWQConfig":
        """From a `quantization_config` (or AutoAWQ `quant_config.json`) mapping. Raises UserError
        for a variant other than 4-bit GEMM with zero points and groups of a multiple of 32."""
        bits = raw.get("bits", raw.get("w_bit"))
        group = raw.get("group_size", raw.get("q_group_size"))
        version = str(raw.get("version", "gemm")).lower()
        if bits != 4 or not raw.get("zero_point", True) or version != "gemm":
            raise UserError(f"AWQ variant bits={bits}, zero_point={raw.get('zero_point')}, version={version} is not "
                            "supported (4-bit, zero point, GEMM layout)")
        if not isinstance(group, int) or group <= 0 or group % 32:
            raise UserError(f"AWQ group size {group!r} is not supported (a positive multiple of 32)")
        return cls(group, tuple(raw.get("modules_to_not_convert") or ()))

    def make_method(self, prefix: str, kernels: Kernels) -> LinearMethod:
        return AWQLinearMethod(self.group_size, kernels, prefix)


class AWQLinearMethod:
    def __init__(self, group_size: int, kernels: Kernels, prefix: str):
        self.group = group_size
        self.kernels = kernels
        self.prefix = prefix

    def create_weights(self, layer: nn.Module, input_size_per_partition: int, output_size_per_partition: int,
                       dtype: torch.dtype) -> None:
        if input_size_per_partition % self.group:
            raise ConfigError(f"{self.prefix}: {input_size_per_partition} input features per rank is not a whole "
                              f"number of AWQ groups of {self.group}; use fewer tensor-parallel ranks")
        if output_size_per_partition % PACK:
            raise ConfigError(f"{self.prefix}: {output_size_per_partition} output features per rank is not a "
                              f"multiple of {PACK} (one packed int32)")
        groups, packed_out = input_size_per_partition // self.group, output_size_per_partition // PACK
        for name, shape, dt in (("qweight", (input_size_per_partition, packed_out), torch.int32),
                                ("qzeros", (groups, packed_out), torch.int32),
                                ("scales", (groups, output_size_per_partition), torch.float16)):
            param = nn.Parameter(torch.empty(shape, dtype=dt), requires_grad=False)
            set_weight_attrs(param, {"input_dim": 0, "output_dim": 1, "weight_loader": layer.weight_loader})
            layer.register_parameter(name, param)

    def process_weights_after_loading(self, layer: nn.Module) -> None:
        layer.awq = self.kernels.awq_prepare(layer.qweight.data, layer.qzeros.data, layer.scales.data, self.group)
        if layer.awq.qweight is None:  # the kernel repacked them: drop the loaded copies
            del layer.qweight, layer.qzeros, layer.scales

    def apply(self, layer: nn.Module, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        return self.kernels.awq_linear(x, layer.awq, bias)

    def apply_gated(self, layer: nn.Module, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        return self.kernels.awq_linear(self.kernels.silu_and_mul(x), layer.awq, bias)
