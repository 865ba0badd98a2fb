"""The paged KV cache tensors of one worker, sized from a memory budget, and bound to a model."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from llm_infer.errors import UserError


def bytes_per_block(num_layers: int, block_size: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype) -> int:
    """K and V for every layer this worker holds, for one block of tokens."""
    return 2 * num_layers * block_size * num_kv_heads * head_dim * torch.empty((), dtype=dtype).element_size()


def available_memory(device: torch.device) -> int:
    """Bytes free for the cache: free device memory on CUDA (plus what torch's caching allocator
    holds unused, e.g. from an engine shut down in this process), MemAvailable on CPU."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    raise UserError("cannot read MemAvailable from /proc/meminfo; set cache.num_blocks")


def zeros(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Zeroed memory. On CPU it comes from calloc (through numpy), so the OS supplies zero pages
    as they are first touched: a large cache costs resident memory only as it fills."""
    if device.type != "cpu":
        return torch.zeros(shape, dtype=dtype, device=device)
    itemsize = torch.empty((), dtype=dtype).element_size()
    numel = 1
    for n in shape:
        numel *= n
    raw = torch.from_numpy(np.zeros(numel * itemsize, dtype=np.uint8))
    return raw.view(dtype).view(shape)


def model_block_bytes(model: Any, block_size: int, dtype: torch.dtype) -> int:
    """K and V bytes of one block for every attention layer `model` (a CausalLM shard) holds."""
    layers = model.attention_layers()
    return bytes_per_block(len(layers), block_size, layers[0].num_kv_heads, layers[0].head_dim, dtype)


def bind_kv_cache(model: Any, cache: "KVCache") -> None:
    """Point each attention layer of `model` at its K and V tensors in `cache`."""
    for attn, kv in zip(model.attention_layers(), cache.layers, strict=True):
        attn.k_cache, attn.v_cache = kv[0], kv[1]


class KVCache:
    """One `[2, blocks, block_size, kv_heads, head_dim]` tensor per attention layer."""

    @classmethod
    def for_model(cls, model: Any, num_blocks: int, block_size: int, dtype: torch.dtype,
                  device: torch.device) -> "KVCache":
        """A cache shaped for `model`'s attention layers, bound to them."""
        layers = model.attention_layers()
        cache = cls(len(layers), num_blocks, block_size, layers[0].num_kv_heads, layers[0].head_dim, dtype, device)
        bind_kv_cache(model, cache)
        return cache

    def __init__(self, num_layers: int, num_blocks: int, block_size: int, num_kv_heads: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device):
        self.num_blocks = num_blocks
        self.block_size = block_size
        # Zeroed: padded key positions are masked, but a NaN there would still poison SDPA.
        self.layers = [zeros((2, num_blocks, block_size, num_kv_heads, head_dim), dtype, device)
                       for _ in range(num_layers)]

    def copy_blocks(self, copies: list[tuple[int, int]]) -> None:
        """Copy whole blocks (K and V of every layer): copy-on-write of shared prefix blocks."""
        src = torch.tensor([s for s, _ in copies], device=self.layers[0].device)
        dst = torch.tensor([d for _, d in copies], device=self.layers[0].device)
        for layer in self.layers:
            layer[:, dst] = layer[:, src]
