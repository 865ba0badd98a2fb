"""AWQ int4 GEMV for decode (M <= 16 rows of x): y = x W^T (+ bias) from the `awq_pack` layout, in
one launch whatever the split of K (`awq_torch.awq_linear_ref` is the reference).

Grid (N / BLOCK_N, SPLIT). Program (n, s) streams the `q4` words of BLOCK_N outputs over its
contiguous share of K (whole BLOCK_K steps; BLOCK_K divides the group, so a step lies in one group
and loads one row of scales and zeros), dequantises in registers and accumulates in fp32:
- FMA mode (`Tile.dot=False`, M = 1 only): each word's 8 nibbles become the exact q - z
  (`awq_pack.nibble_minus_zero`: one LOP3 and one FADD, no int->float conversion), one FFMA each
  with x, one FFMA per word with the scale: about 4.6 instructions per weight in sm_90 SASS
  (BLOCK_N = BLOCK_K = 128), 127 registers. The accumulator keeps the words' register layout
  (nothing moves through shared memory in the loop) and is reduced over K once at the end.
- Dot mode (any M): the exact q - z in x's dtype on tensor cores with x padded to 16 rows, each
  step's products scaled by s in fp32 (`awq_pack.dot_rows`); with `swap`, W is the first operand,
  which on sm_90 is a register-sourced wgmma 64 x 16 (about 4.5 instructions per weight).
Both are more exact than the reference, which rounds every weight to x's dtype.

When N / BLOCK_N programs cannot fill the GPU, K is split so that about `per_sm` programs run per
SM (`TILES`). The split-K reduction stays in the same launch (`split_k_epilogue`): each program
writes its fp32 partial tile to a workspace, then increments the tile's arrival counter; the
program that arrives last sums the SPLIT partials in a fixed order (the same tree whichever
program is last: bitwise deterministic), adds the bias, writes y in x's dtype and resets the
counter to 0 for the next call or graph replay. No second launch and no host synchronisation.

The workspace and counters are owned here, one set per device, zero-initialised when allocated and
grown (never freed: captured graphs keep their pointers) outside CUDA-graph capture; capture
needs a call of the same shape before it (engines warm up first). Launches that share a device
must run on one stream at a time (they share the counters).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from llm_infer.kernels.awq_torch import AWQWeights
from llm_infer.kernels.triton.awq_pack import MAGIC_BITS, dot_rows, nibble_minus_zero, supports
from llm_infer.kernels.triton.checks import activation, like, need

MAX_M = 16


@dataclass(frozen=True)
class Tile:
    block_n: int  # outputs per program
    block_k: int  # inputs per step (clamped to the group size)
    warps: int
    dot: bool  # tensor cores (x padded to 16 rows); False: FMAs (M = 1 only)
    per_sm: int  # split K until about per_sm programs per SM (at most one split per step)
    stages: int = 1  # loads in flight along K: Triton's pipeliner (dot), or prefetch of the next step (FMA: > 1)
    swap: bool = False  # dot mode: W as the first operand (64+ rows), x^T as the second


# Keyed by `shape_class`; defaults valid on any GPU (at most 64 fp32 tile values per thread).
# `benchmarks/gpu_sections/awq.py` sweeps `candidates` on a lent GPU; the lead commits winners here.
TILES: dict[str, Tile] = {
    # H200 sweep, 2026-12-04 (gpu_check-h200-2026-12-04-4c36cfb.json): qkv + o of Qwen2-1.5B 8.87 us, was 9.66
    "m1_small": Tile(64, 128, 4, dot=False, per_sm=4, stages=2),
    "m1_large": Tile(128, 128, 4, dot=False, per_sm=4),
    "m2_small": Tile(64, 128, 4, dot=True, per_sm=4, stages=2, swap=True),
    "m2_large": Tile(64, 128, 4, dot=True, per_sm=4, stages=2, swap=True),
    "m4_small": Tile(64, 128, 4, dot=True, per_sm=4, stages=2, swap=True),
    "m4_large": Tile(64, 128, 4, dot=True, per_sm=4, stages=2, swap=True),
    "m8_small": Tile(64, 128, 4, dot=True, per_sm=4, stages=2, swap=True),
    "m8_large": Tile(64, 128, 4, dot=True, per_sm=4, stages=2, swap=True),
    "m16_small": Tile(64, 128, 4, dot=True, per_sm=4, stages=2, swap=True),
    "m16_large": Tile(64, 128, 4, dot=True, per_sm=4, stages=2, swap=True),
}
SMALL_WEIGHTS = 8 << 20  # K * N below this: a layer too small to fill the GPU without a deep split


def shape_class(M: int, N: int, K: int) -> str:
    bucket = next(b for b in (1, 2, 4, 8, 16) if M <= b)
    return f"m{bucket}_{'small' if N * K < SMALL_WEIGHTS else 'large'}"


def candidates(M: int, N: int, K: int) -> list[Tile]:
    """Tiles worth timing for this shape on a GPU, most promising first (the TILES choice first):
    the FMA mode at M = 1 (with and without prefetch; narrow tiles that need no split), tensor
    cores (W first or x first, pipelined 1-3 deep) at every M."""
    out = [TILES[shape_class(M, N, K)]]
    if M == 1:
        for bn, bk, warps in ((128, 128, 4), (64, 128, 4), (256, 64, 8), (32, 256, 4), (16, 256, 4)):
            for per_sm in (4, 2):
                for stages in (1, 2):
                    out.append(Tile(bn, bk, warps, dot=False, per_sm=per_sm, stages=stages))
    for bn, bk in ((64, 128), (128, 128), (64, 64)):
        for per_sm in (4, 2):
            for stages, swap in ((2, True), (1, True), (3, True), (2, False)):
                if M > 1 or bn == 64 and per_sm == 4:
                    out.append(Tile(bn, bk, 4, dot=True, per_sm=per_sm, stages=stages, swap=swap))
    seen: set[Tile] = set()
    return [t for t in out if not (t in seen or seen.add(t))]


_SM_COUNT: dict[int, int] = {}
INTERPRETER_SMS = 4  # CPU tensors (Triton's interpreter): a small GPU, so tests split K


def sm_count(device: torch.device) -> int:
    if device.type != "cuda":
        return INTERPRETER_SMS
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _SM_COUNT:
        _SM_COUNT[index] = torch.cuda.get_device_properties(index).multi_processor_count
    return _SM_COUNT[index]


def choose_split(tiles: int, steps: int, target_programs: int) -> tuple[int, int]:
    """(splits, steps per split): about `target_programs` programs over `tiles` output tiles, every
    split non-empty."""
    split = max(1, min(steps, target_programs // max(1, tiles)))
    per = triton.cdiv(steps, split)
    return triton.cdiv(steps, per), per


# ---- the split-K workspace and the in-launch reduction (also used by awq_gemm) ----------------------

_WORKSPACES: dict[tuple[str, int | None], tuple[torch.Tensor, torch.Tensor]] = {}
_RETIRED: list[tuple[torch.Tensor, torch.Tensor]] = []  # outgrown, kept alive for graphs that point at them


def workspace(device: torch.device, floats: int, tiles: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(fp32 partials of at least `floats`, int32 zeroed counters of at least `tiles`) on `device`."""
    key = (device.type, device.index)
    ws, counters = _WORKSPACES.get(key, (None, None))
    if ws is not None and ws.numel() >= floats and counters.numel() >= tiles:
        return ws, counters
    if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
        raise RuntimeError("AWQ split-K workspace: this shape needs a larger workspace, which cannot be allocated "
                           "during CUDA-graph capture; run the same call once before capturing")
    if ws is not None:
        _RETIRED.append((ws, counters))
        floats, tiles = max(floats, ws.numel()), max(tiles, counters.numel())
    ws = torch.empty(floats, dtype=torch.float32, device=device)
    counters = torch.zeros(tiles, dtype=torch.int32, device=device)
    _WORKSPACES[key] = (ws, counters)
    return ws, counters


@triton.jit
def _store_output(total, rows, cols, M, N, y_ptr, stride_ym, bias_ptr, HAS_BIAS: tl.constexpr):
    """y[rows, cols] = total (+ bias[cols]) in y's dtype; rows/cols broadcast to total's shape."""
    ok = (rows < M) & (cols < N)
    if HAS_BIAS:
        total += tl.load(bias_ptr + cols, mask=cols < N, other=0.0).to(tl.float32)
    tl.store(y_ptr + rows.to(tl.int64) * stride_ym + cols, total.to(y_ptr.dtype.element_ty), mask=ok)


@triton.jit
def split_k_epilogue(acc, m0, n0, M, N, y_ptr, stride_ym, bias_ptr, ws_ptr, cnt_ptr, tile_id, pid_k, split,
                     HAS_BIAS: tl.constexpr, SPLIT_P2: tl.constexpr, BLOCK_M: tl.constexpr,
                     BLOCK_N: tl.constexpr):
    """Write acc (fp32 [BLOCK_M, BLOCK_N], rows m0.., columns n0..) to y, or, when K is split
    (SPLIT_P2 > 1: the next power of two of `split`), reduce the `split` partial tiles in this
    launch: the last program to arrive at the tile's counter sums them and resets the counter."""
    rows = m0 + tl.arange(0, BLOCK_M)
    cols = n0 + tl.arange(0, BLOCK_N)
    if SPLIT_P2 == 1:
        _store_output(acc, rows[:, None], cols[None, :], M, N, y_ptr, stride_ym, bias_ptr, HAS_BIAS)
    else:
        TILE: tl.constexpr = BLOCK_M * BLOCK_N
        tile_ws = ws_ptr + tile_id.to(tl.int64) * (split * TILE)
        local = tl.arange(0, BLOCK_M)[:, None] * BLOCK_N + tl.arange(0, BLOCK_N)[None, :]
        tl.store(tile_ws + pid_k * TILE + local, acc, mask=rows[:, None] < M)
        tl.debug_barrier()  # every thread's partial is written before the release below
        arrived = tl.atomic_add(cnt_ptr + tile_id, 1, sem="acq_rel", scope="gpu")
        if arrived == split - 1:  # the last of the tile's programs: all partials are visible
            # all partials of up to 8192 outputs loaded at once; only the tile's rows below M
            CHUNK: tl.constexpr = min(TILE, max(BLOCK_N, 8192 // SPLIT_P2))
            parts = tl.arange(0, SPLIT_P2)[:, None] * TILE
            valid_rows = M - m0
            if valid_rows > BLOCK_M:
                valid_rows = BLOCK_M
            for c in tl.range(0, valid_rows * BLOCK_N, CHUNK):
                f = c + tl.arange(0, CHUNK)
                r = m0 + f // BLOCK_N
                ok = (tl.arange(0, SPLIT_P2)[:, None] < split) & (r[None, :] < M)
                p = tl.load(tile_ws + parts + f[None, :], mask=ok, other=0.0, cache_modifier=".cg")
                _store_output(tl.sum(p, axis=0), r, n0 + f % BLOCK_N, M, N, y_ptr, stride_ym, bias_ptr, HAS_BIAS)
            tl.atomic_xchg(cnt_ptr + tile_id, 0, sem="relaxed", scope="gpu")


# ---- the GEMV ------------------------------------------------------------------------------------

@triton.jit
def _fma_loads(w_ptrs, x_ptrs, valid):
    """One step's q4 words [BLOCK_N, KW] and, as fp32, the x of nibble i of every word (8 vectors
    [KW]); masked off (no memory traffic) unless `valid`."""
    words = tl.load(w_ptrs, mask=valid, other=0, eviction_policy="evict_first")
    x0 = tl.load(x_ptrs + 0, mask=valid, other=0.0).to(tl.float32)
    x1 = tl.load(x_ptrs + 1, mask=valid, other=0.0).to(tl.float32)
    x2 = tl.load(x_ptrs + 2, mask=valid, other=0.0).to(tl.float32)
    x3 = tl.load(x_ptrs + 3, mask=valid, other=0.0).to(tl.float32)
    x4 = tl.load(x_ptrs + 4, mask=valid, other=0.0).to(tl.float32)
    x5 = tl.load(x_ptrs + 5, mask=valid, other=0.0).to(tl.float32)
    x6 = tl.load(x_ptrs + 6, mask=valid, other=0.0).to(tl.float32)
    x7 = tl.load(x_ptrs + 7, mask=valid, other=0.0).to(tl.float32)
    return words, x0, x1, x2, x3, x4, x5, x6, x7


@triton.jit
def _fma_step(acc, words, x0, x1, x2, x3, x4, x5, x6, x7, s_ptrs, z_ptrs, magic):
    """acc [BLOCK_N, KW] += s * sum_i (q_i - z) x_i over the 8 nibbles of each word: per weight one
    LOP3 + FADD + FFMA, per word one FFMA for the scale. The group's scales and zeros are loaded
    here, where they are used, which keeps them in the words' layout."""
    s = tl.load(s_ptrs).to(tl.float32)[:, None]
    z = tl.load(z_ptrs).to(tl.float32)[:, None]
    high = words >> 16  # nibbles 4..7 at bits 0..15
    t = nibble_minus_zero(words, 0, magic, z) * x0[None, :]
    t = tl.fma(nibble_minus_zero(high, 0, magic, z), x4[None, :], t)
    t = tl.fma(nibble_minus_zero(words, 1, magic, z), x1[None, :], t)
    t = tl.fma(nibble_minus_zero(high, 1, magic, z), x5[None, :], t)
    t = tl.fma(nibble_minus_zero(words, 2, magic, z), x2[None, :], t)
    t = tl.fma(nibble_minus_zero(high, 2, magic, z), x6[None, :], t)
    t = tl.fma(nibble_minus_zero(words, 3, magic, z), x3[None, :], t)
    t = tl.fma(nibble_minus_zero(high, 3, magic, z), x7[None, :], t)
    return tl.fma(t, s, acc)


@triton.jit
def _fma_row(x_ptr, w_ptrs, s_ptr, z_ptr, offs_n, N, k_first, k_end, magic,
             GROUP: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, PREFETCH: tl.constexpr):
    """M == 1: fp32 [BLOCK_N] sums over K steps [k_first, k_end) of (q - z) s x, accumulated in the
    words' own layout and reduced over K once at the end. PREFETCH: the next step's words and x
    are loaded before this step's arithmetic (Triton pipelines only loads that feed a tl.dot);
    it costs registers (fewer programs per SM), so it is a tile choice."""
    KW: tl.constexpr = BLOCK_K // 8
    x_ptrs = x_ptr + k_first + 8 * tl.arange(0, KW)  # nibble 0 of each word
    acc = tl.zeros((BLOCK_N, KW), dtype=tl.float32)
    if PREFETCH:
        words, x0, x1, x2, x3, x4, x5, x6, x7 = _fma_loads(w_ptrs, x_ptrs, k_first < k_end)
        for k0 in range(k_first, k_end, BLOCK_K):
            w_ptrs += KW
            x_ptrs += BLOCK_K
            nw, n0, n1, n2, n3, n4, n5, n6, n7 = _fma_loads(w_ptrs, x_ptrs, k0 + BLOCK_K < k_end)
            acc = _fma_step(acc, words, x0, x1, x2, x3, x4, x5, x6, x7, s_ptr + (k0 // GROUP) * N + offs_n,
                            z_ptr + (k0 // GROUP) * N + offs_n, magic)
            words, x0, x1, x2, x3, x4, x5, x6, x7 = nw, n0, n1, n2, n3, n4, n5, n6, n7
    else:
        for k0 in range(k_first, k_end, BLOCK_K):
            words, x0, x1, x2, x3, x4, x5, x6, x7 = _fma_loads(w_ptrs, x_ptrs, True)
            acc = _fma_step(acc, words, x0, x1, x2, x3, x4, x5, x6, x7, s_ptr + (k0 // GROUP) * N + offs_n,
                            z_ptr + (k0 // GROUP) * N + offs_n, magic)
            w_ptrs += KW
            x_ptrs += BLOCK_K
    return tl.sum(acc, axis=1)


@triton.jit
def _awq_gemv_kernel(x_ptr, q4_ptr, s_ptr, z_ptr, bias_ptr, y_ptr, ws_ptr, cnt_ptr,
                     M, N, K, k_words, stride_xm, stride_ym, split, steps_per_split, magic,
                     GROUP: tl.constexpr, HAS_BIAS: tl.constexpr, DOT: tl.constexpr, SWAP: tl.constexpr,
                     SPLIT_P2: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                     STAGES: tl.constexpr):
    # k_words = K / 8, passed apart so that Triton sees its divisibility (vector loads of q4 rows);
    # magic = MAGIC_BITS (see awq_pack).
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    n0 = pid_n * BLOCK_N
    offs_n = (n0 + tl.arange(0, BLOCK_N)) % N  # rows past N (and of x past M) reload valid ones: no masks
    k_first = pid_k * steps_per_split * BLOCK_K
    k_end = k_first + steps_per_split * BLOCK_K
    if k_end > K:  # the last split may be shorter
        k_end = K
    w_ptrs = q4_ptr + offs_n[:, None].to(tl.int64) * k_words + (k_first // 8 + tl.arange(0, BLOCK_K // 8))[None, :]
    if DOT:
        x_ptrs = x_ptr + (tl.arange(0, BLOCK_M) % M)[:, None] * stride_xm + (k_first + tl.arange(0, BLOCK_K))[None, :]
        out = dot_rows(x_ptrs, w_ptrs, s_ptr + offs_n, z_ptr + offs_n, N, k_first, k_end, magic,
                       GROUP, False, SWAP, True, BLOCK_M, BLOCK_N, BLOCK_K, STAGES)
    else:
        tl.static_assert(BLOCK_M == 1, "FMA mode takes one row of x")
        out = _fma_row(x_ptr, w_ptrs, s_ptr, z_ptr, offs_n, N, k_first, k_end, magic, GROUP, BLOCK_N,
                       BLOCK_K, STAGES > 1)[None, :]
    split_k_epilogue(out, 0, n0, M, N, y_ptr, stride_ym, bias_ptr, ws_ptr, cnt_ptr, pid_n, pid_k, split,
                     HAS_BIAS, SPLIT_P2, BLOCK_M, BLOCK_N)


def check_call(x: torch.Tensor, w: AWQWeights, bias: torch.Tensor | None, out: torch.Tensor | None,
               max_m: int | None = None) -> tuple[int, int, int, torch.Tensor]:
    """(M, K, N, out) of a launcher's arguments, out allocated when None (ValueError naming the argument)."""
    activation(x, "x", 2)
    M, K = x.shape
    need(max_m is None or M <= max_m, "x", f"at most {max_m} rows (awq_gemm takes more), got {M}")
    need(isinstance(w, AWQWeights) and w.q4 is not None, "w", "expected AWQWeights from repack_for_triton")
    N = w.q4.shape[0]
    need(w.q4.dim() == 2 and w.q4.shape[1] * 8 == K, "w.q4", f"expected [N, {K // 8}] for x's K = {K}, got "
         f"{tuple(w.q4.shape)}")
    need(supports(K, N, w.group), "w.group", f"shape K={K}, N={N}, group={w.group} is not supported")
    like(w.q4, "w.q4", (N, K // 8), torch.int32, x.device)
    need(w.s_gn is not None and w.s_gn.dtype in (torch.float16, torch.bfloat16, torch.float32), "w.s_gn",
         "expected float scales")
    like(w.s_gn, "w.s_gn", (K // w.group, N), w.s_gn.dtype, x.device)
    need(w.z_gn is not None, "w.z_gn", "missing")
    like(w.z_gn, "w.z_gn", (K // w.group, N), torch.uint8, x.device)
    like(bias, "bias", (N,), x.dtype, x.device)
    like(out, "out", (M, N), x.dtype, x.device)
    return M, K, N, torch.empty(M, N, dtype=x.dtype, device=x.device) if out is None else out


def plan_split(tiles: int, steps: int, per_sm: int, device: torch.device, forced: int | None) -> tuple[int, int]:
    """(splits, steps per split) of a launch: `forced` (tests, sweeps) evened out, else about
    per_sm programs per SM (no split when per_sm is 0)."""
    if forced is not None:
        need(1 <= forced <= steps, "split", f"must be in 1..{steps}, got {forced}")
        per = triton.cdiv(steps, forced)
        return triton.cdiv(steps, per), per
    if per_sm:
        return choose_split(tiles, steps, per_sm * sm_count(device))
    return 1, steps


def awq_gemv(x: torch.Tensor, w: AWQWeights, bias: torch.Tensor | None = None, out: torch.Tensor | None = None, *,
             tile: Tile | None = None, split: int | None = None) -> torch.Tensor:
    """y = x @ W^T (+ bias) for int4 W in the `awq_pack` layout.

    x: [M, K] float16/bfloat16, M <= 16, last dimension contiguous. w: `repack_for_triton`'s
    AWQWeights (N outputs). bias: [N] in x's dtype or None. out: [M, N] in x's dtype, contiguous,
    written in place (allocated when None). Returns out. tile: overrides TILES (sweeps); split:
    forces the number of K splits (tests; at most one per BLOCK_K step).
    Raises ValueError naming the argument on a shape, dtype, device or layout mismatch.
    """
    M, K, N, out = check_call(x, w, bias, out, MAX_M)
    if M == 0:
        return out
    t = tile or TILES[shape_class(M, N, K)]
    need(t.dot or M == 1, "tile", f"FMA mode (dot=False) takes M = 1, got {M}")
    block_k = min(t.block_k, w.group)
    block_m = 16 if t.dot else 1
    tiles = triton.cdiv(N, t.block_n)
    split, per = plan_split(tiles, K // block_k, t.per_sm, x.device, split)
    ws, counters = workspace(x.device, tiles * split * block_m * t.block_n if split > 1 else 0, tiles)
    _awq_gemv_kernel[(tiles, split)](
        x, w.q4, w.s_gn, w.z_gn, x if bias is None else bias, out, ws, counters,
        M, N, K, K // 8, x.stride(0), out.stride(0), split, per, MAGIC_BITS,
        GROUP=w.group, HAS_BIAS=bias is not None, DOT=t.dot, SWAP=t.swap, SPLIT_P2=triton.next_power_of_2(split),
        BLOCK_M=block_m, BLOCK_N=t.block_n, BLOCK_K=block_k, STAGES=t.stages, num_warps=t.warps)
    return out
