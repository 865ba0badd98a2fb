"""The GPTQ algorithm (Frantar et al., 2022, "GPTQ: Accurate Post-Training Quantization for
Generative Pre-trained Transformers"), one linear weight at a time, and its output in the
AutoGPTQ checkpoint layout (`kernels/gptq_torch.py`).

Columns (inputs) are quantized left to right, asymmetric round-to-nearest per group of inputs;
each column's rounding error is spread over the columns not yet quantized through the inverse
Hessian of the layer's output error, H = 2 X^T X / T on the calibration inputs X `[T, K]`
(dampened by 1% of its mean diagonal), in blocks of 128 columns with lazy updates. A group's
scale and zero are fixed when its first column is reached, from the weights as updated so far.
No act-order: inputs stay in their order, so `g_idx` is k // group_size. Scales are rounded to
fp16 before use, so the checkpoint's dequantized weight is exactly what was optimised.
"""

from __future__ import annotations

import torch

from llm_infer.kernels import gptq_torch

BLOCK = 128
DAMP = 0.01


def group_params(w: torch.Tensor, maxq: int) -> tuple[torch.Tensor, torch.Tensor]:
    """w `[N, g]` -> (scale `[N]` float32 exactly representable in fp16, zero `[N]` 1..maxq):
    asymmetric min/max per row. The zero is at least 1: AutoGPTQ's v1 format stores zero - 1."""
    lo, hi = w.amin(1).clamp(max=0), w.amax(1).clamp(min=0)
    scale = ((hi - lo) / maxq).clamp(min=1e-5).half().float()
    zero = torch.round(-lo / scale).clamp(1, maxq)
    return scale, zero


def inverse_hessian(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Calibration inputs x `[T, K]` -> (the upper Cholesky factor of H^-1, float64 `[K, K]`; the
    inputs that are always zero, bool `[K]`), shared by every layer reading x (q/k/v, gate/up)."""
    xf = x.float()
    h = (2 * xf.t() @ xf / max(x.shape[0], 1)).double()
    dead = torch.diag(h) == 0
    h[dead, dead] = 1
    h += DAMP * torch.diag(h).mean() * torch.eye(h.shape[0], dtype=h.dtype)
    return torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True), dead


def gptq_quantize(w: torch.Tensor, hessian: tuple[torch.Tensor, torch.Tensor], bits: int, group: int
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """w `[N, K]` and `inverse_hessian` of its inputs -> (q int32 `[K, N]`, zeros int32 `[G, N]`,
    scales float32 `[G, N]`), G = K / group (group -1: one group); W ~ (q - zero) * scale per group."""
    n, k = w.shape
    group = k if group == -1 else group
    maxq = (1 << bits) - 1
    hinv, dead = hessian
    w = w.double().clone()
    w[:, dead] = 0
    q = torch.zeros(n, k, dtype=torch.int32)
    scales, zeros = [], []
    step = max(BLOCK, group) if BLOCK % group else BLOCK
    scale = zero = None
    for i1 in range(0, k, step):
        i2 = min(i1 + step, k)
        w1, err1 = w[:, i1:i2].clone(), torch.zeros(n, i2 - i1, dtype=w.dtype)
        hinv1 = hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            if (i1 + i) % group == 0:
                scale, zero = (t.double() for t in group_params(w1[:, i : i + group].float(), maxq))
                scales.append(scale.float())
                zeros.append(zero.to(torch.int32))
            col = w1[:, i]
            qc = (torch.round(col / scale) + zero).clamp(0, maxq)
            q[:, i1 + i] = qc.to(torch.int32)
            err = (col - (qc - zero) * scale) / hinv1[i, i]
            w1[:, i:] -= err[:, None] * hinv1[i, i:][None, :]
            err1[:, i] = err
        w[:, i2:] -= err1 @ hinv[i1:i2, i2:]
    return q.t().contiguous(), torch.stack(zeros), torch.stack(scales)


def gptq_tensors(prefix: str, q: torch.Tensor, zeros: torch.Tensor, scales: torch.Tensor, bits: int
                 ) -> dict[str, torch.Tensor]:
    """One layer's checkpoint tensors in AutoGPTQ's layout (`checkpoint_format: gptq`, v1 zeros)."""
    k = q.shape[0]
    group = k // zeros.shape[0]
    return {f"{prefix}.qweight": gptq_torch.pack_rows(q, bits),
            f"{prefix}.qzeros": gptq_torch.pack_cols(zeros - 1, bits),
            f"{prefix}.scales": scales.half().contiguous(),
            f"{prefix}.g_idx": (torch.arange(k) // group).to(torch.int32)}
