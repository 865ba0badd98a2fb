"""AWQ int4 linear layer on the Triton kernels: the GEMV for decode-sized M, the GEMM beyond.

`awq_torch.awq_linear_ref` is the reference; `repack_for_triton` (awq_pack) prepares the weights.
"""

from __future__ import annotations

import torch

from llm_infer.kernels.awq_torch import AWQWeights
from llm_infer.kernels.triton.awq_gemm import awq_gemm
from llm_infer.kernels.triton.awq_gemv import MAX_M, awq_gemv
from llm_infer.kernels.triton.checks import need


def awq_linear(x: torch.Tensor, w: AWQWeights, bias: torch.Tensor | None = None) -> torch.Tensor:
    """y = x @ W^T (+ bias): x [..., K] float16/bfloat16 (last dimension contiguous), w from
    `repack_for_triton` (N outputs), bias [N] in x's dtype or None -> y [..., N] in x's dtype.
    Rows up to `awq_gemv.MAX_M` (16) take the split-K GEMV, more rows the tensor-core GEMM.
    Raises ValueError naming the argument on a mismatch (weights in the reference form included:
    the dispatcher sends those to `awq_torch.awq_linear_ref`)."""
    need(isinstance(x, torch.Tensor) and x.dim() >= 1, "x", "expected a tensor of at least one dimension")
    lead, K = x.shape[:-1], x.shape[-1]
    x2 = x.reshape(-1, K)
    y = awq_gemv(x2, w, bias) if x2.shape[0] <= MAX_M else awq_gemm(x2, w, bias)
    return y.view(*lead, y.shape[-1])
