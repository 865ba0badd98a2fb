"""The one place that decides which implementation runs each kernel.

`kernels: torch` always uses the torch reference; `auto` uses our compiled
kernels where they exist for the device, and the torch path otherwise.
"""

from __future__ import annotations

import torch

from llm_infer.kernels.attention_torch import TorchAttentionBackend


def attention_backend(kernels: str, device: torch.device) -> TorchAttentionBackend:
    return TorchAttentionBackend()
