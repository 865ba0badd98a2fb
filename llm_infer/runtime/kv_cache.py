"""The paged KV cache tensors of one worker, sized from a memory budget."""

from __future__ import annotations

import numpy as np
import torch

from llm_infer.errors import UserError


def bytes_per_block(num_layers: int, block_size: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype) -> int:
    """K and V for every layer this worker holds, for one block of tokens."""
    return 2 * num_layers * block_size * num_kv_heads * head_dim * torch.empty((), dtype=dtype).element_size()


def available_memory(device: torch.device) -> int:
    """Bytes free for the cache: free device memory on CUDA, MemAvailable on CPU."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free
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


class KVCache:
    """One `[2, blocks, block_size, kv_heads, head_dim]` tensor per attention layer."""

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
