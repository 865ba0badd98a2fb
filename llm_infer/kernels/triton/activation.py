"""SiLU-gated product of the MLP (`torch_ref.silu_and_mul`): silu(gate) * up, computed in fp32 and
rounded once (the torch reference rounds silu(gate) first, so the two may differ by rounding)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from llm_infer.kernels.triton.checks import activation, like, need


@dataclass(frozen=True)
class Tile:
    block: int  # output columns per program (a power of two)
    warps: int


# Keyed by shape class; defaults valid on any GPU. Swept by benchmarks/gpu_sections/decode_kernels.py.
TILES: dict[str, Tile] = {"default": Tile(block=1024, warps=4)}
CANDIDATES = [Tile(b, w) for b in (512, 1024, 2048) for w in (2, 4, 8)]


def shape_class(rows: int, inter: int) -> str:
    return "default"


@triton.jit
def _silu_and_mul_kernel(x_ptr, out_ptr, inter, x_stride, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    c = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = c < inter
    gate = tl.load(x_ptr + row * x_stride + c, mask=mask, other=0.0).to(tl.float32)
    up = tl.load(x_ptr + row * x_stride + inter + c, mask=mask, other=0.0).to(tl.float32)
    y = gate / (1.0 + tl.exp(-gate)) * up
    tl.store(out_ptr + row * inter + c, y.to(out_ptr.dtype.element_ty), mask=mask)


def silu_and_mul(x: torch.Tensor, out: torch.Tensor | None = None, *, tile: Tile | None = None) -> torch.Tensor:
    """x: [M, 2 * I] = [gate | up], float16/bfloat16, last dimension stride 1 (rows may be strided).
    out: [M, I] contiguous, x's dtype; allocated when None. Returns out = silu(gate) * up.
    Raises ValueError naming the argument on a shape, dtype, device or layout mismatch."""
    activation(x, "x", 2)
    rows, width = x.shape
    need(width % 2 == 0, "x", f"last dimension must be even ([gate | up]), got {width}")
    inter = width // 2
    like(out, "out", (rows, inter), x.dtype, x.device)
    out = torch.empty(rows, inter, dtype=x.dtype, device=x.device) if out is None else out
    if rows == 0 or inter == 0:
        return out
    t = tile or TILES[shape_class(rows, inter)]
    _silu_and_mul_kernel[(rows, triton.cdiv(inter, t.block))](x, out, inter, x.stride(0), BLOCK=t.block,
                                                              num_warps=t.warps)
    return out
