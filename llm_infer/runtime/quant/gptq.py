"""Loading GPTQ checkpoints (AutoGPTQ / GPTQModel, `quant_method: gptq`): the settings, and the
linear method that holds a layer's `qweight`/`qzeros`/`scales`/`g_idx` and multiplies through the
selected kernel. The format is described in `kernels/gptq_torch.py`.

- **Kernels.** The math is AWQ's, so after loading each shard is converted once: int4 into AWQ's
  tensors and handed to `kernels.awq_prepare` (the CPU W4A8 kernel, the Triton kernels, the
  reference: whatever the dispatcher picked for AWQ); groups the kernels do not take are split into
  groups they do (group_size -1 or 256 as groups of 128, or 64 where 128 does not divide the width:
  the same scales repeated, exact). int8 is dequantized at load into the model dtype and runs as a
  dense layer (measured against keeping int8: README, "GPTQ and FP8").
- **Sharding** is `parallel/linear.py`'s, in packed units: `qweight` splits its input rows in whole
  int32s (p = 32 / bits inputs each) and `scales`/`qzeros` in whole groups, column-parallel layers
  split outputs (`qzeros` in whole int32s). A shard off that grid is a one-line error naming the
  layer. With group_size -1 every rank holds the one group's scales whole.
- **Act-order** (`desc_act` with `g_idx`): at load the layer's inputs are permuted once so that each
  group's inputs are contiguous (`gptq_torch.group_order`); the kernels then read whole groups.
  The input must arrive in that order. For a down projection its producer, gate_up, computes its
  output features in that order instead (`DecoderMLP.process_weights_after_loading` permutes
  gate_up's output rows once at load), so no step gathers anything. q/k/v, o and gate/up read
  activations whose producer cannot be permuted (RMSNorm output shared with the residual stream;
  attention output, whose columns belong to heads), so their input is gathered every step
  (`index_select` of a [tokens, K] activation: a few microseconds at decode, a copy of the
  activation at prefill, against reading the weight); these layers then leave the fused CPU decode
  stack (`fused_decode.py`) for the layer-by-layer path. Under tensor parallelism a row-parallel
  act-order layer needs each rank's inputs to be whole groups; otherwise it is a one-line error.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from llm_infer.errors import ConfigError, UserError
from llm_infer.kernels import gptq_torch
from llm_infer.kernels.dispatch import Kernels
from llm_infer.parallel.linear import LinearMethod
from llm_infer.parallel.state import get_parallel_state
from llm_infer.parallel.weight_utils import WeightShapeError, set_weight_attrs, with_dtype_check
from llm_infer.runtime.quant.config import QuantConfig

FLOATS = ("F16", "BF16", "F32")
INTS = ("I32",)
KERNEL_GROUPS = (128, 64)  # group sizes a GPTQ group is split into when the kernels do not take it


@dataclass(frozen=True)
class GPTQConfig(QuantConfig):
    bits: int
    group_size: int  # -1: one group over all inputs
    sym: bool
    desc_act: bool
    v1: bool  # checkpoint_format gptq: stored zero = zero - 1
    modules_to_not_convert: tuple[str, ...] = ()

    @classmethod
    def from_raw(cls, raw: dict[str, Any]) -> "GPTQConfig":
        """From a `quantization_config` (or AutoGPTQ `quantize_config.json`) mapping. Raises
        UserError for settings that are not supported."""
        bits, group = raw.get("bits"), raw.get("group_size", 128)
        fmt = str(raw.get("checkpoint_format", "gptq")).lower()
        if bits not in (4, 8):
            raise UserError(f"GPTQ bits={bits!r} is not supported (4 or 8)")
        if not isinstance(group, int) or (group != -1 and (group <= 0 or group % 8)):
            raise UserError(f"GPTQ group_size {group!r} is not supported (-1 or a positive multiple of 8)")
        if fmt not in ("gptq", "gptq_v2"):
            raise UserError(f"GPTQ checkpoint_format {fmt!r} is not supported (gptq or gptq_v2)")
        if raw.get("dynamic"):
            raise UserError("GPTQ per-module overrides ('dynamic') are not supported")
        if raw.get("lm_head"):
            raise UserError("a GPTQ-quantized LM head (lm_head: true) is not supported")
        return cls(bits, group, bool(raw.get("sym", True)), bool(raw.get("desc_act", False)), fmt == "gptq",
                   tuple(raw.get("modules_to_not_convert") or ()))

    def make_method(self, prefix: str, kernels: Kernels) -> LinearMethod:
        return GPTQLinearMethod(self, kernels, prefix)


class GPTQLinearMethod:
    """One GPTQ layer. Parameters as the checkpoint packs them (per shard): `qweight` int32
    `[K/p, N]`, `scales` float32 `[G, N]`, `qzeros` int32 `[G, N/p]` (asymmetric only), `g_idx`
    int32 `[K]` (act-order only). After loading: `layer.awq` (int4) or `layer.weight` (int8,
    dequantized), and `layer.input_perm` (int64 `[K]`, or None) when the input is gathered."""

    def __init__(self, cfg: GPTQConfig, kernels: Kernels, prefix: str):
        self.cfg = cfg
        self.kernels = kernels
        self.prefix = prefix

    def create_weights(self, layer: nn.Module, input_size_per_partition: int, output_size_per_partition: int,
                       dtype: torch.dtype) -> None:
        k, n, cfg = input_size_per_partition, output_size_per_partition, self.cfg
        p = 32 // cfg.bits
        group = cfg.group_size if cfg.group_size > 0 else k
        if k % p or k % group:
            raise ConfigError(f"{self.prefix}: {k} input features per rank is not a whole number of GPTQ groups "
                              f"of {group} ({p} inputs per packed int32); use fewer tensor-parallel ranks")
        if n % p:
            raise ConfigError(f"{self.prefix}: {n} output features per rank is not a multiple of {p} "
                              "(one packed int32)")
        layer.gptq_group, layer.gptq_dtype = group, dtype
        layer.input_perm, layer.input_arrives_ordered, layer.gptq_dense = None, False, False
        # Act-order row-parallel shards: a rank's inputs may belong to any group, so it holds every
        # group's scales and zeros (group_size -1: the one group, whole on every rank, too).
        layer.gptq_all_groups = cfg.group_size < 0 or (cfg.desc_act and layer.input_size != k)
        groups = 1 if cfg.group_size < 0 else (layer.input_size if layer.gptq_all_groups else k) // group
        group_dims = {} if layer.gptq_all_groups else {"input_dim": 0}
        params = [("qweight", (k // p, n), torch.int32, {"input_dim": 0, "output_dim": 1}, INTS),
                  ("scales", (groups, n), torch.float32, {**group_dims, "output_dim": 1}, FLOATS)]
        if not cfg.sym:
            params.append(("qzeros", (groups, n // p), torch.int32, {**group_dims, "output_dim": 1}, INTS))
        for name, shape, dt, dims, allowed in params:
            param = nn.Parameter(torch.empty(shape, dtype=dt), requires_grad=False)
            set_weight_attrs(param, {**dims, "weight_loader": with_dtype_check(layer.weight_loader, allowed)})
            layer.register_parameter(name, param)
        # Read whenever the checkpoint has it (desc_act false checkpoints usually store the trivial
        # k // group, which costs nothing; any other order is honoured, not ignored); required with desc_act.
        g_idx = nn.Parameter(torch.empty(k, dtype=torch.int32), requires_grad=False)
        set_weight_attrs(g_idx, {"input_dim": 0, "optional": not cfg.desc_act,
                                 "weight_loader": with_dtype_check(self._g_idx_loader(layer), INTS)})
        layer.register_parameter("g_idx", g_idx)

    @staticmethod
    def _g_idx_loader(layer: nn.Module) -> Callable[..., None]:
        """Merged projections (q/k/v, gate/up) read the same input, so they must share one order."""
        def load(param: nn.Parameter, loaded: Any, shard_id: Any = None) -> None:
            before = param.data.clone() if getattr(param, "loaded", False) else None
            layer.weight_loader(param, loaded, shard_id)
            if before is not None and not torch.equal(before, param.data):
                raise WeightShapeError("differs from the g_idx of the projections merged with it (they share "
                                       "one input, so act-order must order it the same way)")
            param.loaded = True
        return load

    # --- act-order ---

    def input_order(self, layer: nn.Module) -> torch.Tensor | None:
        """The permutation (int64 `[K]`) in which this layer reads its input, or None (no act-order,
        or g_idx already in order). Raises UserError naming g_idx when it is not a valid grouping."""
        if not hasattr(layer, "g_idx"):
            return getattr(layer, "order", None)
        g_idx = layer.g_idx.data.long() if getattr(layer.g_idx, "loaded", False) else None
        del layer.g_idx
        layer.order = None
        if g_idx is None:
            return None
        k = g_idx.numel()
        groups = k // layer.gptq_group
        total = layer.input_size // layer.gptq_group if self.cfg.group_size > 0 else 1
        if int(g_idx.min()) < 0 or int(g_idx.max()) >= total:
            raise UserError(f"{self.prefix}.g_idx: groups {int(g_idx.min())}..{int(g_idx.max())}, the layer has "
                            f"{total}")
        split = layer.input_size != layer.input_size_per_partition  # row-parallel under TP
        first = get_parallel_state().tp_rank * groups if split and self.cfg.group_size > 0 else 0
        try:
            layer.order = gptq_torch.group_order(g_idx - first, layer.gptq_group, groups)
        except ValueError as e:
            if not split:
                raise UserError(f"{self.prefix}.g_idx: {e}") from None
            if not layer.gptq_all_groups:
                raise UserError(f"{self.prefix}.g_idx orders inputs across tensor-parallel shards although "
                                "desc_act is false (set desc_act: true in the quantization config)") from None
            # This rank's inputs are not whole groups of its own: dequantized at load instead.
            layer.gptq_dense, layer.gptq_g_idx = True, g_idx
            return None
        if layer.gptq_all_groups and self.cfg.group_size > 0:
            layer.gptq_first_group = first
        return layer.order

    def permute_outputs(self, layer: nn.Module, perm: torch.Tensor, parts: int) -> None:
        """Reorder the output features of each of the `parts` equal parts (gate, up) by `perm`,
        before conversion: output j of a part becomes its former output perm[j]."""
        n = layer.qweight.shape[1]
        idx = torch.cat([perm + i * (n // parts) for i in range(parts)])
        layer.qweight.data = layer.qweight.data[:, idx].contiguous()
        layer.scales.data = layer.scales.data[:, idx].contiguous()
        if hasattr(layer, "qzeros"):
            bits = self.cfg.bits
            layer.qzeros.data = gptq_torch.pack_cols(gptq_torch.unpack_cols(layer.qzeros.data, bits)[:, idx], bits)
        if layer.bias is not None:
            layer.bias.data = layer.bias.data[idx].contiguous()

    # --- conversion and the product ---

    def process_weights_after_loading(self, layer: nn.Module) -> None:
        cfg, group = self.cfg, layer.gptq_group
        q = gptq_torch.unpack_rows(layer.qweight.data, cfg.bits)  # [K, N]
        k, n = q.shape
        scales = layer.scales.data
        zeros = gptq_torch.zeros_of(getattr(layer, "qzeros", None), scales.shape[0], n, cfg.bits, cfg.sym, cfg.v1)
        perm = self.input_order(layer)
        for name in ("qweight", "qzeros", "scales"):
            if hasattr(layer, name):
                delattr(layer, name)
        if layer.gptq_dense:  # act-order row shard that is not whole groups
            w = gptq_torch.dequantize_values(q, zeros, scales, layer.gptq_g_idx)
            layer.weight = nn.Parameter(w.to(layer.gptq_dtype), requires_grad=False)
            del layer.gptq_g_idx
            return
        if layer.gptq_all_groups and cfg.group_size > 0:  # whole groups after all: keep this rank's
            first = getattr(layer, "gptq_first_group", 0)
            zeros, scales = zeros[first : first + k // group], scales[first : first + k // group]
        if perm is not None:
            q = q[perm]
            layer.input_perm = None if layer.input_arrives_ordered else perm
        if cfg.bits == 8:
            w = (q.float().view(-1, group, n) - zeros.float()[:, None]) * scales.float()[:, None]
            layer.weight = nn.Parameter(w.view(k, n).t().to(layer.gptq_dtype).contiguous(), requires_grad=False)
            return
        zeros, scales, kernel_group = gptq_torch.regroup(zeros, scales, group, k, KERNEL_GROUPS)
        half = scales.half()
        if torch.equal(half.float(), scales):  # fp16 (and most bf16) scales: the kernels' own dtype
            scales = half
        layer.awq = self.kernels.awq_prepare(*gptq_torch.to_awq(q, zeros, scales), kernel_group)

    def _ordered(self, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return x if layer.input_perm is None else x.index_select(-1, layer.input_perm)

    def apply(self, layer: nn.Module, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        x = self._ordered(layer, x)
        if hasattr(layer, "awq"):
            return self.kernels.awq_linear(x, layer.awq, bias)
        return self.kernels.linear(x, layer.weight, bias)

    def apply_gated(self, layer: nn.Module, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if layer.input_perm is None and not hasattr(layer, "awq"):
            return self.kernels.linear_gated(x, layer.weight, bias)
        return self.apply(layer, self.kernels.silu_and_mul(x), bias)
