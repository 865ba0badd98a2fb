"""AWQ int4 x fp16/bf16 GEMM for prefill and batched decode (M > 16 rows of x): y = x W^T (+ bias)
from the `awq_pack` layout, on tensor cores (`awq_torch.awq_linear_ref` is the reference).

Grid (tiles of BLOCK_M x BLOCK_N, grouped GROUP_M tiles along M for L2 reuse of the weights;
SPLIT). A program walks its share of K in BLOCK_K steps (BLOCK_K divides the group: one row of
scales and zeros per step). Each step loads x [BLOCK_M, BLOCK_K] and the q4 words of the
BLOCK_N x BLOCK_K weight tile with full-width loads, dequantises them in registers
(`awq_pack.dequant_tile`) and multiplies with `tl.dot` into an fp32 accumulator:
- scaled (the default for large tiles): the weights (q - z) * s rounded to x's dtype, exactly as
  the reference rounds them;
- not scaled (small M): the exact q - z on tensor cores and the step's products scaled by s in
  fp32, which saves a multiply per weight (worth it while BLOCK_M < BLOCK_K).
- swap: W as the first operand and x^T as the second (the accumulator is [BLOCK_N, BLOCK_M]), so
  that Hopper's wgmma takes the dequantised weights from registers with an M of only 16-64.
Split-K (optional, `per_sm` > 0 in the tile) reduces in the same launch through `awq_gemv`'s
workspace and arrival counters (`split_k_epilogue`: deterministic, no second launch).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from llm_infer.kernels.awq_torch import AWQWeights
from llm_infer.kernels.triton.awq_gemv import check_call, plan_split, split_k_epilogue, workspace
from llm_infer.kernels.triton.awq_pack import MAGIC_BITS, dot_rows


@dataclass(frozen=True)
class Tile:
    block_m: int
    block_n: int
    block_k: int  # clamped to the group size
    warps: int
    stages: int
    scaled: bool  # weights (q - z) * s in x's dtype (else exact q - z, products scaled per step)
    swap: bool = False  # W as the first tl.dot operand, x^T as the second
    group_m: int = 8  # tiles along M visited together (L2 reuse of weight tiles)
    per_sm: int = 0  # > 0: split K until about per_sm programs per SM


# Keyed by `shape_class`; defaults valid on any GPU with tensor cores (at most 64 KB of shared memory).
# `benchmarks/gpu_sections/awq.py` sweeps `candidates` on a lent GPU; the lead commits winners here.
TILES: dict[str, Tile] = {
    "m32": Tile(32, 64, 128, warps=4, stages=2, scaled=False, swap=True, per_sm=2),
    "m64": Tile(64, 64, 128, warps=4, stages=2, scaled=False, swap=True, per_sm=2),
    "m128": Tile(128, 128, 64, warps=8, stages=2, scaled=True),
    "m256": Tile(128, 128, 64, warps=8, stages=2, scaled=True),
}


def shape_class(M: int, N: int, K: int) -> str:
    return next((f"m{b}" for b in (32, 64, 128) if M <= b), "m256")


def candidates(M: int, N: int, K: int) -> list[Tile]:
    """Tiles worth timing for this shape on a GPU, most promising first (the TILES choice first)."""
    out = [TILES[shape_class(M, N, K)]]
    if M <= 64:  # weight-bandwidth bound: the whole of M in one or two tiles, W first, split K
        for bm in (32, 64, 16):
            if not 2 * bm >= min(M, 64) >= bm // 2:
                continue
            for bn in (64, 128):
                for stages in (2, 3, 4):
                    out.append(Tile(bm, bn, 128, 4, stages, scaled=False, swap=True, per_sm=2))
                out.append(Tile(bm, bn, 128, 4, 3, scaled=False, swap=False, per_sm=2))
                out.append(Tile(bm, bn, 128, 4, 3, scaled=True, swap=True, per_sm=2))
    else:  # compute bound: wide tiles, weights dequantised once per BLOCK_M rows
        for bm, bn, bk, warps in ((128, 128, 64, 8), (128, 256, 64, 8), (64, 128, 64, 4), (128, 128, 128, 8),
                                  (64, 256, 64, 8)):
            for stages in (2, 3, 4):
                if (bm + bn) * bk * 2 * stages <= 160 * 1024:  # the x and W tiles in shared memory
                    out.append(Tile(bm, bn, bk, warps, stages, scaled=True))
    seen: set[Tile] = set()
    return [t for t in out if not (t in seen or seen.add(t))]


@triton.jit
def _awq_gemm_kernel(x_ptr, q4_ptr, s_ptr, z_ptr, bias_ptr, y_ptr, ws_ptr, cnt_ptr,
                     M, N, K, k_words, stride_xm, stride_ym, split, steps_per_split, magic,
                     GROUP: tl.constexpr, HAS_BIAS: tl.constexpr, SCALED: tl.constexpr, SWAP: tl.constexpr,
                     SPLIT_P2: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                     GROUP_M: tl.constexpr, STAGES: tl.constexpr):
    # k_words = K / 8 (its divisibility lets Triton vectorise q4 loads); magic = MAGIC_BITS.
    pid = tl.program_id(0)
    pid_k = tl.program_id(1)
    grid_m = tl.cdiv(M, BLOCK_M)
    grid_n = tl.cdiv(N, BLOCK_N)
    in_group = GROUP_M * grid_n
    first_m = (pid // in_group) * GROUP_M
    rows_in_group = grid_m - first_m
    if rows_in_group > GROUP_M:
        rows_in_group = GROUP_M
    pid_m = first_m + (pid % in_group) % rows_in_group
    pid_n = (pid % in_group) // rows_in_group
    m0 = pid_m * BLOCK_M
    n0 = pid_n * BLOCK_N
    offs_m = (m0 + tl.arange(0, BLOCK_M)) % M  # rows past M / N reload valid ones: no load masks
    offs_n = (n0 + tl.arange(0, BLOCK_N)) % N
    k_first = pid_k * steps_per_split * BLOCK_K
    k_end = k_first + steps_per_split * BLOCK_K
    if k_end > K:  # the last split may be shorter
        k_end = K
    w_ptrs = q4_ptr + offs_n[:, None].to(tl.int64) * k_words + (k_first // 8 + tl.arange(0, BLOCK_K // 8))[None, :]
    x_ptrs = x_ptr + offs_m[:, None].to(tl.int64) * stride_xm + (k_first + tl.arange(0, BLOCK_K))[None, :]
    out = dot_rows(x_ptrs, w_ptrs, s_ptr + offs_n, z_ptr + offs_n, N, k_first, k_end, magic,
                   GROUP, SCALED, SWAP, False, BLOCK_M, BLOCK_N, BLOCK_K, STAGES)
    split_k_epilogue(out, m0, n0, M, N, y_ptr, stride_ym, bias_ptr, ws_ptr, cnt_ptr, pid, pid_k, split,
                     HAS_BIAS, SPLIT_P2, BLOCK_M, BLOCK_N)


def awq_gemm(x: torch.Tensor, w: AWQWeights, bias: torch.Tensor | None = None, out: torch.Tensor | None = None, *,
             tile: Tile | None = None, split: int | None = None) -> torch.Tensor:
    """y = x @ W^T (+ bias) for int4 W in the `awq_pack` layout, any M (meant for M > 16).

    x: [M, K] float16/bfloat16, last dimension contiguous. w: `repack_for_triton`'s AWQWeights (N
    outputs). bias: [N] in x's dtype or None. out: [M, N] in x's dtype, contiguous, written in
    place (allocated when None). Returns out. tile: overrides TILES (sweeps); split: forces the
    number of K splits (tests; at most one per BLOCK_K step).
    Raises ValueError naming the argument on a shape, dtype, device or layout mismatch.
    """
    M, K, N, out = check_call(x, w, bias, out)
    if M == 0:
        return out
    t = tile or TILES[shape_class(M, N, K)]
    block_k = min(t.block_k, w.group)
    tiles = triton.cdiv(M, t.block_m) * triton.cdiv(N, t.block_n)
    split, per = plan_split(tiles, K // block_k, t.per_sm, x.device, split)
    ws, counters = workspace(x.device, tiles * split * t.block_m * t.block_n if split > 1 else 0, tiles)
    _awq_gemm_kernel[(tiles, split)](
        x, w.q4, w.s_gn, w.z_gn, x if bias is None else bias, out, ws, counters,
        M, N, K, K // 8, x.stride(0), out.stride(0), split, per, MAGIC_BITS,
        GROUP=w.group, HAS_BIAS=bias is not None, SCALED=t.scaled, SWAP=t.swap,
        SPLIT_P2=triton.next_power_of_2(split), BLOCK_M=t.block_m, BLOCK_N=t.block_n, BLOCK_K=block_k,
        GROUP_M=t.group_m, STAGES=t.stages, num_warps=t.warps)
    return out
