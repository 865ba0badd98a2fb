"""SwiGLU gate: silu(gate) * up over a merged [gate | up] projection."""

import torch
from torch import nn

from llm_infer.kernels.dispatch import Kernels


class SiluAndMul(nn.Module):
    def __init__(self, kernels: Kernels):
        super().__init__()
        self.kernels = kernels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.kernels.silu_and_mul(x)
