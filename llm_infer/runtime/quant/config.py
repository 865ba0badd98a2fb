"""Which quantization a checkpoint uses, read once: `quant_config(model_dir, quantization_config)`
gives the format's config (AWQ, GPTQ or FP8 block-wise), or None for a dense checkpoint.

Each format's config says which linear method a (possibly merged) module gets (`method_for`):
`modules_to_not_convert` keeps modules dense (a merged module must be all or nothing), and the
format's own method holds and multiplies the rest. Sharding stays in `parallel/linear.py`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from llm_infer.errors import UserError
from llm_infer.kernels.dispatch import Kernels
from llm_infer.parallel.linear import DenseLinearMethod, LinearMethod
from llm_infer.runtime.models.decoder import PACKED_MODULES

# Files some quantizers write beside config.json instead of a `quantization_config` in it.
_SIDECARS = {"quant_config.json": "awq", "quantize_config.json": "gptq"}  # AutoAWQ, AutoGPTQ


class QuantConfig:
    """A format's settings; subclasses implement `make_method`."""

    modules_to_not_convert: tuple[str, ...] = ()

    def make_method(self, prefix: str, kernels: Kernels) -> LinearMethod:
        raise NotImplementedError

    def method_for(self, prefix: str, kernels: Kernels) -> LinearMethod:
        """The linear method of the (possibly merged) module at `prefix`: dense when
        `modules_to_not_convert` names it. Raises UserError when it names only part of a merged one."""
        parent, _, name = prefix.rpartition(".")
        parts = [f"{parent}.{p}" for p, _ in PACKED_MODULES[name]] if name in PACKED_MODULES else [prefix]
        skipped = [any(key in p for key in self.modules_to_not_convert) for p in parts]
        if all(skipped):
            return DenseLinearMethod(kernels.linear, kernels.linear_gated)
        if any(skipped):
            raise UserError(f"{prefix}: modules_to_not_convert excludes only some of {parts}")
        return self.make_method(prefix, kernels)


def quant_config(model_dir: str | Path, quantization: dict[str, Any] | None) -> QuantConfig | None:
    """The format of the checkpoint in `model_dir` from config.json's `quantization_config`
    (`quantization`), or an AutoAWQ / AutoGPTQ sidecar file; None when it is not quantized.
    Raises UserError for a method or variant that is not supported."""
    raw = quantization
    for name, method in _SIDECARS.items():
        side = Path(model_dir) / name
        if raw is None and side.is_file():
            raw = {"quant_method": method, **json.loads(side.read_text())}
    if raw is None:
        return None
    method = str(raw.get("quant_method", "")).lower()
    if method == "awq":
        from llm_infer.runtime.quant.awq import AWQConfig

        return AWQConfig.from_raw(raw)
    if method == "gptq":
        from llm_infer.runtime.quant.gptq import GPTQConfig

        return GPTQConfig.from_raw(raw)
    if method == "fp8":
        from llm_infer.runtime.quant.fp8 import FP8Config

        return FP8Config.from_raw(raw)
    raise UserError(f"quantization method {method or '?'!r} is not supported (AWQ, GPTQ and block-wise FP8 are)")
