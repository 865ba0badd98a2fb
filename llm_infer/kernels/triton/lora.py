"""Batched LoRA on the GPU (BGMV): each token adds its own adapter's product, in place, capturable.

The contract and the torch reference are `kernels/lora_torch.py`: y `[T, N]`, x `[T, K]`,
a `[S, n*R, K]`, b `[S, R, N]` (B transposed), slots int64 `[T]` (-1: none), `offsets` the n + 1
output boundaries of the sub-projections (n <= 3: q/k/v, gate/up, or one).

Two launches, grids fixed by the shapes alone (T, n*R, N): never by which slots the step uses.
- shrink, grid (T, cdiv(n*R, BLOCK_J)): u[t, j] = a[s_t, j, :] . x[t, :] in fp32 into a
  `[T, n*R]` fp32 scratch tensor (allocated per call: inside a CUDA graph it comes from the
  graph's pool);
- expand, grid (T, cdiv(N, BLOCK_N)): y[t, n] += sum_r u[t, sub(n)*R + r] * b[s_t, r, n], where
  sub(n) counts the boundaries at or below n.
Each program reads its token's slot from `slots` on the device; a token with slot -1 masks every
load and store (its row of y is left as it was). No host synchronization, no host reads of
device values: a CUDA graph can capture a step with a static `slots` buffer refilled per replay.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK_J = 16
BLOCK_K = 128
BLOCK_N = 128


@triton.jit
def _shrink(u_ptr, x_ptr, a_ptr, slots_ptr, K, NR, x_stride, BLOCK_J: tl.constexpr, BLOCK_K: tl.constexpr):
    t = tl.program_id(0)
    offs_j = tl.program_id(1) * BLOCK_J + tl.arange(0, BLOCK_J)
    slot = tl.load(slots_ptr + t)
    on = slot >= 0
    slot = tl.maximum(slot, 0)
    j_mask = (offs_j < NR) & on
    acc = tl.zeros([BLOCK_J], dtype=tl.float32)
    a_rows = a_ptr + (slot * NR + offs_j).to(tl.int64)[:, None] * K
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        k_mask = (offs_k < K) & on
        x = tl.load(x_ptr + t * x_stride + offs_k, mask=k_mask, other=0.0).to(tl.float32)
        a = tl.load(a_rows + offs_k[None, :], mask=j_mask[:, None] & k_mask[None, :], other=0.0).to(tl.float32)
        acc += tl.sum(a * x[None, :], axis=1)
    tl.store(u_ptr + t * NR + offs_j, acc, mask=offs_j < NR)


@triton.jit
def _expand(y_ptr, u_ptr, b_ptr, slots_ptr, N, NR, y_stride, OFF1, OFF2, R: tl.constexpr, N_SUB: tl.constexpr,
            BLOCK_N: tl.constexpr):
    t = tl.program_id(0)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    slot = tl.load(slots_ptr + t)
    on = slot >= 0
    slot = tl.maximum(slot, 0)
    n_mask = (offs_n < N) & on
    sub = tl.zeros([BLOCK_N], dtype=tl.int32)
    if N_SUB > 1:
        sub += (offs_n >= OFF1).to(tl.int32)
    if N_SUB > 2:
        sub += (offs_n >= OFF2).to(tl.int32)
    offs_r = tl.arange(0, R)
    u = tl.load(u_ptr + t * NR + sub[None, :] * R + offs_r[:, None], mask=n_mask[None, :], other=0.0)
    b = tl.load(b_ptr + (slot * R + offs_r).to(tl.int64)[:, None] * N + offs_n[None, :], mask=n_mask[None, :],
                other=0.0).to(tl.float32)
    delta = tl.sum(u * b, axis=0)
    y_ptrs = y_ptr + t * y_stride + offs_n
    y = tl.load(y_ptrs, mask=n_mask, other=0.0)
    tl.store(y_ptrs, (y.to(tl.float32) + delta).to(y.dtype), mask=n_mask)


def lora_add(y: torch.Tensor, x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, slots: torch.Tensor,
             offsets: tuple[int, ...]) -> None:
    """In place: y `[T, N]` += each token's LoRA product (see the module docstring). Raises
    ValueError for shapes that disagree, more than 3 sub-projections, or a rank that is not a
    power of two (R = `lora.max_rank`, padded here to the next one where needed by the caller)."""
    n_sub = len(offsets) - 1
    tokens, n_out = y.shape
    rank = b.shape[1]
    if not 1 <= n_sub <= 3 or offsets[0] != 0 or offsets[-1] != n_out:
        raise ValueError(f"offsets {offsets}: 2 to 4 boundaries from 0 to {n_out}")
    if rank & (rank - 1):
        raise ValueError(f"rank {rank}: the Triton LoRA kernel needs a power of two")
    if (x.shape[0] != tokens or slots.shape != (tokens,) or a.shape[1] != n_sub * rank or a.shape[2] != x.shape[1]
            or b.shape[2] != n_out or a.shape[0] != b.shape[0] or slots.dtype != torch.int64):
        raise ValueError(f"shapes: y {tuple(y.shape)}, x {tuple(x.shape)}, a {tuple(a.shape)}, b {tuple(b.shape)}, "
                         f"slots {tuple(slots.shape)} {slots.dtype}")
    if tokens == 0:
        return
    nr = n_sub * rank
    u = torch.empty(tokens, nr, dtype=torch.float32, device=y.device)
    x = x if x.stride(-1) == 1 else x.contiguous()
    _shrink[(tokens, triton.cdiv(nr, BLOCK_J))](u, x, a, slots, x.shape[1], nr, x.stride(0),
                                               BLOCK_J=BLOCK_J, BLOCK_K=BLOCK_K)
    off1 = offsets[1] if n_sub > 1 else n_out
    off2 = offsets[2] if n_sub > 2 else n_out
    _expand[(tokens, triton.cdiv(n_out, BLOCK_N))](y, u, b, slots, n_out, nr, y.stride(0), off1, off2,
                                                  R=rank, N_SUB=n_sub, BLOCK_N=BLOCK_N)
