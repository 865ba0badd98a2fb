"""The Triton kernels of the CUDA decode step (llm_infer/kernels/triton/{rms_norm, activation, rope_kv,
decode_attention}.py) against float64 truths computed from the same rounded inputs, on CUDA when
present, else under Triton's interpreter on CPU tensors. Outputs (and caches, workspaces) are
poisoned with NaN first, so anything left unwritten fails.

Tolerances, elementwise, with u the unit roundoff of the dtype (fp16 2^-11, bf16 2^-8):
- each rounding to the dtype a kernel does may cost u x |value|; the interpreter of triton 3.6
  converts fp32 -> bf16 by truncation, not to nearest, so there a rounding costs 2u (ROUND = 2);
- fp32 arithmetic (sums, rsqrt, exp) adds FP32 = 2^-18 relative, far below u.
bf16 decode attention runs on CUDA only: the interpreter's tl.dot multiplies bf16 operands as raw
uint16 bit patterns (numpy has no bfloat16), so on CPU those cases are float16.
"""

from __future__ import annotations

import math
import os

import pytest
import torch

from llm_infer.kernels import torch_ref
from llm_infer.kernels.triton import activation, decode_attention as attn, rms_norm as rms, rope_kv

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
F16, BF16 = torch.float16, torch.bfloat16
U = {F16: 2.0**-11, BF16: 2.0**-8}
FP32 = 2.0**-18


def rounding(dtype: torch.dtype) -> float:
    """The worst error of one fp32 -> dtype rounding done by a kernel, relative to the value."""
    return U[dtype] * (2.0 if dtype == BF16 and not CUDA else 1.0)


def randn(g: torch.Generator, *shape: int, dtype: torch.dtype = torch.float32, scale: float = 1.0) -> torch.Tensor:
    return (torch.randn(*shape, generator=g) * scale).to(DEVICE, dtype)


def nan_like(shape, dtype) -> torch.Tensor:
    return torch.full(shape, float("nan"), dtype=dtype, device=DEVICE)


# ---- rms_norm -------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [F16, BF16])
@pytest.mark.parametrize("with_residual", [False, True])
@pytest.mark.parametrize("rows,dim,tile", [(1, 1536, None), (3, 200, None), (37, 64, None), (70, 200, None),
                                           (7, 96, rms.Tile(rows=4, warps=2))])
def test_rms_norm_is_within_two_roundings_of_the_fp64_truth(rows, dim, tile, with_residual, dtype):
    """out = round(w * round(x_hat)) as torch_ref does; with a residual, residual <- round(x + r) first.
    Bound: 2 roundings of |truth| (the residual itself: 1 rounding of |x + r|)."""
    g = torch.Generator().manual_seed(rows * 1000 + dim)
    x, w = randn(g, rows, dim, dtype=dtype), randn(g, dim, dtype=dtype, scale=0.5) + 1
    res = randn(g, rows, dim, dtype=dtype) if with_residual else None
    res_in = None if res is None else res.clone()
    out = nan_like((rows, dim), dtype)
    assert rms.rms_norm(x, w, 1e-6, residual=res, out=out, tile=tile) is out
    r = rounding(dtype)
    if with_residual:
        exact = x.double() + res_in.double()
        assert ((res.double() - exact).abs() <= r * exact.abs()).all()
        normed_input = res.double()  # the kernel normalises the residual it stored
    else:
        normed_input = x.double()
    truth = w.double() * normed_input * torch.rsqrt(normed_input.pow(2).mean(-1, keepdim=True) + 1e-6)
    err = (out.double() - truth).abs()
    assert (err <= (2 * r + r * r + FP32) * truth.abs() + 1e-7).all(), err.max().item()
    if dtype == F16 or CUDA:  # rounding to nearest in the kernel: the same numbers as torch_ref, bar rare flips
        ref = torch_ref.rms_norm(normed_input.to(dtype), w, 1e-6)
        assert (out == ref).float().mean() > 0.99


def test_rms_norm_normalises_each_last_dimension_row_of_a_3d_tensor():
    """[tokens, heads, head_dim] (Qwen3's per-head q/k norm) is the 2-D case on the flattened rows."""
    g = torch.Generator().manual_seed(3)
    x, w = randn(g, 5, 3, 64, dtype=BF16), randn(g, 64, dtype=BF16)
    assert torch.equal(rms.rms_norm(x, w, 1e-6), rms.rms_norm(x.view(15, 64), w, 1e-6).view(5, 3, 64))


def test_rms_norm_accepts_out_aliasing_x_and_rejects_bad_arguments():
    g = torch.Generator().manual_seed(1)
    x, w = randn(g, 2, 64, dtype=F16), randn(g, 64, dtype=F16)
    expected = rms.rms_norm(x, w, 1e-6)
    assert torch.equal(rms.rms_norm(x, w, 1e-6, out=x), expected)
    with pytest.raises(ValueError, match="^weight: expected shape"):
        rms.rms_norm(x, w[:32], 1e-6)
    with pytest.raises(ValueError, match="^residual: expected dtype"):
        rms.rms_norm(x, w, 1e-6, residual=x.float())
    with pytest.raises(ValueError, match="^x: must be contiguous"):
        rms.rms_norm(torch.cat([x, x], 1)[:, :64], w, 1e-6)
    with pytest.raises(ValueError, match="^x: dtype must be float16 or bfloat16"):
        rms.rms_norm(x.float(), w.float(), 1e-6)


# ---- silu_and_mul ---------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [F16, BF16])
@pytest.mark.parametrize("rows,inter,strided,tile", [(1, 96, False, None), (5, 1000, True, activation.Tile(512, 2))])
def test_silu_and_mul_is_one_rounding_from_the_fp64_truth(rows, inter, strided, tile, dtype):
    """silu(gate) * up in fp32, rounded once: within one rounding of |truth|. Rows may be strided."""
    g = torch.Generator().manual_seed(rows + inter)
    wide = randn(g, rows, 2 * inter + (24 if strided else 0), dtype=dtype, scale=2.0)
    x = wide[:, : 2 * inter]
    out = nan_like((rows, inter), dtype)
    assert activation.silu_and_mul(x, out, tile=tile) is out
    gate, up = x.double().chunk(2, dim=-1)
    truth = gate * torch.sigmoid(gate) * up
    err = (out.double() - truth).abs()
    assert (err <= (rounding(dtype) + FP32) * truth.abs() + 1e-7).all(), err.max().item()
    # the torch reference rounds silu(gate) first: the two agree to two roundings
    ref = torch_ref.silu_and_mul(x.contiguous()).double()
    assert ((out.double() - ref).abs() <= 3 * rounding(dtype) * truth.abs() + 1e-6).all()


def test_silu_and_mul_rejects_bad_arguments():
    x = torch.zeros(2, 8, dtype=F16, device=DEVICE)
    with pytest.raises(ValueError, match="^x: last dimension must be even"):
        activation.silu_and_mul(x[:, :7])
    with pytest.raises(ValueError, match="^out: expected shape"):
        activation.silu_and_mul(x, torch.zeros(2, 8, dtype=F16, device=DEVICE))


# ---- rotary_write_kv ------------------------------------------------------------------------------

def rope_tables(head_dim: int, max_pos: int) -> tuple[torch.Tensor, torch.Tensor]:
    inv = 1.0 / 10000 ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    freqs = torch.arange(max_pos, dtype=torch.float64)[:, None] * inv[None, :]
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos().float().to(DEVICE), emb.sin().float().to(DEVICE)


def norm_heads(x: torch.Tensor, w: torch.Tensor | None) -> torch.Tensor:
    """Per-head RMSNorm in float64 (no intermediate rounding); identity without a weight."""
    if w is None:
        return x
    return w.double() * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)


@pytest.mark.parametrize("dtype", [F16, BF16])
@pytest.mark.parametrize("heads,kv_heads,head_dim,qk_norm,slot_dtype", [
    (6, 2, 64, False, torch.int32), (4, 1, 128, True, torch.int64), (2, 2, 128, False, torch.int64),
    (12, 2, 64, True, torch.int32)])
def test_rotary_write_kv_matches_the_fp64_truth_and_writes_only_real_slots(heads, kv_heads, head_dim, qk_norm,
                                                                         slot_dtype, dtype):
    """q and k (normed with the Qwen3 weights when given) rotated in place in the strided qkv rows, k and v
    scattered to the cache; slot -1 rows write nothing; every other cache entry stays NaN.
    Bound per element of a rotated pair (o1 = y1 cos - y2 sin): one rounding of |o1| plus, after a norm,
    two roundings of |y1 cos| + |y2 sin| (the normed y is rounded twice, as torch_ref.rms_norm does)."""
    g = torch.Generator().manual_seed(heads * head_dim + qk_norm)
    tokens, block_size, num_blocks, max_pos = 5, 16, 6, 300
    width = (heads + 2 * kv_heads) * head_dim
    buf = randn(g, tokens, width + 16, dtype=dtype)
    qkv = buf[:, :width]
    before = buf.clone()
    positions = torch.randint(0, max_pos, (tokens,), generator=g).to(DEVICE)
    slots = torch.randperm(num_blocks * block_size, generator=g)[:tokens]
    slots[1] = slots[3] = -1
    slots = slots.to(DEVICE, slot_dtype)
    cos, sin = rope_tables(head_dim, max_pos)
    qw = randn(g, head_dim, dtype=dtype, scale=0.3) + 1 if qk_norm else None
    kw = randn(g, head_dim, dtype=dtype, scale=0.3) + 1 if qk_norm else None
    k_cache = nan_like((num_blocks, block_size, kv_heads, head_dim), dtype)
    v_cache = nan_like((num_blocks, block_size, kv_heads, head_dim), dtype)

    rope_kv.rotary_write_kv(qkv, positions, cos, sin, heads, kv_heads, head_dim, k_cache, v_cache, slots, qw, kw)

    src = before[:, :width].double().view(tokens, heads + 2 * kv_heads, head_dim)
    c, s = cos[positions].double()[:, None, :], sin[positions].double()[:, None, :]
    half = head_dim // 2
    r = rounding(dtype)
    for name, sl, w in (("q", slice(0, heads), qw), ("k", slice(heads, heads + kv_heads), kw)):
        y = norm_heads(src[:, sl], w)
        y_rot = torch.cat([-y[..., half:], y[..., :half]], dim=-1)
        truth = y * c + y_rot * s
        terms = (y * c).abs() + (y_rot * s).abs()
        got = qkv.double().view(tokens, heads + 2 * kv_heads, head_dim)[:, sl]
        bound = r * truth.abs() + (2 * r + r * r if w is not None else 0) * terms + FP32 * terms + 1e-6
        assert ((got - truth).abs() <= bound).all(), (name, (got - truth).abs().max().item())
    v_start = (heads + kv_heads) * head_dim  # v and the row padding are not touched
    assert torch.equal(buf[:, v_start:], before[:, v_start:])
    k_new = qkv[:, heads * head_dim : (heads + kv_heads) * head_dim].reshape(tokens, kv_heads, head_dim)
    v = before[:, (heads + kv_heads) * head_dim : width].reshape(tokens, kv_heads, head_dim)
    kc, vc = k_cache.view(-1, kv_heads, head_dim), v_cache.view(-1, kv_heads, head_dim)
    real = slots.cpu() >= 0
    written = slots.cpu()[real].long()
    assert torch.equal(kc[written], k_new[real.to(DEVICE)]) and torch.equal(vc[written], v[real.to(DEVICE)])
    untouched = torch.ones(kc.shape[0], dtype=torch.bool)
    untouched[written] = False
    assert kc[untouched.to(DEVICE)].isnan().all() and vc[untouched.to(DEVICE)].isnan().all()


def test_rotary_write_kv_is_at_least_as_close_to_the_truth_as_the_torch_reference():
    """torch_ref.rotary_ rounds cos/sin and each product to the dtype; ours rounds once (fp16, no norm)."""
    g = torch.Generator().manual_seed(7)
    heads, kv_heads, head_dim, tokens = 4, 2, 128, 8
    qkv = randn(g, tokens, (heads + 2 * kv_heads) * head_dim, dtype=F16, scale=4.0)
    positions = torch.randint(0, 4000, (tokens,), generator=g).to(DEVICE)
    cos, sin = rope_tables(head_dim, 4000)
    ref = qkv.clone()
    torch_ref.rotary_(ref, positions, cos, sin, heads + kv_heads, head_dim)
    truth = qkv.double()
    torch_ref.rotary_(truth, positions, cos.double(), sin.double(), heads + kv_heads, head_dim)
    caches = [nan_like((1, 16, kv_heads, head_dim), F16) for _ in range(2)]
    slots = torch.full((tokens,), -1, dtype=torch.int32, device=DEVICE)
    rope_kv.rotary_write_kv(qkv, positions, cos, sin, heads, kv_heads, head_dim, *caches, slots)
    ours_err, ref_err = (qkv.double() - truth).abs().max(), (ref.double() - truth).abs().max()
    assert ours_err <= ref_err, (ours_err.item(), ref_err.item())


def test_rotary_write_kv_rejects_bad_arguments():
    qkv = torch.zeros(2, 4 * 64, dtype=F16, device=DEVICE)
    pos = torch.zeros(2, dtype=torch.int64, device=DEVICE)
    cos, sin = rope_tables(64, 8)
    cache = torch.zeros(1, 16, 1, 64, dtype=F16, device=DEVICE)
    slots = torch.zeros(2, dtype=torch.int32, device=DEVICE)
    args = (qkv, pos, cos, sin, 2, 1, 64, cache, cache, slots)
    with pytest.raises(ValueError, match="^cos_cache: expected dtype torch.float32"):
        rope_kv.rotary_write_kv(qkv, pos, cos.half(), sin, *args[4:])
    with pytest.raises(ValueError, match="^qkv: rows of 256 cannot hold"):
        rope_kv.rotary_write_kv(qkv, pos, cos, sin, 3, 1, 64, cache, cache, slots)
    with pytest.raises(ValueError, match="^slot_mapping: expected 2 slots"):
        rope_kv.rotary_write_kv(*args[:9], slots[:1])
    with pytest.raises(ValueError, match="^k_norm_weight: expected shape"):
        rope_kv.rotary_write_kv(*args, None, torch.ones(32, dtype=F16, device=DEVICE))


# ---- decode_attention -----------------------------------------------------------------------------

def paged_kv(g: torch.Generator, seq_lens: list[int], block_size: int, kv_heads: int, head_dim: int,
             dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random caches with 3 spare blocks and shuffled block tables (int32 [seqs, max_blocks])."""
    per_seq = [max(1, -(-n // block_size)) for n in seq_lens]
    num_blocks = sum(per_seq) + 3
    perm = torch.randperm(num_blocks, generator=g)
    tables = torch.zeros(len(seq_lens), max(per_seq), dtype=torch.int32)
    start = 0
    for i, n in enumerate(per_seq):
        tables[i, :n] = perm[start : start + n]
        start += n
    shape = (num_blocks, block_size, kv_heads, head_dim)
    return randn(g, *shape, dtype=dtype), randn(g, *shape, dtype=dtype), tables.to(DEVICE)


def attention_truth(q, k_cache, v_cache, tables, seq_lens, scale) -> tuple[torch.Tensor, torch.Tensor]:
    """float64 attention of each sequence's query over its positions [0, seq_len) -> (out [seqs, H, D],
    max |V| over the context of each (sequence, head) [seqs, H, 1])."""
    _, block_size, kv_heads, head_dim = k_cache.shape
    heads = q.shape[1] // head_dim
    outs, vmax = [], []
    for b, n in enumerate(seq_lens):
        pos = torch.arange(n, device=DEVICE)
        slots = tables[b, pos // block_size].long() * block_size + pos % block_size
        k = k_cache.view(-1, kv_heads, head_dim)[slots].double().repeat_interleave(heads // kv_heads, dim=1)
        v = v_cache.view(-1, kv_heads, head_dim)[slots].double().repeat_interleave(heads // kv_heads, dim=1)
        p = (torch.einsum("hd,nhd->hn", q[b].double().view(heads, head_dim), k) * scale).softmax(-1)
        outs.append(torch.einsum("hn,nhd->hd", p, v))
        vmax.append(v.abs().amax(dim=(0, 2))[:, None])
    return torch.stack(outs), torch.stack(vmax)


ATTENTION_CASES = [  # id: heads, kv_heads, head_dim, block_size, seq_lens, splits, strided q, tile
    ("mha-d64-b16", 4, 4, 64, 16, [1, 17, 40], 1, False, None),
    ("g6-d128-b16", 12, 2, 128, 16, [33, 1, 100], 3, True, None),
    ("g7-d64-b32", 7, 1, 64, 32, [70, 5, 1], 2, True, None),
    ("g6-more-splits-than-tiles", 6, 1, 64, 16, [50, 1], 16, False, None),
    ("g7-d128-b32-tile-spans-blocks", 14, 2, 128, 32, [130, 31], 2, True, attn.Tile(64, 4, 2)),
    ("mha-d128-b32-tile-in-block", 2, 2, 128, 32, [45, 96], 1, True, attn.Tile(16, 2, 2)),
    ("g6-d64-b16-many-splits-long", 6, 1, 64, 16, [700, 3], 9, False, attn.Tile(32, 4, 3)),
]
ATTN_DTYPES = [F16, BF16] if CUDA else [F16]


@pytest.mark.parametrize("dtype", ATTN_DTYPES)
@pytest.mark.parametrize("case", ATTENTION_CASES, ids=[c[0] for c in ATTENTION_CASES])
def test_decode_attention_is_within_two_roundings_of_the_fp64_truth(case, dtype):
    """Bound per output element: one rounding of |out| (the store) plus one rounding of max|V| (the
    probabilities are rounded to the dtype for P @ V), plus fp32 slack. Workspace and output start as NaN:
    a split that reads an unwritten partial, or a row left unwritten, fails."""
    _, heads, kv_heads, head_dim, block_size, seq_lens, splits, strided, tile = case
    g = torch.Generator().manual_seed(sum(seq_lens) + heads)
    k_cache, v_cache, tables = paged_kv(g, seq_lens, block_size, kv_heads, head_dim, dtype)
    seqs = len(seq_lens)
    qkv = randn(g, seqs, (heads + 2 * kv_heads) * head_dim, dtype=dtype)
    q = qkv[:, : heads * head_dim] if strided else qkv[:, : heads * head_dim].contiguous()
    lens = torch.tensor(seq_lens, dtype=torch.int32, device=DEVICE)
    scale = head_dim**-0.5
    nbytes = attn.workspace_bytes(seqs, heads, head_dim, splits)
    work = torch.full((max(1, nbytes // 4),), float("nan"), device=DEVICE)
    out = nan_like((seqs, heads * head_dim), dtype)
    assert attn.decode_attention(q, k_cache, v_cache, tables, lens, scale, splits, work, out, tile=tile) is out
    truth, vmax = attention_truth(q, k_cache, v_cache, tables, seq_lens, scale)
    got = out.double().view(seqs, heads, head_dim)
    r = rounding(dtype)
    bound = r * truth.abs() + (r + FP32) * vmax
    assert ((got - truth).abs() <= bound).all(), (got - truth).abs().max().item()


@pytest.mark.parametrize("splits", [1, 3])
def test_decode_attention_gives_zeros_for_an_empty_sequence_and_allocates_what_it_is_not_given(splits):
    """seq_len 0 (a padding row) -> zeros, not NaN; workspace and out allocated when None."""
    g = torch.Generator().manual_seed(splits)
    k_cache, v_cache, tables = paged_kv(g, [0, 9], 16, 2, 64, F16)
    q = randn(g, 2, 4 * 64, dtype=F16)
    lens = torch.tensor([0, 9], dtype=torch.int32, device=DEVICE)
    out = attn.decode_attention(q, k_cache, v_cache, tables, lens, 0.125, splits)
    truth, _ = attention_truth(q[1:], k_cache, v_cache, tables[1:], [9], 0.125)
    assert torch.equal(out[0], torch.zeros_like(out[0]))
    assert (out[1].double().view(4, 64) - truth[0]).abs().max() < 4e-3


def test_decode_attention_rejects_bad_arguments():
    g = torch.Generator().manual_seed(0)
    k_cache, v_cache, tables = paged_kv(g, [20], 16, 2, 64, F16)
    q = randn(g, 1, 4 * 64, dtype=F16)
    lens = torch.tensor([20], dtype=torch.int32, device=DEVICE)
    with pytest.raises(ValueError, match="^block_tables: dtype must be one of"):
        attn.decode_attention(q, k_cache, v_cache, tables.long(), lens, 0.125, 1)
    with pytest.raises(ValueError, match="^workspace: needs"):
        attn.decode_attention(q, k_cache, v_cache, tables, lens, 0.125, 2, torch.empty(8, device=DEVICE))
    with pytest.raises(ValueError, match="^q: row of 192 is not a multiple"):
        attn.decode_attention(q[:, :192], k_cache, v_cache, tables, lens, 0.125, 1)
    with pytest.raises(ValueError, match="^splits: must be an int >= 1"):
        attn.decode_attention(q, k_cache, v_cache, tables, lens, 0.125, 0)
    with pytest.raises(ValueError, match="^v_cache: expected dtype"):
        attn.decode_attention(q, k_cache, v_cache.float(), tables, lens, 0.125, 1)


def test_choose_splits_fills_the_gpu_but_keeps_splits_long():
    assert attn.choose_splits(1, 2, 100, 132) == 1  # too short to split
    assert attn.choose_splits(1, 2, 16384, 132) == attn.MAX_SPLITS
    assert attn.choose_splits(32, 2, 4096, 132) == math.ceil(attn.WAVES * 132 / 64)
    assert attn.choose_splits(256, 8, 32768, 132) == 1  # 2048 programs already
    assert attn.choose_splits(1, 2, 1024, 132) == 1024 // attn.MIN_SPLIT_POSITIONS
    assert attn.workspace_bytes(3, 12, 128, 1) == 0
    assert attn.workspace_bytes(3, 12, 128, 4) == 4 * 3 * 12 * 4 * 130


# ---- compiled for a GPU (without one) ----------------------------------------------------------------

def compile_for_sm90() -> dict[str, dict]:
    """Compile each kernel at its committed tile for the Qwen2-1.5B decode shapes (bf16, head_dim 128,
    12 heads / 2 KV heads, block 16) to an sm_90 cubin with Triton's own ptxas: no GPU needed, but the
    interpreter must be off (run in a subprocess). Pointer arguments are marked 16-byte aligned, as
    Triton specialises them at run time. -> {kernel: {"shared": bytes, "async_copies": count}}."""
    import re

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    def build(fn, types: dict[str, str], consts: dict, warps: int, aligned: tuple[str, ...] = ()) -> dict:
        names = list(types) + list(consts)
        attrs = {(names.index(a),): [["tt.divisibility", 16]] for a in names if a.endswith("_ptr") or a in aligned}
        src = ASTSource(fn=fn, signature={**types, **{k: "constexpr" for k in consts}}, constexprs=consts, attrs=attrs)
        kernel = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": warps})
        return {"shared": kernel.metadata.shared,
                "async_copies": len(re.findall("async_copy_global_to_local", kernel.asm["ttgir"]))}

    bf, i32, f32 = "*bf16", "i32", "fp32"
    t = attn.TILES[attn.shape_class(128)]
    decode_types = dict(q_ptr=bf, q_stride=i32, kc_ptr=bf, vc_ptr=bf, tables_ptr="*i32", table_stride=i32,
                        seq_lens_ptr="*i32", out_ptr=bf, acc_ptr="*fp32", m_ptr="*fp32", l_ptr="*fp32",
                        cnt_ptr="*i32", qk_scale=f32, splits=i32)
    decode = dict(H=12, KVH=2, GROUP=6, GROUP_PAD=16, D=128, BLOCK_SIZE=16, BLOCK_N=t.block_n, STAGES=t.stages)
    report = {f"decode_attention direct={direct}": build(attn._decode_kernel, decode_types, {**decode, "DIRECT": direct},
                                                         t.warps, ("q_stride",))
              for direct in (True, False)}
    r = rms.TILES[rms.shape_class(1, 1536)]
    report["rms_norm"] = build(rms._rms_norm_kernel, dict(x_ptr=bf, res_ptr=bf, w_ptr=bf, out_ptr=bf, rows=i32, dim=i32,
                                                          eps=f32), dict(HAS_RESIDUAL=True, ROWS=r.rows, BLOCK=2048),
                               r.warps)
    report["rotary_write_kv"] = build(
        rope_kv._rope_kv_kernel, dict(qkv_ptr=bf, row_stride=i32, pos_ptr="*i64", cos_ptr="*fp32", sin_ptr="*fp32",
                                      qw_ptr=bf, kw_ptr=bf, kc_ptr=bf, vc_ptr=bf, slot_ptr="*i32", eps=f32),
        dict(H=12, KVH=2, D=128, Q_NORM=True, K_NORM=True), rope_kv.TILES["default"].warps)
    a = activation.TILES["default"]
    report["silu_and_mul"] = build(activation._silu_and_mul_kernel, dict(x_ptr=bf, out_ptr=bf, inter=i32, x_stride=i32),
                                   dict(BLOCK=a.block), a.warps)
    return report


def test_kernels_compile_for_sm90_and_the_attention_gathers_are_pipelined(tmp_path):
    """What the interpreter cannot show: each kernel compiles for an H100/H200 at its committed tile, and
    the decode kernel's K/V gathers are asynchronous copies (software-pipelined, one tile ahead), which
    needs stages >= 3 (with 2 only the block-table load is pipelined). Shared memory within any GPU's."""
    import json
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path)  # compile afresh, and write nothing under the home directory
    code = "import json; from tests.test_triton_decode_kernels import compile_for_sm90; print(json.dumps(compile_for_sm90()))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(report) == {"decode_attention direct=True", "decode_attention direct=False", "rms_norm",
                           "rotary_write_kv", "silu_and_mul"}
    for direct in (True, False):
        kernel = report[f"decode_attention direct={direct}"]
        assert kernel["async_copies"] >= 6, kernel  # block ids, K and V: prologue and loop
    assert max(k["shared"] for k in report.values()) <= 48 * 1024, report


# ---- the GPU benchmark section ---------------------------------------------------------------------

def test_gpu_benchmark_section_plans_without_a_gpu():
    from benchmarks.gpu_sections import decode_kernels

    plan = decode_kernels.plan()
    kinds = {row["kernel"] for row in plan["measurements"]}
    assert {"rms_norm", "rotary_write_kv", "decode_attention", "tiles"} <= kinds
    attention = [row for row in plan["measurements"] if row["kernel"] == "decode_attention"]
    assert {(row["batch"], row["context"]) for row in attention} == {
        (1, 1024), (1, 16384), (32, 1024), (32, 4096), (128, 2048)}
