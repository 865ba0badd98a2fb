"""The numerics of activation-aware weight quantization (AWQ), one linear group at a time.

Group-wise asymmetric 4-bit quantization with zero points, the per-input-channel
scale search (s = mean|x|^alpha over an alpha grid, minimising the group's output
error on calibration activations), and the per-group clipping search. Plain
tensors in, tensors out: the layer walk lives in `awq_quantizer.py`.
"""

from __future__ import annotations

import torch

MAX_Q = 15  # 4 bits


def quantize_groups(w: torch.Tensor, group: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """w `[out, in]` -> (q uint8 `[out, in]`, zeros uint8 `[out, in/group]`, scales fp32 `[out, in/group]`)."""
    out_f, in_f = w.shape
    g = w.float().reshape(out_f, in_f // group, group)
    w_max, w_min = g.amax(-1), g.amin(-1)
    scales = ((w_max - w_min) / MAX_Q).clamp(min=1e-5)
    zeros = (-torch.round(w_min / scales)).clamp(0, MAX_Q)
    q = (torch.round(g / scales[..., None]) + zeros[..., None]).clamp(0, MAX_Q)
    return q.reshape(out_f, in_f).to(torch.uint8), zeros.to(torch.uint8), scales


def fake_quantize(w: torch.Tensor, group: int) -> torch.Tensor:
    """Quantize and dequantize (fp32), as the int4 model will see the weight."""
    q, zeros, scales = quantize_groups(w, group)
    out_f, in_f = w.shape
    deq = (q.float().reshape(out_f, -1, group) - zeros.float()[..., None]) * scales[..., None]
    return deq.reshape(out_f, in_f)


def search_scales(weights: list[torch.Tensor], x: torch.Tensor, group: int, grid: int = 20) -> torch.Tensor:
    """Per-input-channel scales s for linears sharing the input x `[tokens, in]`:
    W -> W diag(s), x -> x / s, choosing alpha in s = mean|x|^alpha to minimise
    || Q(W s)(x / s) - W x ||^2 summed over the group."""
    w = torch.cat(weights).float()
    x = x.float()
    reference = x @ w.t()
    x_mean = x.abs().mean(0)
    best, best_err = torch.ones_like(x_mean), float("inf")
    for i in range(grid):
        alpha = i / grid
        s = x_mean.pow(alpha).clamp(min=1e-4)
        s = s / (s.max() * s.min()).sqrt()
        err = float(((x / s) @ fake_quantize(w * s, group).t() - reference).pow(2).mean())
        if err < best_err:
            best, best_err = s, err
    return best


def search_clipping(w: torch.Tensor, x: torch.Tensor, group: int, steps: int = 10,
                    min_ratio: float = 0.5, chunk: int = 256) -> torch.Tensor:
    """Per (output row, input group) clip bound |w| <= ratio * max|w| minimising that group's
    contribution to the output error on x `[tokens, in]`; returns the clipped weight."""
    out_f, in_f = w.shape
    w = w.float()
    xg = x.float().reshape(x.shape[0], in_f // group, group)  # [t, G, g]
    result = torch.empty_like(w)
    for start in range(0, out_f, chunk):
        wg = w[start : start + chunk].reshape(-1, in_f // group, group)  # [n, G, g]
        max_abs = wg.abs().amax(-1, keepdim=True)
        best_err = torch.full(wg.shape[:2], float("inf"))
        best = wg.clone()
        for i in range(steps):
            ratio = 1.0 - (1.0 - min_ratio) * i / steps
            clipped = wg.clamp(-max_abs * ratio, max_abs * ratio)
            deq = fake_quantize(clipped.reshape(wg.shape[0], in_f), group).reshape(wg.shape)
            # error of each (row, group) partial product over the tokens
            err = torch.einsum("ngk,tgk->ngt", deq - wg, xg).pow(2).mean(-1)
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best = torch.where(better[..., None], clipped, best)
        result[start : start + chunk] = best.reshape(-1, in_f)
    return result
