"""Torch reference implementations of every kernel: the oracle for the compiled
ones, and the path used where none is built. Numerics follow the Hugging Face
implementations (normalise in fp32, scale and rotate in the model dtype)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

linear = F.linear


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    x32 = x.float()
    x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x32.to(x.dtype)


def add_rms_norm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """(rms_norm(x + residual), x + residual)."""
    residual = x + residual
    return rms_norm(residual, weight, eps), residual


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Half-split rotary embedding of x `[tokens, heads, head_dim]`."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


def rotary_(x: torch.Tensor, positions: torch.Tensor, cos_cache: torch.Tensor, sin_cache: torch.Tensor,
            rot_heads: int, head_dim: int) -> None:
    """In place on the first `rot_heads` heads of each row of x `[tokens, row]`."""
    heads = x[:, : rot_heads * head_dim].view(x.shape[0], rot_heads, head_dim)
    cos = cos_cache[positions].unsqueeze(1).to(x.dtype)
    sin = sin_cache[positions].unsqueeze(1).to(x.dtype)
    heads.copy_(rotate(heads, cos, sin))


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    gate, up = x.chunk(2, dim=-1)
    return F.silu(gate) * up


def quantize_int8_rows(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 with one fp32 scale per row: w ~ q * scale."""
    scale = (w.float().abs().amax(dim=1) / 127.0).clamp(min=1e-12)
    q = torch.round(w.float() / scale[:, None]).clamp(-127, 127).to(torch.int8)
    return q.contiguous(), scale.contiguous()


def int8_linear(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return F.linear(x, (q.float() * scale[:, None]).to(x.dtype))
