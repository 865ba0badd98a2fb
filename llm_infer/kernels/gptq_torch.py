"""The GPTQ format (AutoGPTQ / GPTQModel) in torch: unpacking, dequantisation (the reference),
act-order, and the conversion of one shard to the AWQ kernels' input (`awq_torch`).

Layout of a layer with K inputs, N outputs, `bits` b (4 or 8; p = 32 / b values per int32) and G
groups (K / group_size, or 1 for group_size -1):
- `qweight` int32 `[K/p, N]`, packed along the *input* dimension: value i (bits b*i .. b*i+b-1) of
  word (r, n) is q[p*r + i, n];
- `qzeros` int32 `[G, N/p]`, packed along the *output* dimension: value i of word (g, c) is the
  zero of group g, column p*c + i. `checkpoint_format: gptq` (v1) stores zero - 1, so the zero is
  the stored value + 1 (1 .. 2^b, as AutoGPTQ's and exllama's kernels read it; a zero of 0 cannot be
  written in v1); `gptq_v2` stores the zero itself;
- `scales` float `[G, N]`; `g_idx` int32 `[K]`, the group of each input (act-order: any order);
- W[n, k] = (q[k, n] - zero[g_idx[k], n]) * scale[g_idx[k], n]. Symmetric checkpoints have
  zero = 2^(b-1) (their `qzeros` say so too; they are not read).

The math is AWQ's (W = (q - z) * s per group), so a GPTQ int4 shard becomes AWQ tensors once its
groups are contiguous (act-order permuted, `sort_by_group`) and runs on every AWQ kernel.
"""

from __future__ import annotations

import torch

from llm_infer.kernels.awq_torch import pack_awq


def _shifts(bits: int, device: torch.device) -> torch.Tensor:
    return bits * torch.arange(32 // bits, dtype=torch.int32, device=device)


def unpack_rows(packed: torch.Tensor, bits: int) -> torch.Tensor:
    """int32 `[R/p, C]` packed along rows -> int32 `[R, C]` of 0 .. 2^bits - 1."""
    values = (packed.unsqueeze(1) >> _shifts(bits, packed.device)[None, :, None]) & ((1 << bits) - 1)
    return values.reshape(-1, packed.shape[1])


def unpack_cols(packed: torch.Tensor, bits: int) -> torch.Tensor:
    """int32 `[R, C/p]` packed along columns -> int32 `[R, C]` of 0 .. 2^bits - 1."""
    values = (packed.unsqueeze(-1) >> _shifts(bits, packed.device)) & ((1 << bits) - 1)
    return values.reshape(packed.shape[0], -1)


def pack_rows(q: torch.Tensor, bits: int) -> torch.Tensor:
    """int `[R, C]` of 0 .. 2^bits - 1 -> int32 `[R/p, C]` (the inverse of `unpack_rows`)."""
    p = 32 // bits
    q = q.to(torch.int64).reshape(-1, p, q.shape[1]) << _shifts(bits, q.device).long()[None, :, None]
    return _to_int32(q.sum(1))


def pack_cols(q: torch.Tensor, bits: int) -> torch.Tensor:
    """int `[R, C]` of 0 .. 2^bits - 1 -> int32 `[R, C/p]` (the inverse of `unpack_cols`)."""
    p = 32 // bits
    q = q.to(torch.int64).reshape(q.shape[0], -1, p) << _shifts(bits, q.device).long()
    return _to_int32(q.sum(-1))


def _to_int32(words: torch.Tensor) -> torch.Tensor:
    """int64 words of 0 .. 2^32 - 1 -> the int32 with the same bits."""
    return torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)


def zeros_of(qzeros: torch.Tensor | None, groups: int, n: int, bits: int, sym: bool, v1: bool,
             device: torch.device | None = None) -> torch.Tensor:
    """int32 zero points `[G, N]`: 2^(bits-1) when symmetric, else the unpacked `qzeros` (+1 in v1)."""
    if sym or qzeros is None:
        return torch.full((groups, n), 1 << (bits - 1), dtype=torch.int32, device=device)
    return unpack_cols(qzeros, bits) + (1 if v1 else 0)


def group_order(g_idx: torch.Tensor, group: int, groups: int) -> torch.Tensor | None:
    """The input permutation (int64 `[K]`) that makes the groups contiguous: position j takes input
    perm[j], and inputs perm[g*group : (g+1)*group] are exactly group g's. None when g_idx is already
    k // group. Raises ValueError unless every group has exactly `group` inputs."""
    k = g_idx.numel()
    g_idx = g_idx.to(torch.int64)
    expected = torch.arange(k, device=g_idx.device) // group
    if torch.equal(g_idx, expected):
        return None
    if k != group * groups or int(g_idx.min()) < 0 or int(g_idx.max()) >= groups:
        raise ValueError(f"g_idx has groups {int(g_idx.min())}..{int(g_idx.max())}, expected 0..{groups - 1}")
    perm = torch.argsort(g_idx, stable=True)
    if not torch.equal(g_idx[perm], expected):
        raise ValueError(f"g_idx does not give every group exactly {group} inputs")
    return perm


def dequantize_gptq(qweight: torch.Tensor, zeros: torch.Tensor, scales: torch.Tensor, g_idx: torch.Tensor,
                    bits: int) -> torch.Tensor:
    """float32 W `[N, K]` (torch's linear layout) from `qweight` `[K/p, N]`, int zeros and scales
    `[G, N]` (see `zeros_of`) and g_idx `[K]`."""
    return dequantize_values(unpack_rows(qweight, bits), zeros, scales, g_idx)


def dequantize_values(q: torch.Tensor, zeros: torch.Tensor, scales: torch.Tensor, g_idx: torch.Tensor
                      ) -> torch.Tensor:
    """float32 W `[N, K]` from unpacked q `[K, N]`, zeros and scales `[G, N]` and g_idx `[K]`."""
    g = g_idx.long()
    return ((q.float() - zeros[g].float()) * scales[g].float()).t().contiguous()


def regroup(zeros: torch.Tensor, scales: torch.Tensor, group: int, k: int, sizes: tuple[int, ...]
            ) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Zeros and scales `[G, N]` of groups of `group` inputs (K = k) re-expressed for the largest of
    `sizes` that divides `group` (each group's row repeated): exact, as a group of 128 is two groups
    of 64 with the same scale. Unchanged when none divides it."""
    new = next((s for s in sorted(sizes, reverse=True) if group % s == 0 and s < group), None)
    if new is None or k % new:
        return zeros, scales, group
    times = group // new
    return zeros.repeat_interleave(times, 0), scales.repeat_interleave(times, 0), new


def to_awq(q: torch.Tensor, zeros: torch.Tensor, scales: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor,
                                                                            torch.Tensor]:
    """int4 q `[K, N]` (groups contiguous), zeros and scales `[G, N]` -> AutoAWQ's (qweight int32
    `[K, N/8]`, qzeros, scales): qzeros packed int32 `[G, N/8]` when every zero fits a nibble, else
    uint8 `[G, N]` (v1 zeros reach 16), which `awq_torch` takes as well."""
    qz = pack_awq(zeros) if int(zeros.max()) <= 15 else zeros.to(torch.uint8).contiguous()
    return pack_awq(q), qz, scales
