"""Dense GEMV for decode: y = x @ weight.T (+ bias) for M = 1..16 rows, bandwidth-bound, one launch.

At M <= 16 a linear layer reads its weight once and does almost no arithmetic per byte, so
its time is the weight's bytes over the memory bandwidth, plus launch and ramp-up. This kernel
streams `weight` [N, K] with wide coalesced loads (each program reads BLOCK_N whole rows in
BLOCK_K-wide slabs) and accumulates in fp32:
- M == 1: fp32 FMAs into a [BLOCK_N, BLOCK_K] accumulator, reduced over K once at the end;
- M >= 2: either FMAs reduced per slab (`Tile.dot=False`, best up to M ~ 4), or a tensor-core
  `tl.dot` of a 16-row (or 32-row) x tile against the weight slab (`Tile.dot=True`).

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

Where it is expected to lose to cuBLAS (route these there): M > 16 is refused (ValueError);
at M = 16 the tensor-core path's 16-row tile is full and cuBLAS's GEMM kernels are likely as
good or better; large square-ish shapes with M >= 8 at which the GEMV is no longer bandwidth
bound. The GPU sweep decides the crossover per shape class.
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
    split_k: programs per output tile along K (1 = no workspace); dot: tensor-core path (M >= 2)."""

    block_n: int
    block_k: int
    split_k: int = 1
    num_warps: int = 4
    num_stages: int = 2
    dot: bool = False


# (M bucket, N bucket, K bucket) -> Tile; buckets are powers of two (see shape_class).
# Filled from the winners of benchmarks/gpu_sections/gemv.py on a GPU; empty classes use
# default_tile(). Example entry: (1, 2048, 2048): Tile(16, 256, 2, 4, 2),
TILES: dict[tuple[int, int, int], Tile] = {}

_TARGET_PROGRAMS = 512  # enough programs to give each SM of a 132-SM GPU about four


def _pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def shape_class(M: int, N: int, K: int) -> tuple[int, int, int]:
    """The TILES key of a [M, K] x [N, K]^T product: each size rounded up to a power of two."""
    return _pow2(M), _pow2(N), _pow2(K)


def _block_m(M: int, dot: bool) -> int:
    return max(16, _pow2(M)) if dot else _pow2(M)


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
    if M <= 4:  # FMA path; keep the per-thread tile about the same as M grows
        block_n, block_k = 16, max(64, 256 // _pow2(M))
        return Tile(block_n, block_k, _split_for(N, K, block_n, block_k), num_warps=4, num_stages=2)
    block_n, block_k = 32, 128
    return Tile(block_n, block_k, _split_for(N, K, block_n, block_k), num_warps=4, num_stages=3, dot=True)


def tile_for(M: int, N: int, K: int) -> Tile:
    """The committed tile of the shape class, else the default."""
    return TILES.get(shape_class(M, N, K)) or default_tile(M, N, K)


# Swept shapes (block_n, block_k at M = 1, num_warps, num_stages); block_k shrinks as M grows on
# the FMA path so that the per-thread tile stays about the same size.
_FMA_SWEEP = ((4, 512, 4, 2), (8, 512, 4, 2), (16, 256, 4, 2), (16, 256, 4, 1), (16, 256, 4, 3),
              (16, 512, 8, 2), (32, 256, 8, 2), (64, 128, 8, 2))
_DOT_SWEEP = ((16, 128, 4, 3), (16, 256, 4, 2), (32, 128, 4, 3), (32, 256, 4, 3), (64, 64, 4, 4),
              (64, 128, 4, 3), (32, 128, 8, 4))


def candidates(M: int, N: int, K: int) -> list[Tile]:
    """Tiles worth sweeping on a GPU for this shape, the default first: the FMA path up to M = 4,
    the tensor-core path from M = 2, each at the default split and twice it. Compiles are shared
    across shapes: every Tile field but split_k is a compile-time constant."""
    found = [default_tile(M, N, K)]
    sweeps = ([(s, False) for s in _FMA_SWEEP] if M <= 4 else []) + ([(s, True) for s in _DOT_SWEEP] if M >= 2 else [])
    for (block_n, block_k, num_warps, num_stages), dot in sweeps:
        if not dot:
            block_k = max(32, block_k // _pow2(M))
        base = _split_for(N, K, block_n, block_k)
        for split in (base, 2 * base):
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
def _load_x(x_ptr, stride_xm, offs_m, m_mask, offs_k, k_mask, K, GATE_UP: tl.constexpr):
    """x[offs_m, offs_k] in x's dtype, [BLOCK_M, BLOCK_K]; with GATE_UP, silu(gate) * up computed
    in fp32 and rounded once to the dtype."""
    mask = m_mask[:, None] & k_mask[None, :]
    ptrs = x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :]
    gate = tl.load(ptrs, mask=mask, other=0.0)
    if GATE_UP:
        g = gate.to(tl.float32)
        u = tl.load(ptrs + K, mask=mask, other=0.0).to(tl.float32)
        return (g / (1.0 + tl.exp(-g)) * u).to(x_ptr.dtype.element_ty)
    return gate


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
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    elif BLOCK_M == 1:
        acc = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
    else:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(k_begin, k_end, BLOCK_K):
        offs_k = k0 + arange_k
        k_mask = offs_k < K
        w = tl.load(w_rows + offs_k[None, :], mask=k_mask[None, :], other=0.0)
        x = _load_x(x_ptr, stride_xm, offs_m, m_mask, offs_k, k_mask, K, GATE_UP)
        if DOT:
            acc = tl.dot(x, tl.trans(w), acc)
        elif BLOCK_M == 1:
            acc += w.to(tl.float32) * x.to(tl.float32)
        else:
            acc += tl.sum(x.to(tl.float32)[:, None, :] * w.to(tl.float32)[None, :, :], axis=2)
    if BLOCK_M == 1 and not DOT:
        part = tl.sum(acc, axis=1)[None, :]
    else:
        part = acc

    out_mask = m_mask[:, None] & n_mask[None, :]
    y_ptrs = y_ptr + offs_m[:, None] * stride_ym + offs_n[None, :]
    if SPLIT:
        tile = offs_m[:, None] * N + offs_n[None, :]
        tl.store(ws_ptr + pid_k * M * N + tile, part, mask=out_mask)
        tl.debug_barrier()  # every thread's partial is stored before the (single-thread) release
        arrived = tl.atomic_add(cnt_ptr + pid_n, 1, sem="acq_rel", scope="gpu")
        if arrived == split_k - 1:
            total = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
            for s in range(0, split_k):  # fixed order: deterministic whatever the arrival order
                total += tl.load(ws_ptr + s * M * N + tile, mask=out_mask, other=0.0, cache_modifier=".cg")
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
