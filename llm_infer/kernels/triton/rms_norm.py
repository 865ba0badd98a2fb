"""RMSNorm, optionally fused with the residual add before it (`torch_ref.rms_norm` / `add_rms_norm`).

Numerics equal the torch reference's: x + residual rounded to the dtype (and stored), the mean of
squares and rsqrt in fp32, the normalised value rounded to the dtype, then multiplied by the weight
and rounded again (the weight product of two fp16/bf16 values is exact in fp32, so this is torch's
`weight * x_hat.to(dtype)`).

Each program normalises `rows` whole rows held in registers (the row is one block of
next_pow2(dim) elements), so a row is read once and written once.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from llm_infer.kernels.triton.checks import activation, like, need


@dataclass(frozen=True)
class Tile:
    rows: int  # rows per program (a power of two)
    warps: int


# Keyed by shape class (`shape_class`); defaults valid on any GPU (at most 4 x 4096 fp32 values in
# registers over 8 warps). `benchmarks/gpu_sections/decode_kernels.py` sweeps CANDIDATES.
TILES: dict[str, Tile] = {
    "narrow": Tile(rows=1, warps=4),       # dim <= 2048, rows <= 64
    "narrow_many": Tile(rows=4, warps=4),  # dim <= 2048, rows > 64
    "wide": Tile(rows=1, warps=8),         # dim > 2048, rows <= 64
    "wide_many": Tile(rows=2, warps=8),    # dim > 2048, rows > 64
}
MAX_DIM = 32768  # a whole row lives in one program's registers
CANDIDATES = [Tile(r, w) for r in (1, 2, 4) for w in (2, 4, 8, 16)]


def shape_class(rows: int, dim: int) -> str:
    return ("narrow" if dim <= 2048 else "wide") + ("_many" if rows > 64 else "")


@triton.jit
def _rms_norm_kernel(x_ptr, res_ptr, w_ptr, out_ptr, rows, dim, eps,
                     HAS_RESIDUAL: tl.constexpr, ROWS: tl.constexpr, BLOCK: tl.constexpr):
    r = tl.program_id(0) * ROWS + tl.arange(0, ROWS)[:, None]
    c = tl.arange(0, BLOCK)[None, :]
    mask = (r < rows) & (c < dim)
    offs = r.to(tl.int64) * dim + c
    x = tl.load(x_ptr + offs, mask=mask, other=0.0)
    if HAS_RESIDUAL:
        x = (x.to(tl.float32) + tl.load(res_ptr + offs, mask=mask, other=0.0).to(tl.float32)).to(x.dtype)
        tl.store(res_ptr + offs, x, mask=mask)
    xf = x.to(tl.float32)
    rstd = 1.0 / tl.sqrt(tl.sum(xf * xf, axis=1) / dim + eps)
    x_hat = (xf * rstd[:, None]).to(x.dtype).to(tl.float32)
    w = tl.load(w_ptr + c, mask=c < dim, other=0.0).to(tl.float32)
    tl.store(out_ptr + offs, (x_hat * w).to(x.dtype), mask=mask)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None,
             out: torch.Tensor | None = None, *, tile: Tile | None = None) -> torch.Tensor:
    """rmsnorm(x) * weight, or with `residual`: residual <- x + residual (in place), then
    rmsnorm(residual) * weight.

    x: [..., dim] float16/bfloat16, contiguous (rows = the leading dimensions, e.g. [tokens, heads,
    head_dim] normalises each head). weight: [dim], x's dtype. residual: like x.
    out: like x (may be x itself); allocated when None. Returns out. tile: overrides TILES (sweeps).
    Raises ValueError naming the argument on a shape, dtype, device or layout mismatch.
    """
    activation(x, "x", None)
    need(x.is_contiguous(), "x", "must be contiguous")
    dim = x.shape[-1]
    rows = x.numel() // max(dim, 1)
    need(0 < dim <= MAX_DIM, "x", f"row length must be in 1..{MAX_DIM}, got {dim}")
    like(weight, "weight", (dim,), x.dtype, x.device)
    like(residual, "residual", tuple(x.shape), x.dtype, x.device)
    like(out, "out", tuple(x.shape), x.dtype, x.device)
    need(eps > 0, "eps", f"must be positive, got {eps}")
    out = torch.empty_like(x) if out is None else out
    if rows == 0:
        return out
    t = tile or TILES[shape_class(rows, dim)]
    _rms_norm_kernel[(triton.cdiv(rows, t.rows),)](
        x, x if residual is None else residual, weight, out, rows, dim, float(eps),
        HAS_RESIDUAL=residual is not None, ROWS=t.rows, BLOCK=triton.next_power_of_2(dim), num_warps=t.warps)
    return out
