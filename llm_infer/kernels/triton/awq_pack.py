"""AWQ int4 weights in the layout of the Triton kernels (`awq_gemv`, `awq_gemm`): the repack from
AutoAWQ's layout, done once at load time per tensor-parallel shard, its inverse, the predicate of
the shapes the kernels take, and the in-register dequantisation they share.

Layout of one shard with K inputs, N outputs and group size g (`AWQWeights` fields):
- `q4`: int32 `[N, K/8]`. Word (n, j) holds output column n's quantised values for input rows
  8j..8j+7, row 8j+i in nibble i (bits 4i..4i+3). Rows of K/2 contiguous bytes per output, so a
  program's tile (BLOCK_N outputs x BLOCK_K inputs) is BLOCK_N runs of BLOCK_K/2 bytes (64 bytes at
  BLOCK_K = 128: two full sectors) and a split of K is contiguous within every row.
- `s_gn`: `[K/g, N]`, AutoAWQ's scales unchanged (fp16 as checkpoints hold them), contiguous along
  N: one coalesced BLOCK_N-wide load per tile step. fp16 scales are exact in fp32, so fp16 and
  bf16 activations get the reference's weight values; converting them to bf16 would round them.
- `z_gn`: uint8 `[K/g, N]`, the zero points, one byte per column, beside the scales. They are not
  pre-multiplied by the scale: the kernels subtract the zero point inside the int->float
  conversion (below), where it costs nothing, and `z * s` would need fp32 (4 bytes) to stay exact.
Scales and zeros add 3 bytes per g weights (2.3% of the int4 bytes at g = 128).

Dequantisation (`nibble_minus_zero`), with no int->float conversion (whose throughput would bound
a GEMV): nibble j of a 16-bit half word, masked in place (q * 16^j) and OR-ed into the mantissa of
the float 2^(23 - 4j), is the float 2^(23 - 4j) + q exactly; subtracting 2^(23 - 4j) + z gives
q - z exactly. One LOP3 and one FADD per weight (plus one shift per word for its upper half).
q - z is exact in fp16 and bf16 too, so the kernels either multiply it by x on tensor cores and
scale each group's sum by s (`scaled=False`: more exact than the reference, which rounds every
weight), or form (q - z) * s in fp32 (`dequantize_awq`'s value exactly) and round it to the
activation dtype as the reference does (`scaled=True`).

Shapes (`supports`): group 32, 64 or 128, K a multiple of the group, N a multiple of 8. Anything
else keeps the reference form: `repack_for_triton` then returns `prepare_ref`'s `AWQWeights`
(the AutoAWQ tensors), and the dispatcher runs `awq_torch.awq_linear_ref` for it.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from llm_infer.kernels.awq_torch import AWQWeights, pack_awq, prepare_ref, unpack_awq, zero_points

GROUPS = (32, 64, 128)
_REPACK_ROWS = 4096  # output columns repacked at a time (bounds the temporaries of a 7B gate_up shard)


def supports(K: int, N: int, group: int) -> bool:
    """Whether the Triton AWQ kernels take a [K inputs, N outputs] shard with this group size."""
    return group in GROUPS and K > 0 and N > 0 and K % group == 0 and N % 8 == 0


def repack_for_triton(qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor, group: int) -> AWQWeights:
    """AutoAWQ tensors (one shard: qweight int32 [K, N/8], qzeros int32 [K/g, N/8], scales [K/g, N])
    -> `AWQWeights` with `q4`, `s_gn`, `z_gn` (layout above) and no AutoAWQ fields, on the same
    device. Shapes `supports` refuses keep the reference form (`prepare_ref`)."""
    K, N = qweight.shape[0], qweight.shape[1] * 8
    if not supports(K, N, group):
        return prepare_ref(qweight, qzeros, scales, group)
    z_gn = zero_points(qzeros)
    if tuple(z_gn.shape) != (K // group, N) or tuple(scales.shape) != (K // group, N):
        raise ValueError(f"qzeros/scales: expected [{K // group}, {N // 8}] and [{K // group}, {N}] for qweight "
                         f"{tuple(qweight.shape)} and group {group}, got {tuple(qzeros.shape)} and "
                         f"{tuple(scales.shape)}")
    shifts = 4 * torch.arange(8, dtype=torch.int32, device=qweight.device)
    q4 = torch.empty(N, K // 8, dtype=torch.int32, device=qweight.device)
    for c0 in range(0, N // 8, _REPACK_ROWS // 8):
        q = unpack_awq(qweight[:, c0 : c0 + _REPACK_ROWS // 8])  # uint8 [K, cols], natural column order
        q = q.t().reshape(q.shape[1], K // 8, 8).to(torch.int32)
        q4[8 * c0 : 8 * c0 + q.shape[0]] = (q << shifts).sum(-1, dtype=torch.int32)
    return AWQWeights(group, q4=q4, s_gn=scales.contiguous(), z_gn=z_gn.contiguous())


def unpack_triton(w: AWQWeights) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The inverse of `repack_for_triton`: AutoAWQ's (qweight, qzeros, scales)."""
    N, K = w.q4.shape[0], w.q4.shape[1] * 8
    shifts = 4 * torch.arange(8, dtype=torch.int32, device=w.q4.device)
    q = ((w.q4.unsqueeze(-1) >> shifts) & 0xF).reshape(N, K)  # [N, K]
    return pack_awq(q.t()), pack_awq(w.z_gn), w.s_gn


# The bits of the float 2^23. Kernels receive it as an argument (`magic`), not as a constant: with
# two immediates, (word & mask) | magic compiles to two LOP3 instructions; with the magic number in
# a register ptxas fuses them into one, which the GEMV's instruction budget needs.
MAGIC_BITS = 0x4B000000


@triton.jit
def nibble_minus_zero(src, j: tl.constexpr, magic, z):
    """float32 q - z, exactly, for nibble j (0..3) of the int32 `src` (bits above 15 ignored);
    magic = MAGIC_BITS, z the zero points as fp32 (broadcast against src)."""
    bias = magic - ((4 * j) << 23)  # the bits of 2^(23 - 4j): its mantissa's unit is bit 4j
    return ((src & (0xF << (4 * j))) | bias).to(tl.float32, bitcast=True) - (z + float(1 << (23 - 4 * j)))


@triton.jit
def _nibble(src, j: tl.constexpr, z, s, magic, DTYPE: tl.constexpr, SCALED: tl.constexpr):
    """Nibble j (0..3) of src in DTYPE: (q - z) * s (exact in fp32, then rounded) or q - z (exact)."""
    v = nibble_minus_zero(src, j, magic, z)
    if SCALED:
        v = v * s
    return v.to(DTYPE)


@triton.jit
def dequant_tile(words, s, z, magic, DTYPE: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                 SCALED: tl.constexpr):
    """[BLOCK_N, BLOCK_K] weights in DTYPE from int32 words [BLOCK_N, BLOCK_K/8] (one `q4` tile) and
    s, z fp32 [BLOCK_N, 1] (the tile's group): (q - z) * s computed exactly in fp32, then rounded to
    DTYPE as `dequantize_awq(...).to(dtype)` does (SCALED), or the exact q - z (not SCALED; the
    caller scales the group's products). Each nibble is dequantised in the words' own layout; the
    three joins then put a word's 8 values side by side in one thread (nibble 4t + 2u + v at join
    indices [t, u, v]), so the reshape to K order moves no data."""
    high = words >> 16  # nibbles 4..7 at bits 0..15
    b0 = tl.join(_nibble(words, 0, z, s, magic, DTYPE, SCALED), _nibble(high, 0, z, s, magic, DTYPE, SCALED))
    b1 = tl.join(_nibble(words, 1, z, s, magic, DTYPE, SCALED), _nibble(high, 1, z, s, magic, DTYPE, SCALED))
    b2 = tl.join(_nibble(words, 2, z, s, magic, DTYPE, SCALED), _nibble(high, 2, z, s, magic, DTYPE, SCALED))
    b3 = tl.join(_nibble(words, 3, z, s, magic, DTYPE, SCALED), _nibble(high, 3, z, s, magic, DTYPE, SCALED))
    q = tl.join(tl.join(b0, b2), tl.join(b1, b3))  # [BLOCK_N, BLOCK_K/8, 2, 2, 2]: nibbles (0 4)(2 6), (1 5)(3 7)
    return tl.reshape(q, (BLOCK_N, BLOCK_K))


@triton.jit
def dot_rows(x_ptrs, w_ptrs, s_ptrs, z_ptrs, N, k_first, k_end, magic,
             GROUP: tl.constexpr, SCALED: tl.constexpr, SWAP: tl.constexpr, STREAM: tl.constexpr,
             BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, STAGES: tl.constexpr):
    """fp32 [BLOCK_M, BLOCK_N] = sum over the K steps [k_first, k_end) of x W^T on tensor cores.
    x_ptrs [BLOCK_M, BLOCK_K] and w_ptrs [BLOCK_N, BLOCK_K/8] point at step k_first; s_ptrs and
    z_ptrs [BLOCK_N] at the scales and zeros of group 0 of the tile's columns.
    SCALED: weights (q - z) * s rounded to x's dtype (the reference's); else the exact q - z, each
    step's products scaled by s in fp32. SWAP: W as the first operand (acc [BLOCK_N, BLOCK_M]).
    STREAM: the q4 words are read once (evict them from L2 first). Triton pipelines the q4 and x
    loads STAGES deep."""
    acc = tl.zeros((BLOCK_N, BLOCK_M) if SWAP else (BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in tl.range(k_first, k_end, BLOCK_K, num_stages=STAGES):
        if STREAM:
            words = tl.load(w_ptrs, eviction_policy="evict_first")
        else:
            words = tl.load(w_ptrs)
        xt = tl.load(x_ptrs)
        g = (k0 // GROUP) * N
        s = tl.load(s_ptrs + g).to(tl.float32)[:, None]
        z = tl.load(z_ptrs + g).to(tl.float32)[:, None]
        wt = dequant_tile(words, s, z, magic, x_ptrs.dtype.element_ty, BLOCK_N, BLOCK_K, SCALED)
        if SCALED:
            if SWAP:
                acc = tl.dot(wt, tl.trans(xt), acc)
            else:
                acc = tl.dot(xt, tl.trans(wt), acc)
        elif SWAP:
            acc = tl.fma(tl.dot(wt, tl.trans(xt)), s, acc)
        else:
            acc = tl.fma(tl.dot(xt, tl.trans(wt)), tl.trans(s), acc)
        w_ptrs += BLOCK_K // 8
        x_ptrs += BLOCK_K
    if SWAP:
        out = tl.trans(acc)
    else:
        out = acc
    return out
