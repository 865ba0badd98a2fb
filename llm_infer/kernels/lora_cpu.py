"""The batched LoRA kernel for CPU (`csrc/cpu_lora/lora.cpp`), built on first use.

A module of its own (not in the main CPU extension) so that engines without adapters never build
it: the first step with adapter tokens compiles it once (a few seconds), with the flags and into
the cache of the variant `cpu_extension` selects. Where it cannot be built, or for dtypes other
than float32/bfloat16, or on a CPU that cannot run the variant, the torch reference
(`lora_torch.lora_add`) runs instead.
"""

from __future__ import annotations

import functools
import hashlib
import sys
import warnings
from pathlib import Path
from types import ModuleType

import torch

from llm_infer.kernels import lora_torch
from llm_infer.kernels.cpu_extension import VARIANTS, build_locked, cache_home, missing_features, selected_variant

SOURCE = Path(__file__).parent / "csrc" / "cpu_lora" / "lora.cpp"


@functools.cache
def load_lora_extension(variant: str | None = None) -> ModuleType | None:
    """The compiled kernel for `variant` (None: `selected_variant()`), or None after a warning."""
    variant = variant or selected_variant()
    if missing_features(variant):  # code built for this variant would not run here
        return None
    key = hashlib.sha256(SOURCE.read_bytes() + " ".join(VARIANTS[variant]).encode()
                         + torch.__version__.encode() + sys.version.encode()).hexdigest()[:16]
    try:
        return build_locked(f"llm_infer_lora_cpu_{key}", [SOURCE], variant,
                            cache_home() / "build" / f"cpu-lora-{variant}-{key}")
    except Exception as e:  # a broken toolchain must not stop inference
        warnings.warn(f"llm-infer: the CPU LoRA kernel failed to build ({str(e).splitlines()[0][:200]}); "
                      "LoRA runs on the torch reference")
        return None


def lora_add(y: torch.Tensor, x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, slots: torch.Tensor,
             offsets: tuple[int, ...]) -> None:
    """`lora_torch.lora_add`, by the C++ kernel where it applies."""
    ext = load_lora_extension() if y.dtype in (torch.float32, torch.bfloat16) else None
    if ext is None or y.stride(-1) != 1:
        return lora_torch.lora_add(y, x, a, b, slots, offsets)
    ext.lora_add(y, x if x.stride(-1) == 1 else x.contiguous(), a, b, slots, list(offsets))
