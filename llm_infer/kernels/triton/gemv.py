"""Dense GEMV for decode: y = x @ weight.T (+ bias) for M = 1..16 rows, bandwidth-bound, one launch.

At M <= 16 a linear layer reads its weight once and does almost no arithmetic per byte, so
its time is the weight's bytes over the memory bandwidth, plus launch and ramp-up. This kernel
streams `weight` [N, K] with wide coalesced loads (each program reads BLOCK_N whole rows in
BLOCK_K-wide slabs) and accumulates in fp32:
- `Tile.dot=False` (M == 1 only): fp32 FMAs into a [BLOCK_N, BLOCK_K] accumulator in the weight
  load's own register layout (x is read as a broadcast of its row, from L1, so nothing moves
  through shared memory in the loop), reduced over K once after the loop;
- `Tile.dot=True` (any M): a tensor-core `tl.dot` of the x tile, padded to 16 rows, against the
  weight slab, which Triton stages through shared memory with `num_stages` async copies. An
  FMA path for 2 <= M <= 4 was tried and dropped: Triton moved the weight slab through shared
  memory and reduced across lanes every slab (sm_90 PTX, compiled without a GPU).

Split-K in the same launch. When N / BLOCK_N programs cannot fill the GPU (N = 1536 on 132
SMs) the grid is (N tiles, SPLIT_K): split s reduces K slabs [s*T, (s+1)*T) and writes its
fp32 partial [M, BLOCK_N] to a workspace, then increments the tile's counter (acq_rel, after
a CTA barrier so that every thread's partial is stored first). The program that sees
SPLIT_K - 1 (the last to arrive) sums the partials in split order 0..SPLIT_K-1, adds the bias,
writes y and resets the counter to 0 for the next call or CUDA-graph replay. The sum order
never depends on arrival order, so the result is bitwise deterministic for a given Tile
(different Tiles may differ in the last bits). No host syncs and no host reads of device values.

Fused SwiGLU (`gate_up=True`): x is a merged gate_up projection's output [M, 2K] = [gate | up];
the GEMV's input row is silu(gate) * up, computed in fp32 as x is loaded and rounded once to
x's dtype before the dot product (the unfused path, torch_ref.silu_and_mul then linear, rounds
silu(gate) and the product separately: the two agree within one rounding of the dtype).

Workspace and counters are owned by this module: allocated once per (device, size) on the first
call that needs them and cached (the counters zeroed; each call leaves them at zero).
- CUDA graphs: allocating during stream capture would tie the buffer to the graph's pool, so
  a call that would allocate while the current stream is capturing raises RuntimeError. Warm
  up every (M, N, K, Tile) that a graph will capture with one eager call first (the usual
  warm-up before capture does exactly this).
- The buffers are shared by all calls with the same size on a device: calls must be ordered
  on one stream (as a decode step's are). Two GEMVs of the same size running concurrently
  on two streams would race on the counters.

Tiles come from `TILES`, keyed by `shape_class(M, N, K)` = (M, N, K each rounded up to a power
of two); classes not in the table get `default_tile(M, N, K)`, valid on every GPU.
`candidates(M, N, K)` lists what `benchmarks/gpu_sections/gemv.py` sweeps on a GPU.

Where it is expected to lose to cuBLAS (dispatch should route these there): M > 16 (refused with
ValueError: a GEMM's job); M = 8..16, where cuBLAS switches to Hopper GEMM kernels (TMA, wgmma)
and ours pads x to a 16-row mma v2 tile; and possibly the wide shapes (gate_up, lm_head), where
cuBLAS already streams at about 75% of the copy bandwidth and there is little to win. The GPU
benchmark reports ours against cuBLAS per shape and M: route by its rows.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import triton
import triton.language as tl

MAX_M = 16
_DTYPES = (torch.float16, torch.bfloat16)


@dataclass(frozen=True)
class Tile:
    """Launch configuration. block_n, block_k: powers of two (>= 16 each with dot=True);
    split_k: programs per output tile along K (1 = no workspace; evened out by `grid`);
    dot: the tensor-core path (required for M >= 2); num_stages matters to it only."""

    block_n: int
    block_k: int
    split_k: int = 1
    num_warps: int = 4
    num_stages: int = 2
    dot: bool = False


# (M bucket, N bucket, K bucket) -> Tile; buckets are powers of two (see shape_class).
# Filled from the winners of benchmarks/gpu_sections/gemv.py on a GPU; empty classes use
# default_tile(). One-row winners of the H200 sweep of 2026-12-04 (gpu_check-h200-2026-12-04.json,
# graph-timed, summed over the class's shapes; the defaults' time beside each):
TILES: dict[tuple[int, int, int], Tile] = {
    (1, 2048, 2048): Tile(4, 512, 1, 4, 1),  # qwen2-1.5b qkv + o: 8.07 us (defaults 10.59 us)
    (1, 32768, 2048): Tile(8, 256, 1, 4, 1),  # qwen2-1.5b gate_up: 15.65 us (16.42 us)
    (1, 2048, 16384): Tile(8, 256, 4, 4, 1),  # qwen2-1.5b down: 10.51 us (12.98 us)
    (1, 262144, 2048): Tile(8, 256, 1, 4, 1),  # qwen2-1.5b lm_head: 107.94 us (112.48 us)
    (1, 8192, 4096): Tile(4, 512, 1, 4, 1),  # qwen2.5-7b qkv: 10.24 us (11.86 us)
    (1, 4096, 4096): Tile(4, 512, 1, 4, 1),  # qwen2.5-7b o: 8.6 us (11.26 us)
    (1, 65536, 4096): Tile(8, 256, 1, 4, 1),  # qwen2.5-7b gate_up: 64.38 us (66.85 us)
    (1, 4096, 32768): Tile(4, 512, 1, 4, 1),  # qwen2.5-7b down: 35.25 us (41.21 us)
}

_TARGET_PROGRAMS = 512  # enough programs to give each SM of a 132-SM GPU about four


def _pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def shape_class(M: int, N: int, K: int) -> tuple[int, int, int]:
    """The TILES key of a [M, K] x [N, K]^T product: each size rounded up to a power of two."""
    return _pow2(M), _pow2(N), _pow2(K)


def _block_m(M: int, dot: bool) -> int:
    return max(16, _pow2(M)) if dot else 1


def _split_for(N: int, K: int, block_n: int, block_k: int) -> int:
    """Splits (a power of two, at most 16 and at most the number of K slabs) so that N tiles x
    splits reaches _TARGET_PROGRAMS. The launcher evens them out (see grid)."""
    n_tiles = triton.cdiv(N, block_n)
    k_tiles = triton.cdiv(K, block_k)
    split = 1
    while n_tiles * split < _TARGET_PROGRAMS and split * 2 <= min(16, k_tiles):
        split *= 2
    return split


def grid(N: int, K: int, tile: Tile) -> tuple[int, int, int]:
    """(N tiles, splits, K slabs per split) of a launch. The splits actually launched are evened
    out so that none is empty: a tile asking for more splits than K slabs gets one slab each."""
    k_slabs = triton.cdiv(K, tile.block_k)
    per_split = triton.cdiv(k_slabs, max(1, tile.split_k))
    return triton.cdiv(N, tile.block_n), triton.cdiv(k_slabs, per_split), per_split


def default_tile(M: int, N: int, K: int) -> Tile:
    """The tile used when TILES has no entry for the shape class: valid on every GPU."""
    if M == 1:
        block_n, block_k = 16, 256
        return Tile(block_n, block_k, _split_for(N, K, block_n, block_k), num_warps=4, num_stages=1)
    block_n, block_k = 32, 128
    return Tile(block_n, block_k, _split_for(N, K, block_n, block_k), num_warps=4, num_stages=3, dot=True)


def tile_for(M: int, N: int, K: int) -> Tile:
    """The committed tile of the shape class, else the default."""
    return TILES.get(shape_class(M, N, K)) or default_tile(M, N, K)


# Swept (block_n, block_k, num_warps, num_stages): the FMA path at M = 1, the tensor-core path at
# every M (at M = 1 its first two only).
_FMA_SWEEP = ((4, 512, 4, 1), (8, 256, 4, 1), (8, 512, 4, 1), (16, 256, 4, 1), (16, 512, 8, 1),
              (32, 256, 8, 1), (32, 128, 4, 1), (64, 128, 8, 1))
_DOT_SWEEP = ((16, 128, 4, 3), (16, 256, 4, 3), (32, 128, 4, 3), (32, 256, 4, 3), (64, 64, 4, 4),
              (64, 128, 4, 3), (32, 128, 8, 4), (16, 128, 4, 5))


def candidates(M: int, N: int, K: int) -> list[Tile]:
    """Tiles worth sweeping on a GPU for this shape, the default first, each without split-K, at
    the default split and at twice it (as launched: see grid). Compiles are shared across shapes:
    every Tile field but split_k is a compile-time constant."""
    found = [default_tile(M, N, K)]
    sweeps = [(s, False) for s in _FMA_SWEEP] + [(s, True) for s in _DOT_SWEEP[:2]] if M == 1 else \
        [(s, True) for s in _DOT_SWEEP]
    for (block_n, block_k, num_warps, num_stages), dot in sweeps:
        base = _split_for(N, K, block_n, block_k)
        for split in (1, base, 2 * base):
            tile = Tile(block_n, block_k, min(split, 16), num_warps, num_stages, dot)
            tile = replace(tile, split_k=grid(N, K, tile)[1])  # the splits actually launched
            if tile not in found:
                found.append(tile)
    return found


_BUFFERS: dict[tuple, torch.Tensor] = {}


def _buffer(kind: str, device: torch.device, numel: int, dtype: torch.dtype) -> torch.Tensor:
    """A cached zeroed buffer per (kind, device, numel); see the module docstring for graphs."""
    key = (kind, device.type, device.index, numel)
    buf = _BUFFERS.get(key)
    if buf is None:
        if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
            raise RuntimeError(
                f"gemv: the split-K {kind} of {numel} elements would be allocated during CUDA-graph "
                "capture; call gemv once with this shape before capturing")
        buf = torch.zeros(numel, dtype=dtype, device=device)
        _BUFFERS[key] = buf
    return buf


@triton.jit
def _load_x(ptrs, mask, K, GATE_UP: tl.constexpr):
    """x at `ptrs` (any shape) in x's dtype; with GATE_UP, silu(x) * x[+K] computed in fp32 and
    rounded once to the dtype."""
    gate = tl.load(ptrs, mask=mask, other=0.0)
    if GATE_UP:
        g = gate.to(tl.float32)
        u = tl.load(ptrs + K, mask=mask, other=0.0).to(tl.float32)
        return (g / (1.0 + tl.exp(-g)) * u).to(gate.dtype)
    return gate


@triton.jit
def _row_slab(x_ptr, w_rows, offs_n, offs_k, K, valid, GATE_UP: tl.constexpr):
    """M == 1: one [BLOCK_N, BLOCK_K] weight slab and the x it multiplies, both in the weight
    load's layout (all masked off when not `valid`, a scalar: no memory traffic)."""
    k_mask = (offs_k < K) & valid
    w = tl.load(w_rows + offs_k[None, :], mask=k_mask[None, :], other=0.0)
    if GATE_UP:
        # silu(gate) * up once per element (a 1-D row), moved into w's layout through shared memory
        x = _load_x(x_ptr + offs_k, k_mask, K, GATE_UP)[None, :]
    else:
        # x read as the [BLOCK_N, BLOCK_K] broadcast of its row: each thread loads (from L1) the
        # x elements of its own weight elements, so nothing changes layout
        x = tl.load(x_ptr + (offs_k[None, :] + 0 * offs_n[:, None]), mask=k_mask[None, :], other=0.0)
    return w, x


@triton.jit
def _row_dot(x_ptr, w_rows, offs_n, arange_k, k_begin, k_end, K,
             GATE_UP: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """M == 1: sum over K slabs [k_begin, k_end) of w * x as [BLOCK_N] fp32. fp32 FMAs into a
    [BLOCK_N, BLOCK_K] accumulator, reduced once at the end; the next slab's loads are issued
    before this slab's FMAs (Triton does not pipeline loads that feed no tl.dot)."""
    acc = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
    w_next, x_next = _row_slab(x_ptr, w_rows, offs_n, k_begin + arange_k, K, k_begin < k_end, GATE_UP)
    for k0 in range(k_begin, k_end, BLOCK_K):
        w, x = w_next, x_next
        w_next, x_next = _row_slab(x_ptr, w_rows, offs_n, k0 + BLOCK_K + arange_k, K, k0 + BLOCK_K < k_end, GATE_UP)
        acc += w.to(tl.float32) * x.to(tl.float32)
    return tl.sum(acc, axis=1)


@triton.jit
def _tile_dot(x_ptr, stride_xm, w_rows, offs_m, m_mask, arange_k, k_begin, k_end, K,
              GATE_UP: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """Any M: sum over K slabs of x @ w.T as [BLOCK_M, BLOCK_N] fp32 on tensor cores (the weight
    slabs staged through shared memory by Triton's pipeliner, num_stages deep)."""
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(k_begin, k_end, BLOCK_K):
        offs_k = k0 + arange_k
        k_mask = offs_k < K
        w = tl.load(w_rows + offs_k[None, :], mask=k_mask[None, :], other=0.0)
        x = _load_x(x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :], m_mask[:, None] & k_mask[None, :],
                    K, GATE_UP)
        acc = tl.dot(x, tl.trans(w), acc)
    return acc


@triton.jit
def _partials_in_order(ws_ptr, tile, mask, split_k, split_stride, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """partial[0] + partial[1] + ... + partial[split_k - 1], summed in that order; four loads are
    issued before their adds so that the L2 round trips overlap (split_k <= 16: at most 4 waits)."""
    total = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for s in range(0, split_k, 4):
        p0 = tl.load(ws_ptr + s * split_stride + tile, mask=mask, other=0.0, cache_modifier=".cg")
        p1 = tl.load(ws_ptr + (s + 1) * split_stride + tile, mask=mask & (s + 1 < split_k), other=0.0,
                     cache_modifier=".cg")
        p2 = tl.load(ws_ptr + (s + 2) * split_stride + tile, mask=mask & (s + 2 < split_k), other=0.0,
                     cache_modifier=".cg")
        p3 = tl.load(ws_ptr + (s + 3) * split_stride + tile, mask=mask & (s + 3 < split_k), other=0.0,
                     cache_modifier=".cg")
        total = (((total + p0) + p1) + p2) + p3
    return total


@triton.jit
def _gemv_kernel(x_ptr, w_ptr, bias_ptr, y_ptr, ws_ptr, cnt_ptr,
                 M, N, K, stride_xm, stride_ym, split_k, k_slabs_per_split,
                 HAS_BIAS: tl.constexpr, GATE_UP: tl.constexpr, SPLIT: tl.constexpr, DOT: tl.constexpr,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    offs_m = tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    arange_k = tl.arange(0, BLOCK_K)
    m_mask = offs_m < M
    n_mask = offs_n < N
    # Rows past N re-read row N-1 (in bounds, unmasked loads); they are never stored.
    w_rows = w_ptr + tl.minimum(offs_n, N - 1)[:, None] * K
    k_begin = pid_k * k_slabs_per_split * BLOCK_K
    k_end = tl.minimum(k_begin + k_slabs_per_split * BLOCK_K, K)
    if DOT:
        part = _tile_dot(x_ptr, stride_xm, w_rows, offs_m, m_mask, arange_k, k_begin, k_end, K,
                         GATE_UP, BLOCK_M, BLOCK_N, BLOCK_K)
    else:
        part = _row_dot(x_ptr, w_rows, offs_n, arange_k, k_begin, k_end, K, GATE_UP, BLOCK_N, BLOCK_K)[None, :]

    out_mask = m_mask[:, None] & n_mask[None, :]
    y_ptrs = y_ptr + offs_m[:, None] * stride_ym + offs_n[None, :]
    if SPLIT:
        tile = offs_m[:, None] * N + offs_n[None, :]
        tl.store(ws_ptr + pid_k * M * N + tile, part, mask=out_mask)
        tl.debug_barrier()  # every thread's partial is stored before the (single-thread) release
        arrived = tl.atomic_add(cnt_ptr + pid_n, 1, sem="acq_rel", scope="gpu")
        if arrived == split_k - 1:
            # a fixed order: the same bits whatever order the splits arrived in
            total = _partials_in_order(ws_ptr, tile, out_mask, split_k, M * N, BLOCK_M, BLOCK_N)
            if HAS_BIAS:
                total += tl.load(bias_ptr + offs_n, mask=n_mask, other=0.0).to(tl.float32)[None, :]
            tl.store(y_ptrs, total.to(y_ptr.dtype.element_ty), mask=out_mask)
            tl.atomic_xchg(cnt_ptr + pid_n, 0, sem="relaxed", scope="gpu")
    else:
        if HAS_BIAS:
            part += tl.load(bias_ptr + offs_n, mask=n_mask, other=0.0).to(tl.float32)[None, :]
        tl.store(y_ptrs, part.to(y_ptr.dtype.element_ty), mask=out_mask)


def _check(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, gate_up: bool,
           out: torch.Tensor | None) -> tuple[int, int, int]:
    if x.dim() != 2 or x.dtype not in _DTYPES or x.stride(1) != 1:
        raise ValueError(f"x: expected a 2-D fp16/bf16 tensor with a contiguous last dim, got "
                         f"{tuple(x.shape)} {x.dtype} strides {x.stride()}")
    if weight.dim() != 2 or weight.dtype != x.dtype or not weight.is_contiguous() or weight.device != x.device:
        raise ValueError(f"weight: expected a contiguous 2-D {x.dtype} tensor [N, K] on {x.device}, got "
                         f"{tuple(weight.shape)} {weight.dtype} on {weight.device}")
    M, (N, K) = x.shape[0], weight.shape
    if not 1 <= M <= MAX_M:
        raise ValueError(f"x: gemv takes 1..{MAX_M} rows, got {M} (larger batches belong to a GEMM)")
    if x.shape[1] != (2 * K if gate_up else K):
        raise ValueError(f"x: expected {2 * K if gate_up else K} columns for weight [{N}, {K}]"
                         f"{' with gate_up' if gate_up else ''}, got {x.shape[1]}")
    if N * K >= 2**31:
        raise ValueError(f"weight: {N} x {K} elements exceed the kernel's 32-bit offsets")
    if bias is not None and (bias.shape != (N,) or bias.dtype != x.dtype or bias.stride(0) != 1
                             or bias.device != x.device):
        raise ValueError(f"bias: expected a contiguous [{N}] {x.dtype} tensor on {x.device}, got "
                         f"{tuple(bias.shape)} {bias.dtype} on {bias.device}")
    if out is not None and (out.shape != (M, N) or out.dtype != x.dtype or out.stride(1) != 1
                            or out.device != x.device):
        raise ValueError(f"out: expected [{M}, {N}] {x.dtype} on {x.device} with a contiguous last dim, got "
                         f"{tuple(out.shape)} {out.dtype} strides {out.stride()} on {out.device}")
    return M, N, K


def gemv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, gate_up: bool = False,
         out: torch.Tensor | None = None, *, tile: Tile | None = None) -> torch.Tensor:
    """y [M, N] = x @ weight.T + bias, in x's dtype with fp32 accumulation, in one launch.

    x: [M, K] fp16/bf16, 1 <= M <= 16, last dim contiguous (any row stride); with gate_up=True
    x is [M, 2K] = [gate | up] and the input row is silu(gate) * up (fused SwiGLU).
    weight: [N, K] contiguous (torch linear layout), x's dtype. bias: [N] or None.
    out: optional [M, N] destination (last dim contiguous; must not overlap x), written and
    returned; otherwise a new tensor. tile: override TILES (benchmarks only).
    Split-K tiles use the module's cached workspace and counters (see the module docstring for
    CUDA-graph capture and streams)."""
    M, N, K = _check(x, weight, bias, gate_up, out)
    tile = tile or tile_for(M, N, K)
    if tile.dot and (tile.block_n < 16 or tile.block_k < 16):
        raise ValueError(f"tile: dot=True needs block_n and block_k >= 16, got {tile}")
    if not tile.dot and M > 1:
        raise ValueError(f"tile: the FMA path (dot=False) takes one row, got M={M}")
    if out is None:
        out = torch.empty((M, N), dtype=x.dtype, device=x.device)
    n_tiles, split, slabs_per_split = grid(N, K, tile)
    if split > 1:
        ws = _buffer("workspace", x.device, split * M * N, torch.float32)
        counters = _buffer("counters", x.device, n_tiles, torch.int32)
    else:
        ws = counters = out  # unused (SPLIT=False)
    _gemv_kernel[(n_tiles, split)](
        x, weight, bias if bias is not None else out, out, ws, counters,
        M, N, K, x.stride(0), out.stride(0), split, slabs_per_split,
        HAS_BIAS=bias is not None, GATE_UP=gate_up, SPLIT=split > 1, DOT=tile.dot,
        BLOCK_M=_block_m(M, tile.dot), BLOCK_N=tile.block_n, BLOCK_K=tile.block_k,
        num_warps=tile.num_warps, num_stages=tile.num_stages)
    return out
