"""Argument checks shared by the Triton launchers: host-side metadata only (shape, dtype, device,
strides), never a device value, so a launcher stays CUDA-graph capturable. Every failure is a
`ValueError` whose message starts with the argument's name."""

from __future__ import annotations

import torch

ACTIVATION_DTYPES = (torch.float16, torch.bfloat16)


def need(ok: bool, name: str, what: str) -> None:
    """Raise `ValueError("<name>: <what>")` unless `ok`."""
    if not ok:
        raise ValueError(f"{name}: {what}")


def activation(t: torch.Tensor, name: str, dim: int | None) -> None:
    """`t` is a float16/bfloat16 tensor of `dim` dimensions (None: at least one) whose last
    dimension has stride 1."""
    need(isinstance(t, torch.Tensor), name, f"expected a tensor, got {type(t).__name__}")
    need(t.dtype in ACTIVATION_DTYPES, name, f"dtype must be float16 or bfloat16, got {t.dtype}")
    need(t.dim() == dim if dim is not None else t.dim() >= 1, name,
         f"expected {dim or 'at least 1'} dimensions, got shape {tuple(t.shape)}")
    need(t.numel() == 0 or t.stride(-1) == 1, name, "the last dimension must have stride 1")


def like(t: torch.Tensor | None, name: str, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device,
         contiguous: bool = True) -> None:
    """`t` (when given) has exactly this shape, dtype and device (and is contiguous)."""
    if t is None:
        return
    need(isinstance(t, torch.Tensor), name, f"expected a tensor, got {type(t).__name__}")
    need(tuple(t.shape) == tuple(shape), name, f"expected shape {tuple(shape)}, got {tuple(t.shape)}")
    need(t.dtype == dtype, name, f"expected dtype {dtype}, got {t.dtype}")
    need(t.device == device, name, f"expected device {device}, got {t.device}")
    need(not contiguous or t.is_contiguous(), name, "must be contiguous")


def index(t: torch.Tensor, name: str, dim: int, device: torch.device, dtypes=(torch.int32,)) -> None:
    """An integer index tensor (block tables, lengths, positions, slots) on `device`."""
    need(isinstance(t, torch.Tensor), name, f"expected a tensor, got {type(t).__name__}")
    need(t.dtype in dtypes, name, f"dtype must be one of {[str(d) for d in dtypes]}, got {t.dtype}")
    need(t.dim() == dim, name, f"expected {dim} dimensions, got shape {tuple(t.shape)}")
    need(t.device == device, name, f"expected device {device}, got {t.device}")
    need(t.numel() == 0 or t.stride(-1) == 1, name, "the last dimension must have stride 1")


def power_of_two(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0
