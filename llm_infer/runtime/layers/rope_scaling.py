"""RoPE frequency scaling for long contexts: `linear`, `dynamic` (NTK), `yarn` and `llama3`.

Read from `config.json` as transformers writes it (`rope_parameters`, transformers 5) or as older
checkpoints do (`rope_scaling` with `type` or `rope_type`, `rope_theta` at the top level). Each
type's inverse frequencies and attention factor follow transformers' `modeling_rope_utils`
(`_compute_*_parameters`) operation by operation in fp32, so the tables agree with its to
float rounding:

- linear (kaiokendev): inv_freq / factor.
- dynamic NTK (bloc97, emozilla): base' = base * (factor * L / max_pos - (factor - 1)) ** (d / (d - 2))
  for a sequence of length L > max_pos; below it, the default frequencies. It depends on the
  length, so it is computed per token (`dynamic_inv_freq`), see `RotaryEmbedding`.
- yarn (Peng et al. 2023, arXiv:2309.00071): extrapolated frequencies for dimensions rotating
  more than `beta_fast` times over `original_max_position_embeddings`, interpolated (/ factor)
  below `beta_slow`, a linear ramp between; cos/sin scaled by the attention factor
  0.1 * ln(factor) + 1 (or mscale / mscale_all_dim, or `attention_factor` as given).
- llama3 (Llama 3.1): wavelengths above original / low_freq_factor divided by factor, below
  original / high_freq_factor kept, a smooth blend between.

A type not listed is a one-line UserError naming it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from llm_infer.errors import UserError

SUPPORTED_ROPE_TYPES = ("default", "linear", "dynamic", "yarn", "llama3")


@dataclass(frozen=True)
class RopeScaling:
    rope_type: str = "default"
    theta: float = 10000.0
    factor: float = 1.0
    original_max_position: int | None = None  # yarn, llama3 (and linear when given): the pretraining context
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    attention_factor: float | None = None
    mscale: float | None = None
    mscale_all_dim: float | None = None
    truncate: bool = True
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0

    @classmethod
    def from_config(cls, raw: dict[str, Any], source: str = "config.json") -> "RopeScaling":
        """Parse `rope_parameters` / `rope_scaling` (transformers gives `rope_scaling` precedence).
        Raises UserError for an unsupported type, a missing factor or partial rotary embedding."""
        rope = raw.get("rope_scaling") or raw.get("rope_parameters") or {}
        if not isinstance(rope, dict):
            raise UserError(f"{source}: rope_parameters must be a mapping, got {type(rope).__name__}")
        rope_type = rope.get("rope_type", rope.get("type")) or "default"
        if rope_type not in SUPPORTED_ROPE_TYPES:
            raise UserError(f"{source}: rope type {rope_type!r} is not supported "
                            f"(supported: {', '.join(SUPPORTED_ROPE_TYPES)})")
        partial = rope.get("partial_rotary_factor", raw.get("partial_rotary_factor", 1.0))
        if partial not in (None, 1, 1.0):
            raise UserError(f"{source}: partial_rotary_factor={partial} is not supported (only full rotary)")
        theta = float(rope.get("rope_theta", raw.get("rope_theta", 10000.0)))
        if rope_type == "default":
            return cls(theta=theta)
        max_pos = int(raw.get("max_position_embeddings", 4096))
        original = raw.get("original_max_position_embeddings") or rope.get("original_max_position_embeddings")
        if original is None and rope_type in ("yarn", "llama3"):
            original = max_pos
        factor = rope.get("factor")
        if factor is None and rope_type == "yarn":
            factor = max_pos / original
        if factor is None:
            raise UserError(f"{source}: rope type {rope_type!r} needs a 'factor'")
        return cls(rope_type=rope_type, theta=theta, factor=float(factor),
                   original_max_position=None if original is None else int(original),
                   beta_fast=float(rope.get("beta_fast") or 32), beta_slow=float(rope.get("beta_slow") or 1),
                   attention_factor=rope.get("attention_factor"), mscale=rope.get("mscale"),
                   mscale_all_dim=rope.get("mscale_all_dim"), truncate=bool(rope.get("truncate", True)),
                   low_freq_factor=float(rope.get("low_freq_factor", 1.0)),
                   high_freq_factor=float(rope.get("high_freq_factor", 4.0)))

    @property
    def dynamic(self) -> bool:
        return self.rope_type == "dynamic"

    def context_len(self, max_position_embeddings: int) -> int:
        """Positions the model can serve. Dynamic NTK stretches `max_position_embeddings` by its
        factor; yarn, llama3 and linear with an `original_max_position_embeddings` reach
        original * factor (or `max_position_embeddings` if larger); linear without one has its
        stretched length in `max_position_embeddings` already."""
        if self.rope_type == "dynamic":
            return int(max_position_embeddings * self.factor)
        if self.rope_type == "default" or self.original_max_position is None:
            return max_position_embeddings
        return max(max_position_embeddings, int(self.original_max_position * self.factor))

    def _base_inv_freq(self, dim: int) -> torch.Tensor:
        """fp32 `[dim / 2]`: 1 / theta ** (2i / dim)."""
        return 1.0 / (self.theta ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))

    def inv_freq(self, dim: int) -> tuple[torch.Tensor, float]:
        """fp32 inverse frequencies `[dim / 2]` and the factor cos/sin are multiplied by. For
        dynamic NTK these are the frequencies of sequences within `max_position_embeddings`."""
        inv = self._base_inv_freq(dim)
        if self.rope_type == "linear":
            return inv / self.factor, 1.0
        if self.rope_type == "yarn":
            return self._yarn(dim)
        if self.rope_type == "llama3":
            return self._llama3(inv), 1.0
        return inv, 1.0

    def dynamic_inv_freq(self, dim: int, seq_lens: torch.Tensor, max_position_embeddings: int) -> torch.Tensor:
        """Dynamic NTK: fp32 `[n, dim / 2]` for sequences of lengths `seq_lens` (int64 `[n]`)."""
        lens = seq_lens.clamp(min=max_position_embeddings)
        base = self.theta * ((self.factor * lens / max_position_embeddings) - (self.factor - 1)) ** (dim / (dim - 2))
        exponents = torch.arange(0, dim, 2, dtype=torch.int64).float() / dim
        return 1.0 / (base[:, None] ** exponents[None, :])

    def _yarn(self, dim: int) -> tuple[torch.Tensor, float]:
        factor, original = self.factor, self.original_max_position

        def mscale(scale: float, m: float = 1.0) -> float:
            return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

        attention = self.attention_factor
        if attention is None:
            if self.mscale and self.mscale_all_dim:
                attention = mscale(factor, self.mscale) / mscale(factor, self.mscale_all_dim)
            else:
                attention = mscale(factor)

        def correction_dim(rotations: float) -> float:  # the dimension rotating `rotations` times over `original`
            return (dim * math.log(original / (rotations * 2 * math.pi))) / (2 * math.log(self.theta))

        low, high = correction_dim(self.beta_fast), correction_dim(self.beta_slow)
        if self.truncate:
            low, high = math.floor(low), math.ceil(high)
        low, high = max(low, 0), min(high, dim - 1)
        if low == high:
            high += 0.001  # as transformers: avoid a zero-width ramp
        ramp = torch.clamp((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low), 0, 1)
        pos_freqs = self.theta ** (torch.arange(0, dim, 2).float() / dim)
        extrapolation = 1 - ramp
        inv = (1.0 / (factor * pos_freqs)) * (1 - extrapolation) + (1.0 / pos_freqs) * extrapolation
        return inv, float(attention)

    def _llama3(self, inv: torch.Tensor) -> torch.Tensor:
        original, factor = self.original_max_position, self.factor
        low_wavelen, high_wavelen = original / self.low_freq_factor, original / self.high_freq_factor
        wavelen = 2 * math.pi / inv
        scaled = torch.where(wavelen > low_wavelen, inv / factor, inv)
        smooth = (original / wavelen - self.low_freq_factor) / (self.high_freq_factor - self.low_freq_factor)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = ~(wavelen < high_wavelen) * ~(wavelen > low_wavelen)
        return torch.where(medium, smoothed, scaled)
