"""Block-wise FP8 (Qwen3-*-FP8, DeepSeek-V3 style) in torch: dequantisation, the dynamic
per-token-group activation quantisation, and the W8A8 product through `torch._scaled_mm`.

Format of one layer with N outputs and K inputs, blocks of bn x bk (128 x 128 as published):
`weight` float8_e4m3fn `[N, K]` and `weight_scale_inv` float32 `[ceil(N/bn), ceil(K/bk)]`;
W[n, k] = weight[n, k] * weight_scale_inv[n // bn, k // bk] ("inv": it multiplies, it does not
divide). Activations are quantised per token and per group of bk inputs at run time
(`activation_scheme: dynamic`): x ~ x_fp8 * s, s = max|x_group| / 448.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F

FP8 = torch.float8_e4m3fn
FP8_MAX = 448.0  # the largest finite e4m3 value


def expand_rows(scale_inv: torch.Tensor, rows: int, block_n: int) -> torch.Tensor:
    """float32 `[rows, ceil(K/bk)]`: each weight row's block scales (`scale_inv` `[ceil(rows/bn),
    ceil(K/bk)]` repeated bn times along rows and cut to `rows`). Raises ValueError when the row
    blocks do not cover `rows`."""
    if scale_inv.shape[0] != -(-rows // block_n):
        raise ValueError(f"expected {-(-rows // block_n)} row blocks for {rows} rows, got {scale_inv.shape[0]}")
    return scale_inv.float().repeat_interleave(block_n, 0)[:rows].contiguous()


def dequantize(weight: torch.Tensor, row_scales: torch.Tensor, block_k: int) -> torch.Tensor:
    """float32 W `[N, K]` from the fp8 weight `[N, K]` and its rows' block scales `[N, ceil(K/bk)]`."""
    k = weight.shape[1]
    return weight.float() * row_scales.repeat_interleave(block_k, 1)[:, :k]


def quantize_weight(w: torch.Tensor, block_n: int = 128, block_k: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """w `[N, K]` -> (float8_e4m3fn `[N, K]`, float32 weight_scale_inv `[ceil(N/bn), ceil(K/bk)]`): each
    block scaled so that its largest |w| becomes 448, rounded to nearest e4m3 (`llm-infer quantize`)."""
    n, k = w.shape
    bn, bk = -(-n // block_n), -(-k // block_k)
    padded = torch.zeros(bn * block_n, bk * block_k)
    padded[:n, :k] = w.float()
    blocks = padded.view(bn, block_n, bk, block_k)
    scale_inv = (blocks.abs().amax(dim=(1, 3)) / FP8_MAX).clamp(min=1e-12)
    q = (blocks / scale_inv[:, None, :, None]).clamp(-FP8_MAX, FP8_MAX).to(FP8)
    return q.view(bn * block_n, bk * block_k)[:n, :k].contiguous(), scale_inv


def quantize_activation(x: torch.Tensor, group: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """x `[M, K]` (K a multiple of `group`) -> (float8_e4m3fn `[M, K]`, float32 scales `[M, K/group]`)
    with x ~ x_fp8 * scale per (row, group): scale = max|x_group| / 448 (1 for an all-zero group),
    x / scale rounded to nearest e4m3."""
    m, k = x.shape
    g = x.float().view(m, k // group, group)
    scale = g.abs().amax(-1) / FP8_MAX
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = (g / scale[..., None]).clamp(-FP8_MAX, FP8_MAX).to(FP8)
    return q.view(m, k), scale


def block_scales(row_scales: torch.Tensor, block_n: int) -> torch.Tensor | None:
    """The `[N/bn, ceil(K/bk)]` block scales back from a shard's row scales, or None when the
    shard's rows do not fall on whole blocks (N % bn, or a shard that starts inside a block)."""
    n = row_scales.shape[0]
    if n % block_n:
        return None
    blocks = row_scales.view(n // block_n, block_n, -1)
    return blocks[:, 0].contiguous() if bool((blocks == blocks[:, :1]).all()) else None


def w8a8_linear(x: torch.Tensor, weight_t: torch.Tensor, scale_b: torch.Tensor, bias: torch.Tensor | None,
                layout: str = "outer") -> torch.Tensor:
    """y = x W^T (+ bias) on FP8 tensor cores (CUDA sm_90, torch._scaled_mm block-wise): x `[..., K]`
    bf16/fp16 quantised per token group of 128 here, `weight_t` the fp8 weight as `[K, N]` (a
    transposed row-major `[N, K]`), `scale_b` float32 `[K/128, N/128]` (`w8a8_operands`); y in x's dtype.
    `layout`: the scale_a memory layout the probe found (`outer`: M contiguous, or `row`)."""
    lead, k = x.shape[:-1], x.shape[-1]
    q, scale_a = quantize_activation(x.reshape(-1, k))
    scale_a = scale_a.t().contiguous().t() if layout == "outer" else scale_a
    y = torch._scaled_mm(q, weight_t, scale_a, scale_b, bias=None, out_dtype=x.dtype)
    if bias is not None:
        y = y + bias
    return y.view(*lead, y.shape[-1])


def w8a8_operands(weight: torch.Tensor, blocks: torch.Tensor, layout: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight_t `[K, N]` column-major, scale_b `[K/128, N/128]`) for `w8a8_linear` from the fp8
    weight `[N, K]` and its block scales `[N/128, K/128]`, in the probed layout."""
    scale_b = blocks.t().contiguous()
    return weight.t(), (scale_b.t().contiguous().t() if layout == "outer" else scale_b)


def probe_w8a8(device: torch.device) -> str | None:
    """The scale layout with which `torch._scaled_mm` multiplies block-scaled FP8 correctly on this
    device (`outer` or `row`), or None (no FP8 tensor cores, an older torch, or a wrong result).
    Checked against the dequantised product at 1, 3 and 32 rows."""
    if device.type != "cuda" or torch.cuda.get_device_capability(device) < (9, 0):
        return None
    gen = torch.Generator(device=device).manual_seed(0)
    n, k = 256, 384
    w = (torch.randn(n, k, device=device, generator=gen) * 0.05)
    blocks = (w.view(2, 128, 3, 128).abs().amax(dim=(1, 3)) / FP8_MAX)
    wq = (w / blocks.repeat_interleave(128, 0).repeat_interleave(128, 1)).to(FP8)
    ref_w = dequantize(wq, blocks.repeat_interleave(128, 0), 128)
    for layout in ("outer", "row"):
        try:
            weight_t, scale_b = w8a8_operands(wq, blocks, layout)
            ok = True
            for m in (1, 3, 32):
                x = torch.randn(m, k, device=device, generator=gen).bfloat16()
                xq, xs = quantize_activation(x)
                want = F.linear(xq.float() * xs.repeat_interleave(128, 1), ref_w)
                got = w8a8_linear(x, weight_t, scale_b, None, layout).float()
                ok = ok and bool(((got - want).abs().max() <= 2e-2 * want.abs().max() + 1e-3).item())
            if ok:
                return layout
        except (RuntimeError, ValueError):
            continue
    return None


@dataclass
class FP8Weights:
    """One layer's FP8 weight in the form the selected kernel consumes: `dense` (dequantised at load,
    the model dtype `[N, K]`), or the W8A8 operands of `w8a8_linear`."""

    dense: torch.Tensor | None = None
    weight_t: torch.Tensor | None = None  # float8_e4m3fn [K, N] (column-major)
    scale_b: torch.Tensor | None = None  # float32 [K/128, N/128]
    layout: str = "outer"


def prepare_dense(weight: torch.Tensor, row_scales: torch.Tensor, block_n: int, block_k: int,
                  dtype: torch.dtype) -> FP8Weights:
    """Dequantise at load (CPU, and GPUs without block-scaled FP8 matmuls): W in `dtype`."""
    return FP8Weights(dense=dequantize(weight, row_scales, block_k).to(dtype))


@functools.cache
def _probed(device: torch.device) -> str | None:
    return probe_w8a8(device)


def prepare_w8a8(weight: torch.Tensor, row_scales: torch.Tensor, block_n: int, block_k: int,
                 dtype: torch.dtype) -> FP8Weights:
    """W8A8 operands where `torch._scaled_mm` multiplies 128 x 128-block-scaled FP8 correctly on this
    GPU (probed once per device) and the shard is whole blocks; `prepare_dense` otherwise."""
    n, k = weight.shape
    layout = _probed(weight.device) if (block_n, block_k) == (128, 128) and dtype != torch.float32 else None
    blocks = block_scales(row_scales, block_n) if layout is not None and k % 128 == 0 and n % 128 == 0 else None
    if blocks is None:
        return prepare_dense(weight, row_scales, block_n, block_k, dtype)
    weight_t, scale_b = w8a8_operands(weight, blocks, layout)
    return FP8Weights(weight_t=weight_t, scale_b=scale_b, layout=layout)


def fp8_linear(x: torch.Tensor, w: FP8Weights, bias: torch.Tensor | None) -> torch.Tensor:
    """x @ W^T (+ bias) for either form of `FP8Weights`."""
    if w.dense is not None:
        return F.linear(x, w.dense, bias)
    return w8a8_linear(x, w.weight_t, w.scale_b, bias, w.layout)
