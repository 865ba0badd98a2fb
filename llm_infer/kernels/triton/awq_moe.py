"""AWQ int4 mixture-of-experts matmul: y[r] = x[r] @ W[ids[r]]^T (+ bias[ids[r]]) for every row r,
with the rows grouped by expert so that each expert's int4 weight is read once per BLOCK_M of its
rows, by the GEMM's tensor-core K loop (`awq_pack.dot_rows`). The reference is, row by row,
`awq_torch.awq_linear_ref` with the row's expert.

Rows are the caller's (token, slot) pairs: a top-k router gives T tokens T * k rows and their
expert ids; the caller weights and sums the k rows of a token (as `moe_torch.fused_moe` does).

Grouping (`group_rows`, a few small torch ops on the device: no host synchronisation, so a CUDA
graph can capture it): the rows sorted by expert (stable), each expert's row count and first
sorted position, and the cumulative number of BLOCK_M-row blocks per expert. The grid is the
static bound cdiv(T, BLOCK_M) + min(E, T) blocks x N tiles; block b finds its expert by counting
the experts whose blocks all end at or before b, gathers its rows of x, and writes its rows of y.
Blocks past the last expert's exit at once.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from llm_infer.kernels.awq_torch import AWQWeights
from llm_infer.kernels.triton.awq_gemm import Tile
from llm_infer.kernels.triton.awq_pack import MAGIC_BITS, dot_rows, supports
from llm_infer.kernels.triton.checks import activation, index, like, need

# Keyed by `shape_class`: "decode" (at most 16 rows per expert on average), "prefill".
TILES: dict[str, Tile] = {
    "decode": Tile(16, 64, 128, warps=4, stages=2, scaled=False, swap=True),
    "prefill": Tile(64, 128, 64, warps=4, stages=2, scaled=True),
}


def shape_class(rows: int, experts: int) -> str:
    return "decode" if rows <= 16 * experts else "prefill"


def stack_experts(experts: list[AWQWeights]) -> AWQWeights:
    """E experts from `repack_for_triton` (same shape and group) -> one AWQWeights with q4
    [E, N, K/8], s_gn [E, K/g, N], z_gn [E, K/g, N]."""
    need(len(experts) > 0 and all(e.q4 is not None for e in experts), "experts",
         "expected repack_for_triton's AWQWeights (a supported shape), at least one")
    first = experts[0]
    need(all(e.group == first.group and e.q4.shape == first.q4.shape for e in experts), "experts",
         "every expert must have the same shape and group size")
    return AWQWeights(first.group, q4=torch.stack([e.q4 for e in experts]),
                      s_gn=torch.stack([e.s_gn for e in experts]), z_gn=torch.stack([e.z_gn for e in experts]))


def group_rows(expert_ids: torch.Tensor, experts: int, block_m: int) -> tuple[torch.Tensor, ...]:
    """(order, counts, starts, block_end), int32 on the ids' device: the row indices sorted by
    expert (stable), rows per expert, each expert's first position in `order`, and the running
    total of BLOCK_M-row blocks up to and including each expert. Ids must lie in [0, experts)."""
    ids = expert_ids.to(torch.int64)
    order = torch.argsort(ids, stable=True).to(torch.int32)
    counts = torch.zeros(experts, dtype=torch.int32, device=ids.device)
    counts.scatter_add_(0, ids, torch.ones_like(ids, dtype=torch.int32))
    starts = torch.cumsum(counts, 0, dtype=torch.int32) - counts
    block_end = torch.cumsum(torch.div(counts + block_m - 1, block_m, rounding_mode="floor"), 0, dtype=torch.int32)
    return order, counts, starts, block_end


@triton.jit
def _awq_moe_kernel(x_ptr, order_ptr, counts_ptr, starts_ptr, block_end_ptr, q4_ptr, s_ptr, z_ptr, bias_ptr, y_ptr,
                    N, K, k_words, E, stride_xm, stride_ym, magic,
                    GROUP: tl.constexpr, HAS_BIAS: tl.constexpr, SCALED: tl.constexpr, SWAP: tl.constexpr,
                    E_P2: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                    STAGES: tl.constexpr):
    pid_b = tl.program_id(0)
    pid_n = tl.program_id(1)
    ends = tl.load(block_end_ptr + tl.arange(0, E_P2), mask=tl.arange(0, E_P2) < E, other=2**30)
    e = tl.sum((ends <= pid_b).to(tl.int32))  # the experts whose blocks all come before this one
    if e < E:
        count = tl.load(counts_ptr + e)
        first_block = tl.load(block_end_ptr + e) - (count + BLOCK_M - 1) // BLOCK_M
        local = (pid_b - first_block) * BLOCK_M + tl.arange(0, BLOCK_M)  # positions among the expert's rows
        rows = tl.load(order_ptr + tl.load(starts_ptr + e) + tl.minimum(local, count - 1))  # past the end: a valid row
        n0 = pid_n * BLOCK_N
        offs_n = (n0 + tl.arange(0, BLOCK_N)) % N
        groups = K // GROUP
        x_ptrs = x_ptr + rows[:, None].to(tl.int64) * stride_xm + tl.arange(0, BLOCK_K)[None, :]
        w_ptrs = (q4_ptr + e.to(tl.int64) * N * k_words + offs_n[:, None].to(tl.int64) * k_words
                  + tl.arange(0, BLOCK_K // 8)[None, :])
        s_ptrs = s_ptr + e.to(tl.int64) * groups * N + offs_n
        z_ptrs = z_ptr + e.to(tl.int64) * groups * N + offs_n
        acc = dot_rows(x_ptrs, w_ptrs, s_ptrs, z_ptrs, N, 0, K, magic,
                       GROUP, SCALED, SWAP, False, BLOCK_M, BLOCK_N, BLOCK_K, STAGES)
        cols = n0 + tl.arange(0, BLOCK_N)
        if HAS_BIAS:
            acc += tl.load(bias_ptr + e * N + cols, mask=cols < N, other=0.0).to(tl.float32)[None, :]
        ok = (local < count)[:, None] & (cols < N)[None, :]
        tl.store(y_ptr + rows[:, None].to(tl.int64) * stride_ym + cols[None, :], acc.to(y_ptr.dtype.element_ty),
                 mask=ok)


def awq_moe(x: torch.Tensor, w: AWQWeights, expert_ids: torch.Tensor, bias: torch.Tensor | None = None,
            out: torch.Tensor | None = None, *, tile: Tile | None = None) -> torch.Tensor:
    """y[r] = x[r] @ W_e^T (+ bias[e]) with e = expert_ids[r], for every row r.

    x: [R, K] float16/bfloat16, last dimension contiguous. w: `stack_experts`' AWQWeights (E
    experts of N outputs). expert_ids: int32/int64 [R] on x's device, each in [0, E) (not checked:
    that would read the device). bias: [E, N] in x's dtype or None. out: [R, N] in x's dtype,
    contiguous, written in place (allocated when None). Returns out. tile: overrides TILES.
    Raises ValueError naming the argument on a shape, dtype, device or layout mismatch.
    """
    activation(x, "x", 2)
    R, K = x.shape
    need(isinstance(w, AWQWeights) and w.q4 is not None and w.q4.dim() == 3, "w",
         "expected stack_experts' AWQWeights (q4 [E, N, K/8])")
    E, N = w.q4.shape[0], w.q4.shape[1]
    need(w.q4.shape[2] * 8 == K, "w.q4", f"expected [E, N, {K // 8}] for x's K = {K}, got {tuple(w.q4.shape)}")
    need(supports(K, N, w.group), "w.group", f"shape K={K}, N={N}, group={w.group} is not supported")
    like(w.q4, "w.q4", (E, N, K // 8), torch.int32, x.device)
    need(w.s_gn is not None and w.z_gn is not None, "w", "missing scales or zeros")
    like(w.s_gn, "w.s_gn", (E, K // w.group, N), w.s_gn.dtype, x.device)
    like(w.z_gn, "w.z_gn", (E, K // w.group, N), torch.uint8, x.device)
    index(expert_ids, "expert_ids", 1, x.device, (torch.int32, torch.int64))
    need(expert_ids.shape[0] == R, "expert_ids", f"expected {R} ids (one per row of x), got {expert_ids.shape[0]}")
    like(bias, "bias", (E, N), x.dtype, x.device)
    like(out, "out", (R, N), x.dtype, x.device)
    out = torch.empty(R, N, dtype=x.dtype, device=x.device) if out is None else out
    if R == 0:
        return out
    t = tile or TILES[shape_class(R, E)]
    block_k = min(t.block_k, w.group)
    order, counts, starts, block_end = group_rows(expert_ids, E, t.block_m)
    blocks = triton.cdiv(R, t.block_m) + min(E, R)
    _awq_moe_kernel[(blocks, triton.cdiv(N, t.block_n))](
        x, order, counts, starts, block_end, w.q4, w.s_gn, w.z_gn, x if bias is None else bias, out,
        N, K, K // 8, E, x.stride(0), out.stride(0), MAGIC_BITS,
        GROUP=w.group, HAS_BIAS=bias is not None, SCALED=t.scaled, SWAP=t.swap, E_P2=triton.next_power_of_2(E),
        BLOCK_M=t.block_m, BLOCK_N=t.block_n, BLOCK_K=block_k, STAGES=t.stages, num_warps=t.warps)
    return out
