"""Reading the shard of a checkpoint tensor a parameter needs, without reading the rest.

A "loaded weight" is either a torch.Tensor or a safetensors slice
(`safe_open(...).get_slice(name)`): narrowing a slice reads only those bytes.
"""

from __future__ import annotations

from typing import Any, Callable

import torch


class WeightShapeError(ValueError):
    """A checkpoint tensor does not have the shape (or dtype) the parameter expects."""


def shape_of(loaded: Any) -> tuple[int, ...]:
    if isinstance(loaded, torch.Tensor):
        return tuple(loaded.shape)
    return tuple(loaded.get_shape())


def narrow(loaded: Any, dim: int, start: int, size: int) -> Any:
    """Rows start..start + size of `dim` (a view of a tensor; only those bytes of a slice)."""
    return narrow_dims(loaded, {dim: (start, size)})


def narrow_dims(loaded: Any, ranges: dict[int, tuple[int, int]]) -> Any:
    """The block of `loaded` with dim d narrowed to `ranges[d] = (start, size)`: a view of a
    tensor, or read at once from a safetensors slice (only those bytes). Raises WeightShapeError
    past the end."""
    full = shape_of(loaded)
    index = [slice(None)] * len(full)
    for dim, (start, size) in ranges.items():
        if start + size > full[dim]:
            raise WeightShapeError(f"needs rows {start}..{start + size} of dim {dim}, tensor has shape {list(full)}")
        index[dim] = slice(start, start + size)
    return loaded[tuple(index)]


def materialize(loaded: Any) -> torch.Tensor:
    if isinstance(loaded, torch.Tensor):
        return loaded
    return loaded[tuple(slice(None) for _ in loaded.get_shape())]


def copy_checked(dst: torch.Tensor, loaded: Any) -> None:
    src = materialize(loaded)
    if tuple(src.shape) != tuple(dst.shape):
        raise WeightShapeError(f"expected shape {list(dst.shape)}, checkpoint has {list(src.shape)}")
    dst.copy_(src)


# torch dtypes by the names safetensors gives them (`get_slice(name).get_dtype()`).
_DTYPE_NAMES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.int32: "I32",
                torch.int64: "I64", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
                torch.float8_e4m3fn: "F8_E4M3", torch.float8_e5m2: "F8_E5M2", torch.float64: "F64"}


def dtype_name(loaded: Any) -> str:
    """The safetensors name of a tensor's or slice's dtype (`F16`, `I32`, `F8_E4M3`, ...)."""
    if isinstance(loaded, torch.Tensor):
        return _DTYPE_NAMES.get(loaded.dtype, str(loaded.dtype))
    return loaded.get_dtype()


def check_dtype(loaded: Any, allowed: tuple[str, ...]) -> None:
    """Raises WeightShapeError unless the tensor's dtype is one of `allowed` (safetensors names)."""
    name = dtype_name(loaded)
    if name not in allowed:
        raise WeightShapeError(f"dtype {name}, expected {' or '.join(allowed)}")


def with_dtype_check(loader: Callable[..., None], allowed: tuple[str, ...]) -> Callable[..., None]:
    """A `weight_loader` that checks the tensor's dtype first (`check_dtype`), then calls `loader`."""
    def load(param: torch.Tensor, loaded: Any, shard_id: Any = None) -> None:
        check_dtype(loaded, allowed)
        loader(param, loaded, shard_id)
    return load


def set_weight_attrs(param: torch.Tensor, attrs: dict[str, Any]) -> None:
    for key, value in attrs.items():
        setattr(param, key, value)


def default_weight_loader(param: torch.Tensor, loaded: Any, shard_id: Any = None) -> None:
    copy_checked(param.data, loaded)


def divide(numerator: int, denominator: int, what: str) -> int:
    if numerator % denominator:
        raise ValueError(f"{what}: {numerator} is not divisible by {denominator}")
    return numerator // denominator
