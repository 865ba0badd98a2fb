"""Loading block-wise FP8 checkpoints (`quant_method: fp8` with `weight_block_size`, as Qwen3-*-FP8
and DeepSeek-V3 publish them): the settings, and the linear method that holds a layer's fp8
`weight` and its `weight_scale_inv` and multiplies through the selected kernel. The format is
described in `kernels/fp8_torch.py`.

- **Scales per row.** Each shard's `weight_scale_inv` blocks `[ceil(N/bn), ceil(K/bk)]` are expanded
  along the output rows when they load (`[N, ceil(K/bk)]`, 1/(4 x bk) of the weight's bytes), so the
  column-parallel loaders of `parallel/linear.py` narrow them exactly like the weight: any split of
  the outputs (q/k/v heads, gate/up halves, experts) is exact, even one inside a block. A shard's
  rows are read from the weight's own checkpoint tensor, which loads first.
- **Inputs** are split on the block grid only: a row-parallel rank must hold whole blocks of bk
  inputs (a one-line error otherwise).
- **Kernels.** `kernels.fp8_prepare` turns a loaded shard into the kernel's form once: dequantized
  to the model dtype on CPU (measured against keeping fp8: README, "GPTQ and FP8"; the layer then
  is a dense layer and runs on every dense path, the fused CPU decode stack included), W8A8
  operands for `torch._scaled_mm` on CUDA GPUs whose probe passes (`fp8_torch.prepare_w8a8`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from llm_infer.errors import ConfigError, UserError
from llm_infer.kernels import fp8_torch
from llm_infer.kernels.dispatch import Kernels
from llm_infer.parallel.linear import LinearMethod
from llm_infer.parallel.weight_utils import (
    WeightShapeError,
    materialize,
    set_weight_attrs,
    shape_of,
    with_dtype_check,
)
from llm_infer.runtime.quant.config import QuantConfig

# Qwen's own FP8 checkpoints store weight_scale_inv in BF16 (Qwen3-1.7B/32B-FP8) or F16 (some
# 2507 releases), others in F32: every one is widened to float32 at load.
SCALE_DTYPES = ("F32", "BF16", "F16")


@dataclass(frozen=True)
class FP8Config(QuantConfig):
    block_n: int
    block_k: int
    modules_to_not_convert: tuple[str, ...] = ()

    @classmethod
    def from_raw(cls, raw: dict[str, Any]) -> "FP8Config":
        """From a `quantization_config` mapping. Raises UserError for per-tensor FP8 (no
        `weight_block_size`), static activation scales or another fp8 format than e4m3."""
        block = raw.get("weight_block_size")
        if block is None:
            raise UserError("FP8 checkpoints without weight_block_size (per-tensor scales) are not supported; "
                            "block-wise FP8 is")
        if (not isinstance(block, (list, tuple)) or len(block) != 2
                or not all(isinstance(b, int) and b > 0 for b in block)):
            raise UserError(f"FP8 weight_block_size {block!r} is not supported (two positive integers)")
        scheme = str(raw.get("activation_scheme", "dynamic")).lower()
        if scheme != "dynamic":
            raise UserError(f"FP8 activation_scheme {scheme!r} is not supported (dynamic)")
        fmt = str(raw.get("fmt", "e4m3")).lower()
        if fmt != "e4m3":
            raise UserError(f"FP8 fmt {fmt!r} is not supported (e4m3)")
        skip = raw.get("modules_to_not_convert") or raw.get("ignored_layers") or ()
        return cls(block[0], block[1], tuple(skip))

    def make_method(self, prefix: str, kernels: Kernels) -> LinearMethod:
        return FP8LinearMethod(self, kernels, prefix)


class FP8LinearMethod:
    """One block-wise FP8 layer. Parameters (per shard): `weight` float8_e4m3fn `[N, K]` and
    `weight_scale_inv` float32 `[N, ceil(K/bk)]` (the checkpoint's blocks expanded along rows).
    After loading: `layer.weight` in the model dtype (dequantized) or `layer.fp8`
    (`fp8_torch.FP8Weights`, W8A8 operands)."""

    def __init__(self, cfg: FP8Config, kernels: Kernels, prefix: str):
        self.cfg = cfg
        self.kernels = kernels
        self.prefix = prefix

    def create_weights(self, layer: nn.Module, input_size_per_partition: int, output_size_per_partition: int,
                       dtype: torch.dtype) -> None:
        k, n, bk = input_size_per_partition, output_size_per_partition, self.cfg.block_k
        if k != layer.input_size and k % bk:
            raise ConfigError(f"{self.prefix}: {k} input features per rank is not a whole number of FP8 blocks "
                              f"of {bk}; use fewer tensor-parallel ranks")
        layer.fp8_dtype, layer.fp8_rows = dtype, {}
        weight = nn.Parameter(torch.empty(n, k, dtype=fp8_torch.FP8), requires_grad=False)
        set_weight_attrs(weight, {"input_dim": 1, "output_dim": 0,
                                  "weight_loader": with_dtype_check(self._weight_loader(layer), ("F8_E4M3",))})
        layer.register_parameter("weight", weight)
        scale = nn.Parameter(torch.empty(n, -(-k // bk), dtype=torch.float32), requires_grad=False)
        set_weight_attrs(scale, {"input_dim": 1, "output_dim": 0,
                                 "weight_loader": with_dtype_check(self._scale_loader(layer), SCALE_DTYPES)})
        layer.register_parameter("weight_scale_inv", scale)

    @staticmethod
    def _weight_loader(layer: nn.Module):
        def load(param: nn.Parameter, loaded: Any, shard_id: Any = None) -> None:
            layer.fp8_rows[shard_id] = shape_of(loaded)[0]  # the scale loader of this shard needs it
            layer.weight_loader(param, loaded, shard_id)
        return load

    def _scale_loader(self, layer: nn.Module):
        def load(param: nn.Parameter, loaded: Any, shard_id: Any = None) -> None:
            rows = layer.fp8_rows.get(shard_id)
            if rows is None:
                raise WeightShapeError("loaded before the weight it scales")
            shape = shape_of(loaded)
            if len(shape) != 2 or shape[0] != -(-rows // self.cfg.block_n):
                raise WeightShapeError(f"expected {-(-rows // self.cfg.block_n)} row blocks of {self.cfg.block_n} "
                                       f"for {rows} weight rows, checkpoint has shape {list(shape)}")
            layer.weight_loader(param, fp8_torch.expand_rows(materialize(loaded), rows, self.cfg.block_n), shard_id)
        return load

    def process_weights_after_loading(self, layer: nn.Module) -> None:
        w = self.kernels.fp8_prepare(layer.weight.data, layer.weight_scale_inv.data, self.cfg.block_n,
                                     self.cfg.block_k, layer.fp8_dtype)
        del layer.weight, layer.weight_scale_inv, layer.fp8_rows
        if w.dense is not None:  # a dense layer from here on (every dense path takes it)
            layer.weight = nn.Parameter(w.dense, requires_grad=False)
        else:
            layer.fp8 = w

    def apply(self, layer: nn.Module, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if hasattr(layer, "fp8"):
            return self.kernels.fp8_linear(x, layer.fp8, bias)
        return self.kernels.linear(x, layer.weight, bias)

    def apply_gated(self, layer: nn.Module, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if hasattr(layer, "fp8"):
            return self.kernels.fp8_linear(self.kernels.silu_and_mul(x), layer.fp8, bias)
        return self.kernels.linear_gated(x, layer.weight, bias)
