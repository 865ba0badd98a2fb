"""Decode attention over the paged KV cache: one query token per sequence, flash-decoding style,
GQA-packed. Semantics: `TorchAttentionBackend` with every query length 1 (the query is the last
of seq_lens[b] positions, so it sees them all); the CUDA kernel's contract (`cuda_kernels.h`).

Program (sequence b, KV head g, split s) serves the `group = heads / kv_heads` query heads of KV
head g at once: their queries are the rows of a [max(16, next_pow2(group)), D] block (padded to
tl.dot's minimum), so every K/V tile is loaded once for the whole group. Scores come from tl.dot
(fp32 accumulation of exact products), the softmax is online in fp32 (base 2, the scale folded
in), and the probabilities are rounded to the dtype for the P @ V product (as flash attention
does; the error this adds is at most one rounding of max|V|).

The context of sequence b is cut into `splits` equal chunks, rounded up to whole tiles, on the
device from seq_lens[b] (so the launch, grid included, depends only on host-known sizes and a
CUDA graph can capture it). A split past the end of its sequence is empty: it loads only its query
and stores nothing, so `splits` may be sized for the longest context. With splits == 1 the
program writes the output; otherwise each writes its partial (running max m, sum l, unnormalised
output acc, fp32) to the workspace and counts itself in on a per-(sequence, KV head) counter
(store, barrier, one acq_rel atomic: the GEMV's protocol, `gemv.py`); the last of the `splits`
programs to arrive rescales the non-empty partials to their common maximum in split order (the
same bits whatever the arrival order), writes the group's output and resets the counter. One
launch per call: a decode step's attention is one kernel per layer.

Counters: int32, one per (sequence, KV head), owned by this module (zeroed once per device and
size, left at zero by every call); they are allocated on the first call that needs them, which
must not be inside CUDA-graph capture (the warm-up before capture makes it), and calls sharing
them must be ordered on one stream.

Workspace (fp32), with r = (b * heads + h) * splits + s and R = seqs * heads * splits:
    acc [R, D] | m [R] | l [R]
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from llm_infer.kernels.triton.checks import activation, index, like, need, power_of_two


@dataclass(frozen=True)
class Tile:
    block_n: int  # context positions per K/V tile (a power of two >= 16)
    warps: int
    stages: int  # software-pipelining depth of the tile loop


# Keyed by head_dim class; defaults valid on any GPU (sm_75+: at most 40 KB of shared memory, no
# register spills at D 128). Triton pipelines the K/V gathers (cp.async, one tile ahead) only from
# 3 stages up: the table load is one stage and the K/V loads that depend on it another.
# `benchmarks/gpu_sections/decode_kernels.py` sweeps CANDIDATES.
TILES: dict[str, Tile] = {
    "d64": Tile(block_n=64, warps=4, stages=3),
    "d128": Tile(block_n=64, warps=4, stages=3),
    "default": Tile(block_n=32, warps=4, stages=3),
}
CANDIDATES = [Tile(n, w, s) for n in (16, 32, 64, 128) for w in (2, 4, 8) for s in (2, 3) if (n, w) != (128, 2)]

# choose_splits: aim for WAVES programs per SM, never below MIN_SPLIT_POSITIONS per split. Set from the
# H200 comparison of split counts (gpu_check-h200-2026-12-04-4c36cfb.json): batch 1 x 1024 tokens took
# 8.1 us at 8 splits (128 positions each) against 11.0 us at 4; batch 128 x 2048 was fastest unsplit.
WAVES = 2
MIN_SPLIT_POSITIONS = 128
MAX_SPLITS = 64


def shape_class(head_dim: int) -> str:
    return f"d{head_dim}" if f"d{head_dim}" in TILES else "default"


def choose_splits(num_seqs: int, num_kv_heads: int, max_context: int, sm_count: int) -> int:
    """Splits per (sequence, KV head) for `decode_attention`:

        clamp(ceil(WAVES * sm_count / (num_seqs * num_kv_heads)),
              1, min(MAX_SPLITS, max_context // MIN_SPLIT_POSITIONS))

    i.e. enough programs to fill every SM WAVES times over, but no split shorter than
    MIN_SPLIT_POSITIONS context positions (a few tiles: below that the merge costs more than the
    parallelism gains), and at most MAX_SPLITS. Host arithmetic only."""
    programs = max(1, num_seqs * num_kv_heads)
    want = -(-WAVES * max(1, sm_count) // programs)
    cap = min(MAX_SPLITS, max(1, max_context // MIN_SPLIT_POSITIONS))
    return max(1, min(want, cap))


def workspace_bytes(seqs: int, heads: int, head_dim: int, splits: int) -> int:
    """Bytes of workspace `decode_attention` needs (0 when splits == 1)."""
    return 0 if splits == 1 else 4 * seqs * heads * splits * (head_dim + 2)


@triton.jit
def _chunk(seq_len, splits, BLOCK_N: tl.constexpr):
    """Context positions per split: an equal share of seq_len rounded up to whole tiles (>= 1 tile)."""
    return tl.maximum(tl.cdiv(tl.cdiv(seq_len, splits), BLOCK_N), 1) * BLOCK_N


_COUNTERS: dict[tuple, torch.Tensor] = {}


def _counters(device: torch.device, numel: int) -> torch.Tensor:
    """The zeroed split counters of a device, grown to `numel` (never during graph capture)."""
    key = (device.type, device.index)
    buf = _COUNTERS.get(key)
    if buf is None or buf.numel() < numel:
        if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
            raise RuntimeError(f"decode_attention: {numel} split counters would be allocated during CUDA-graph "
                               "capture; call it once with this many sequences before capturing")
        buf = torch.zeros(max(numel, 256), dtype=torch.int32, device=device)
        _COUNTERS[key] = buf
    return buf


@triton.jit
def _merge_group(acc_ptr, m_ptr, l_ptr, out_ptr, b, heads, in_group, seq_len, splits,
                 H: tl.constexpr, D: tl.constexpr, GROUP_PAD: tl.constexpr, BLOCK_N: tl.constexpr):
    """The output rows `heads` of sequence b from the partials of its non-empty splits, rescaled to
    their common maximum and summed in split order (padded rows of the group compute zeros)."""
    used = tl.cdiv(seq_len, _chunk(seq_len, splits, BLOCK_N))
    base = (b * H + heads) * splits
    d = tl.arange(0, D)
    m_max = tl.load(m_ptr + base, mask=in_group, other=0.0, cache_modifier=".cg")
    for i in range(1, used):
        m_max = tl.maximum(m_max, tl.load(m_ptr + base + i, mask=in_group, other=0.0, cache_modifier=".cg"))
    acc = tl.zeros([GROUP_PAD, D], tl.float32)
    l_tot = tl.zeros([GROUP_PAD], tl.float32)
    for i in range(0, used):
        w = tl.exp2(tl.load(m_ptr + base + i, mask=in_group, other=0.0, cache_modifier=".cg") - m_max)
        l_tot += w * tl.load(l_ptr + base + i, mask=in_group, other=0.0, cache_modifier=".cg")
        part = tl.load(acc_ptr + (base + i)[:, None] * D + d[None, :], mask=in_group[:, None], other=0.0,
                       cache_modifier=".cg")
        acc += part * w[:, None]
    o = acc / tl.where(l_tot > 0, l_tot, 1.0)[:, None]
    tl.store(out_ptr + b * (H * D) + heads[:, None] * D + d[None, :], o.to(out_ptr.dtype.element_ty),
             mask=in_group[:, None])


@triton.jit
def _decode_kernel(q_ptr, q_stride, kc_ptr, vc_ptr, tables_ptr, table_stride, seq_lens_ptr, out_ptr,
                   acc_ptr, m_ptr, l_ptr, cnt_ptr, qk_scale, splits,
                   H: tl.constexpr, KVH: tl.constexpr, GROUP: tl.constexpr, GROUP_PAD: tl.constexpr,
                   D: tl.constexpr, BLOCK_SIZE: tl.constexpr, BLOCK_N: tl.constexpr, DIRECT: tl.constexpr,
                   STAGES: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    kvh = tl.program_id(1)
    split = tl.program_id(2)
    seq_len = tl.load(seq_lens_ptr + b)
    chunk = _chunk(seq_len, splits, BLOCK_N)
    lo = split * chunk
    hi = tl.minimum(lo + chunk, seq_len)

    g = tl.arange(0, GROUP_PAD)
    d = tl.arange(0, D)
    n = tl.arange(0, BLOCK_N)
    heads = kvh * GROUP + g
    in_group = g < GROUP
    q = tl.load(q_ptr + b * q_stride + heads[:, None] * D + d[None, :], mask=in_group[:, None], other=0.0)
    m = tl.full([GROUP_PAD], float("-inf"), tl.float32)
    l = tl.zeros([GROUP_PAD], tl.float32)
    acc = tl.zeros([GROUP_PAD, D], tl.float32)
    table = tables_ptr + b * table_stride
    for start in tl.range(lo, hi, BLOCK_N, num_stages=STAGES):
        pos = start + n
        valid = pos < hi
        block = tl.load(table + pos // BLOCK_SIZE, mask=valid, other=0).to(tl.int64)
        rows = (block * BLOCK_SIZE + pos % BLOCK_SIZE) * (KVH * D) + kvh * D
        k = tl.load(kc_ptr + rows[:, None] + d[None, :], mask=valid[:, None], other=0.0)
        s = tl.where(valid[None, :], tl.dot(q, tl.trans(k)) * qk_scale, float("-inf"))
        m_new = tl.maximum(m, tl.max(s, axis=1))  # finite: every tile holds a valid position
        alpha = tl.exp2(m - m_new)
        p = tl.exp2(s - m_new[:, None])
        l = l * alpha + tl.sum(p, axis=1)
        v = tl.load(vc_ptr + rows[:, None] + d[None, :], mask=valid[:, None], other=0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
        m = m_new

    if DIRECT:  # splits == 1; an empty sequence (seq_len 0) gets zeros
        o = acc / tl.where(l > 0, l, 1.0)[:, None]
        dst = out_ptr + b * (H * D) + heads[:, None] * D + d[None, :]
        tl.store(dst, o.to(out_ptr.dtype.element_ty), mask=in_group[:, None])
    else:  # an empty split stores nothing: the merge reads only the non-empty ones
        r = (b * H + heads) * splits + split
        store = in_group & (lo < hi)
        tl.store(acc_ptr + r[:, None] * D + d[None, :], acc, mask=store[:, None])
        tl.store(m_ptr + r, m, mask=store)
        tl.store(l_ptr + r, l, mask=store)
        tl.debug_barrier()  # every thread's partial is stored before the (single-thread) release
        arrived = tl.atomic_add(cnt_ptr + b * KVH + kvh, 1, sem="acq_rel", scope="gpu")
        if arrived == splits - 1:
            _merge_group(acc_ptr, m_ptr, l_ptr, out_ptr, b, heads, in_group, seq_len, splits, H, D, GROUP_PAD,
                         BLOCK_N)
            tl.atomic_xchg(cnt_ptr + b * KVH + kvh, 0, sem="relaxed", scope="gpu")


def decode_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, block_tables: torch.Tensor,
                     seq_lens: torch.Tensor, scale: float, splits: int, workspace: torch.Tensor | None = None,
                     out: torch.Tensor | None = None, *, tile: Tile | None = None) -> torch.Tensor:
    """Attention of one query token per sequence over its paged context. Returns out.

    q: [seqs, H * D] float16/bfloat16, last dimension stride 1 (rows may be strided, e.g. a slice
      of the qkv tensor). k_cache, v_cache: [num_blocks, block_size, KVH, D], q's dtype, contiguous;
      D a power of two >= 16, block_size a power of two, H a multiple of KVH.
    block_tables: [seqs, max_blocks] int32 (last dimension stride 1). seq_lens: [seqs] int32,
      context length including the current token (0 gives zeros; not range-checked on the host).
    scale: softmax scale. splits: programs per (sequence, KV head), >= 1 (see choose_splits).
    workspace: >= workspace_bytes(seqs, H, D, splits) bytes, contiguous, 16-byte aligned, any
      dtype (allocated when None and splits > 1); overwritten. out: [seqs, H * D] contiguous,
      q's dtype; allocated when None. tile: overrides TILES (sweeps).
    Raises ValueError naming the argument on a shape, dtype, device or layout mismatch.
    """
    activation(q, "q", 2)
    seqs, dev = q.shape[0], q.device
    need(k_cache.dim() == 4, "k_cache",
         f"expected [num_blocks, block_size, kv_heads, head_dim], got {tuple(k_cache.shape)}")
    like(k_cache, "k_cache", tuple(k_cache.shape), q.dtype, dev)
    like(v_cache, "v_cache", tuple(k_cache.shape), q.dtype, dev)
    _, block_size, kv_heads, head_dim = k_cache.shape
    need(power_of_two(head_dim) and head_dim >= 16, "k_cache", f"head_dim must be a power of two >= 16, got {head_dim}")
    need(power_of_two(block_size), "k_cache", f"block_size must be a power of two, got {block_size}")
    heads = q.shape[1] // head_dim
    need(q.shape[1] == heads * head_dim and heads % kv_heads == 0 and heads > 0, "q",
         f"row of {q.shape[1]} is not a multiple of {kv_heads} KV heads x head_dim {head_dim}")
    index(block_tables, "block_tables", 2, dev)
    index(seq_lens, "seq_lens", 1, dev)
    need(block_tables.shape[0] == seqs, "block_tables", f"expected {seqs} rows, got {block_tables.shape[0]}")
    need(seq_lens.shape[0] == seqs, "seq_lens", f"expected {seqs} lengths, got {seq_lens.shape[0]}")
    need(isinstance(splits, int) and splits >= 1, "splits", f"must be an int >= 1, got {splits!r}")
    like(out, "out", (seqs, heads * head_dim), q.dtype, dev)
    nbytes = workspace_bytes(seqs, heads, head_dim, splits)
    if workspace is not None and nbytes:
        need(workspace.device == dev and workspace.is_contiguous(), "workspace", f"must be contiguous on {dev}")
        need(workspace.numel() * workspace.element_size() >= nbytes, "workspace",
             f"needs {nbytes} bytes, got {workspace.numel() * workspace.element_size()}")
        need(workspace.data_ptr() % 16 == 0, "workspace", "must be 16-byte aligned")
    out = torch.empty(seqs, heads * head_dim, dtype=q.dtype, device=dev) if out is None else out
    if seqs == 0:
        return out
    if nbytes:
        raw = torch.empty(nbytes, dtype=torch.uint8, device=dev) if workspace is None else workspace
        ws = raw.reshape(-1).view(torch.uint8)[:nbytes].view(torch.float32)
        r = seqs * heads * splits
        acc, m, l = ws[: r * head_dim], ws[r * head_dim : r * (head_dim + 1)], ws[r * (head_dim + 1) :]
        counters = _counters(dev, seqs * kv_heads)
    else:
        acc = m = l = out  # unused
        counters = seq_lens
    group = heads // kv_heads
    t = tile or TILES[shape_class(head_dim)]
    _decode_kernel[(seqs, kv_heads, splits)](
        q, q.stride(0), k_cache, v_cache, block_tables, block_tables.stride(0), seq_lens, out, acc, m, l, counters,
        float(scale) * math.log2(math.e), splits, H=heads, KVH=kv_heads, GROUP=group,
        GROUP_PAD=max(16, triton.next_power_of_2(group)), D=head_dim, BLOCK_SIZE=block_size, BLOCK_N=t.block_n,
        DIRECT=splits == 1, STAGES=t.stages, num_warps=t.warps)
    return out
