"""Batched LoRA (BGMV, as Punica calls it): every token adds the product of its own adapter.

The adapters of a linear layer live in a fixed pool of slots, stacked on the device:
`a` `[slots, n_sub * R, K]` and `b` `[slots, R, N]` (B transposed: each rank's row of outputs is
contiguous), where a layer packing several checkpoint projections (q/k/v, gate/up) has `n_sub`
sub-projections: outputs `offsets[i]..offsets[i+1]` belong to sub-projection i, whose
down-projection is rows `i*R..(i+1)*R` of `a`. Ranks below R are zero-padded and the LoRA scale
is folded into `b`. Token t with slot s = `slots[t]` >= 0 gets

    y[t, offsets[i]:offsets[i+1]] += (a[s, i*R:(i+1)*R] @ x[t]) @ b[s, :, offsets[i]:offsets[i+1]]

and a token with slot -1 (no adapter) is left alone. Shapes never depend on which slots the
batch uses, and nothing is read back to the host (capturable in a CUDA graph).
"""

from __future__ import annotations

import torch


def lora_add(y: torch.Tensor, x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, slots: torch.Tensor,
             offsets: tuple[int, ...]) -> None:
    """In place: y `[T, N]` += each token's LoRA product. x `[T, K]`, a `[S, n_sub*R, K]`,
    b `[S, R, N]` (all of y's dtype), slots int64 `[T]` (-1: none), `offsets` n_sub + 1 output
    boundaries (0 first, N last). The torch reference: gathered per token, fp32 products."""
    n_sub = len(offsets) - 1
    rank = a.shape[1] // n_sub
    index = slots.clamp(min=0)
    keep = (slots >= 0).unsqueeze(1).to(torch.float32)
    t = torch.bmm(a[index].float(), x.float().unsqueeze(2)).squeeze(2) * keep  # [T, n_sub*R]
    for i in range(n_sub):
        lo, hi = offsets[i], offsets[i + 1]
        part = torch.bmm(t[:, i * rank:(i + 1) * rank].unsqueeze(1), b[index, :, lo:hi].float()).squeeze(1)
        y[:, lo:hi] += part.to(y.dtype)
