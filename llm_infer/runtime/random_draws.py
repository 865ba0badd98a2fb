"""Seeded random draws: each draw of a request is fixed by (request seed, output index, purpose).

That makes a seeded request's tokens independent of its batch, of chunking and of
preemption, and lets speculative decoding draw its acceptance tests and residual
samples from streams of their own. Sampling uses the exponential race (argmax of
p / E with E ~ Exp(1)), which draws exactly from p.
"""

from __future__ import annotations

import torch

_MASK64 = (1 << 64) - 1
PURPOSES = 4  # 0: the token itself; speculative decoding's extra draws use 1..3


def _mix64(x: int) -> int:
    """A 64-bit integer hash (splitmix64's finaliser)."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def draw_seed(seed: int, output_index: int, purpose: int = 0) -> int:
    """The generator seed of one draw: (request seed, output index, purpose). torch's CPU
    generator keeps only the low 32 bits of a seed, so the seed is 32 bits, and within one
    request distinct (index, purpose) pairs give distinct seeds (a bijection of index*4+purpose)."""
    return (_mix64(seed) ^ (output_index * PURPOSES + purpose)) & 0xFFFFFFFF


def exponential_noise(out: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Fill `out` with Exp(1) draws as -log(U), U ~ Uniform[0, 1) (exact; on CPU about 6x faster
    than `Tensor.exponential_`), clamped away from 0 so that p / E is finite."""
    return out.uniform_(generator=generator).log_().neg_().clamp_(min=torch.finfo(out.dtype).tiny)


def draw(probs: torch.Tensor, seed: int) -> int:
    """One token from `probs` (a 1-D distribution), by the exponential race seeded with `seed`."""
    gen = torch.Generator(device=probs.device).manual_seed(seed)
    return int((probs / exponential_noise(torch.empty_like(probs), gen)).argmax())
