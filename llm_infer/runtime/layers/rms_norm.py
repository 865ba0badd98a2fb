"""RMSNorm with the residual add fused into the same call."""

from __future__ import annotations

import torch
from torch import nn

from llm_infer.kernels.dispatch import Kernels
from llm_infer.parallel.weight_utils import default_weight_loader


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float, dtype: torch.dtype, kernels: Kernels):
        super().__init__()
        self.eps = eps
        self.kernels = kernels
        self.weight = nn.Parameter(torch.ones(size, dtype=dtype), requires_grad=False)
        self.weight.weight_loader = default_weight_loader

    def forward(
        self, x: torch.Tensor, residual: torch.Tensor | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """x `[rows, size]`. Without `residual`: norm(x). With it: (norm(x + residual), x + residual);
        kernels may reuse the storage of x and residual for the results."""
        if residual is None:
            return self.kernels.rms_norm(x, self.weight, self.eps)
        return self.kernels.add_rms_norm(x, residual, self.weight, self.eps)
