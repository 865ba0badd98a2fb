"""Everything between the qkv projection and attention, in one kernel per layer: the optional
per-head RMSNorm of q and k (Qwen3's q_norm / k_norm), the rotary embedding of q and k in place
in the qkv rows, and the scatter of k and v into the paged KV cache.

The reference is `torch_ref.rms_norm` per head, `torch_ref.rotary_` and the cache scatter of
`TorchAttentionBackend.write_kv`. The norm rounds as the reference does (normalised value, then
its product with the weight, each to the dtype: the values Hugging Face's model sees); the
rotation is done in fp32 with fp32 cos/sin and rounded once (the reference rounds cos/sin and
each product to the dtype, so the two differ by rounding, ours being closer to fp32).

Program (token t, head h) with h < num_heads rotates q head h; with h >= num_heads it handles
KV head h - num_heads: rotates k, writes it back and to k_cache, and copies v to v_cache.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from llm_infer.kernels.triton.checks import activation, index, like, need, power_of_two


@dataclass(frozen=True)
class Tile:
    warps: int


# Keyed by shape class (the head size); defaults valid on any GPU. Swept by the GPU benchmark.
TILES: dict[str, Tile] = {"default": Tile(warps=1), "wide": Tile(warps=2)}
CANDIDATES = [Tile(w) for w in (1, 2, 4)]


def shape_class(tokens: int, head_dim: int) -> str:
    return "default" if head_dim <= 128 else "wide"


@triton.jit
def _head_norm(x1, x2, w_ptr, eps, HALF: tl.constexpr):
    """RMSNorm of one head held as its two halves, rounded like torch_ref.rms_norm."""
    i = tl.arange(0, HALF)
    rstd = 1.0 / tl.sqrt((tl.sum(x1 * x1, axis=0) + tl.sum(x2 * x2, axis=0)) / (2 * HALF) + eps)
    dt = w_ptr.dtype.element_ty
    y1 = (x1 * rstd).to(dt).to(tl.float32) * tl.load(w_ptr + i).to(tl.float32)
    y2 = (x2 * rstd).to(dt).to(tl.float32) * tl.load(w_ptr + HALF + i).to(tl.float32)
    return y1.to(dt).to(tl.float32), y2.to(dt).to(tl.float32)


@triton.jit
def _rope_kv_kernel(qkv_ptr, row_stride, pos_ptr, cos_ptr, sin_ptr, qw_ptr, kw_ptr, kc_ptr, vc_ptr, slot_ptr,
                    eps, H: tl.constexpr, KVH: tl.constexpr, D: tl.constexpr,
                    Q_NORM: tl.constexpr, K_NORM: tl.constexpr):
    HALF: tl.constexpr = D // 2
    t = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1)
    i = tl.arange(0, HALF)
    row = qkv_ptr + t * row_stride
    head = row + h * D
    x1 = tl.load(head + i).to(tl.float32)
    x2 = tl.load(head + HALF + i).to(tl.float32)
    pos = tl.load(pos_ptr + t).to(tl.int64)
    cos1 = tl.load(cos_ptr + pos * D + i)
    cos2 = tl.load(cos_ptr + pos * D + HALF + i)
    sin1 = tl.load(sin_ptr + pos * D + i)
    sin2 = tl.load(sin_ptr + pos * D + HALF + i)
    dt = qkv_ptr.dtype.element_ty
    if h < H:
        if Q_NORM:
            x1, x2 = _head_norm(x1, x2, qw_ptr, eps, HALF)
        tl.store(head + i, (x1 * cos1 - x2 * sin1).to(dt))
        tl.store(head + HALF + i, (x2 * cos2 + x1 * sin2).to(dt))
    else:
        if K_NORM:
            x1, x2 = _head_norm(x1, x2, kw_ptr, eps, HALF)
        k1 = (x1 * cos1 - x2 * sin1).to(dt)
        k2 = (x2 * cos2 + x1 * sin2).to(dt)
        tl.store(head + i, k1)
        tl.store(head + HALF + i, k2)
        slot = tl.load(slot_ptr + t).to(tl.int64)
        if slot >= 0:  # a negative slot marks a padding row: nothing goes to the cache
            kvh = h - H
            dst = slot * (KVH * D) + kvh * D
            tl.store(kc_ptr + dst + i, k1)
            tl.store(kc_ptr + dst + HALF + i, k2)
            d = tl.arange(0, D)
            tl.store(vc_ptr + dst + d, tl.load(row + (H + KVH + kvh) * D + d))


def rotary_write_kv(qkv: torch.Tensor, positions: torch.Tensor, cos_cache: torch.Tensor, sin_cache: torch.Tensor,
                    num_heads: int, num_kv_heads: int, head_dim: int, k_cache: torch.Tensor, v_cache: torch.Tensor,
                    slot_mapping: torch.Tensor, q_norm_weight: torch.Tensor | None = None,
                    k_norm_weight: torch.Tensor | None = None, eps: float = 1e-6, *, tile: Tile | None = None) -> None:
    """Norm (optional), rotate and cache the q/k/v of `tokens` tokens. Returns nothing.

    qkv: [tokens, >= (H + 2 * KVH) * D] float16/bfloat16, q heads then k heads then v heads, last
      dimension stride 1 (rows may be strided). Written in place: q and k heads, normed and rotated.
    positions: [tokens] int64 or int32. cos_cache, sin_cache: [max_pos, D] float32, contiguous,
      half-split ("neox") layout. H, KVH, D: num_heads, num_kv_heads, head_dim (D a power of two).
    k_cache, v_cache: [num_blocks, block_size, KVH, D], qkv's dtype, contiguous. Written at
      slot_mapping[t] = block * block_size + offset; slot_mapping: [tokens] int32 or int64, a
      negative slot writes nothing. q_norm_weight, k_norm_weight: [D] in qkv's dtype (Qwen3), or None.
    Positions and slots are not range-checked (that would read the device).
    Raises ValueError naming the argument on a shape, dtype, device or layout mismatch.
    """
    activation(qkv, "qkv", 2)
    tokens, dev = qkv.shape[0], qkv.device
    need(num_heads > 0 and num_kv_heads > 0, "num_heads", f"heads must be positive, got {num_heads}/{num_kv_heads}")
    need(head_dim >= 2 and power_of_two(head_dim), "head_dim", f"must be a power of two >= 2, got {head_dim}")
    need(qkv.shape[1] >= (num_heads + 2 * num_kv_heads) * head_dim, "qkv",
         f"rows of {qkv.shape[1]} cannot hold {num_heads} + 2 x {num_kv_heads} heads of {head_dim}")
    index(positions, "positions", 1, dev, (torch.int64, torch.int32))
    index(slot_mapping, "slot_mapping", 1, dev, (torch.int64, torch.int32))
    need(positions.shape[0] == tokens, "positions", f"expected {tokens} positions, got {positions.shape[0]}")
    need(slot_mapping.shape[0] == tokens, "slot_mapping", f"expected {tokens} slots, got {slot_mapping.shape[0]}")
    need(cos_cache.dim() == 2 and cos_cache.shape[1] == head_dim, "cos_cache",
         f"expected [max_pos, {head_dim}], got {tuple(cos_cache.shape)}")
    like(cos_cache, "cos_cache", tuple(cos_cache.shape), torch.float32, dev)
    like(sin_cache, "sin_cache", tuple(cos_cache.shape), torch.float32, dev)
    need(k_cache.dim() == 4 and tuple(k_cache.shape[2:]) == (num_kv_heads, head_dim), "k_cache",
         f"expected [blocks, block_size, {num_kv_heads}, {head_dim}], got {tuple(k_cache.shape)}")
    like(k_cache, "k_cache", tuple(k_cache.shape), qkv.dtype, dev)
    like(v_cache, "v_cache", tuple(k_cache.shape), qkv.dtype, dev)
    like(q_norm_weight, "q_norm_weight", (head_dim,), qkv.dtype, dev)
    like(k_norm_weight, "k_norm_weight", (head_dim,), qkv.dtype, dev)
    need(eps > 0, "eps", f"must be positive, got {eps}")
    if tokens == 0:
        return
    t = tile or TILES[shape_class(tokens, head_dim)]
    _rope_kv_kernel[(tokens, num_heads + num_kv_heads)](
        qkv, qkv.stride(0), positions, cos_cache, sin_cache,
        qkv if q_norm_weight is None else q_norm_weight, qkv if k_norm_weight is None else k_norm_weight,
        k_cache, v_cache, slot_mapping, float(eps), H=num_heads, KVH=num_kv_heads, D=head_dim,
        Q_NORM=q_norm_weight is not None, K_NORM=k_norm_weight is not None, num_warps=t.warps)
