"""Each C++ CPU kernel against its torch reference, on seeded random data across shapes, once per
build variant this CPU runs (`cpu_ext`: native, and the AVX2 build on an AVX-512 CPU)."""

from __future__ import annotations

import pytest
import torch

from llm_infer.kernels import torch_ref
from llm_infer.kernels.attention_metadata import AttentionMetadata, query_start_loc
from llm_infer.kernels.attention_torch import TorchAttentionBackend

DTYPES = [torch.float32, torch.bfloat16]
TOL = {torch.float32: dict(atol=1e-5, rtol=1e-5), torch.bfloat16: dict(atol=2e-2, rtol=2e-2)}


@pytest.fixture
def ext(cpu_ext):
    return cpu_ext


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m", [1, 2, 3, 5, 8, 12, 48, 49, 129])
@pytest.mark.parametrize("n,k", [(96, 64), (37, 50), (1000, 576)])
@pytest.mark.parametrize("bias", [False, True])
def test_linear_matches_torch(dtype, m, n, k, bias, ext):
    g = torch.Generator().manual_seed(m * 1000 + n + k)
    x = torch.randn(m, k, generator=g).to(dtype)
    w = torch.randn(n, k, generator=g).to(dtype)
    b = torch.randn(n, generator=g).to(dtype) if bias else None
    expected = torch.nn.functional.linear(x.float(), w.float(), None if b is None else b.float())
    torch.testing.assert_close(ext.linear(x, w, b).float(), expected, atol=k * 2e-3 if dtype == torch.bfloat16 else 1e-3,
                               rtol=2e-2)


def test_a_bias_of_the_wrong_length_is_refused(ext):
    g = torch.Generator().manual_seed(30)
    w, x = torch.randn(30, 16, generator=g), torch.randn(3, 16, generator=g)
    for op in (ext.linear, ext.linear_invariant):
        with pytest.raises(RuntimeError, match="bias has 5 values for 30 outputs"):
            op(x, w, torch.randn(5, generator=g))


@pytest.mark.parametrize("dtype,op", [(torch.bfloat16, "linear_bf16"), (torch.float32, "linear_fp32")])
def test_linear_dispatch_tiles_up_to_a_row_count_then_onednn(dtype, op, ext):
    """The one dispatch point: up to the build's row limit our tiles (bitwise what deterministic
    mode's `linear_invariant` computes), above that oneDNN (`F.linear`, bitwise)."""
    most = ext.row_limits()[op]
    g = torch.Generator().manual_seed(5)
    w, b = torch.randn(200, 96, generator=g).to(dtype), torch.randn(200, generator=g).to(dtype)
    for m in (1, 8, 9, 20, most, most + 1, 2 * most):
        x = torch.randn(m, 96, generator=g).to(dtype)
        want = ext.linear_invariant(x, w, b) if m <= most else torch.nn.functional.linear(x, w, b)
        assert torch.equal(ext.linear(x, w, b), want), m


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,k", [(37, 50), (1000, 576)])
def test_int8_linear_matches_torch_and_rows_do_not_depend_on_the_batch(dtype, n, k, ext):
    """The int8 head kernel (streamed tiles up to the build's row limit, dequantise + oneDNN
    above) against `torch_ref.int8_linear`; within the tiles a row's bits are the same alone or in
    any batch. The limit itself is crossed on the small shape only (it is up to 2048 rows)."""
    most = ext.row_limits()["int8_linear"]
    g = torch.Generator().manual_seed(n + k)
    w = torch.randint(-127, 128, (n, k), dtype=torch.int8, generator=g)
    scales = torch.rand(n, generator=g) * 0.02
    rows = (1, 3, 4, 5, 9, 17) + ((most, most + 1) if n * k < 10_000 else ())
    x = torch.randn(max(rows), k, generator=g).to(dtype)
    alone = ext.int8_linear(x[:1], w, scales)
    for m in rows:
        got = ext.int8_linear(x[:m], w, scales)
        want = torch.nn.functional.linear(x[:m].float(), w.float() * scales[:, None])
        torch.testing.assert_close(got.float(), want, atol=k * 2e-3 if dtype == torch.bfloat16 else 1e-4, rtol=2e-2)
        if m <= most:
            assert torch.equal(got[:1], alone), m


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows,dim", [(1, 64), (7, 576), (33, 100)])
def test_rms_norm_and_fused_residual(dtype, rows, dim, ext):
    """The residual sum is rounded once, to nearest even, as torch's own add: bitwise the same."""
    g = torch.Generator().manual_seed(rows * 1000 + dim)
    x = torch.randn(rows, dim, generator=g).to(dtype)
    res = torch.randn(rows, dim, generator=g).to(dtype)
    w = (torch.rand(dim, generator=g) + 0.5).to(dtype)
    torch.testing.assert_close(ext.rms_norm(x, w, 1e-6), torch_ref.rms_norm(x, w, 1e-6), **TOL[dtype])
    want_out, want_res = torch_ref.add_rms_norm(x, res, w, 1e-6)
    x2, res2 = x.clone(), res.clone()
    out = ext.add_rms_norm_(x2, res2, w, 1e-6)
    assert torch.equal(res2, want_res)
    torch.testing.assert_close(out, want_out, **TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("head_dim", [64, 128, 36])
def test_rotary_in_place(dtype, head_dim, ext):
    tokens, heads, extra = 5, 3, 2
    g = torch.Generator().manual_seed(head_dim)
    x = torch.randn(tokens, (heads + extra) * head_dim, generator=g).to(dtype)
    positions = torch.tensor([0, 3, 7, 100, 2])
    inv = 1.0 / (10000 ** (torch.arange(0, head_dim, 2).float() / head_dim))
    emb = torch.cat([torch.arange(128).float()[:, None] * inv] * 2, dim=-1)
    cos, sin = emb.cos().contiguous(), emb.sin().contiguous()
    want = x.clone()
    torch_ref.rotary_(want, positions, cos, sin, heads, head_dim)
    got = x.clone()
    ext.rotary_(got, positions, cos, sin, heads, head_dim)
    torch.testing.assert_close(got, want, **TOL[dtype])
    assert torch.equal(got[:, heads * head_dim :], x[:, heads * head_dim :]), "heads past rot_heads must not move"


@pytest.mark.parametrize("dtype", DTYPES)
def test_silu_and_mul(dtype, ext):
    g = torch.Generator().manual_seed(9)
    x = (torch.randn(9, 2 * 300, generator=g) * 4).to(dtype)
    torch.testing.assert_close(ext.silu_and_mul(x), torch_ref.silu_and_mul(x), **TOL[dtype])


def _paged_case(q_lens, seq_lens, heads, kv_heads, head_dim, block_size, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    blocks_needed = sum(-(-s // block_size) for s in seq_lens)
    num_blocks = blocks_needed + 3
    perm = torch.randperm(num_blocks, generator=g).tolist()
    tables, offset = [], 0
    for s in seq_lens:
        n = -(-s // block_size)
        tables.append(perm[offset : offset + n])
        offset += n
    width = max(len(t) for t in tables)
    bt = torch.zeros(len(tables), width, dtype=torch.int64)
    for i, t in enumerate(tables):
        bt[i, : len(t)] = torch.tensor(t)
    k_cache = torch.randn(num_blocks, block_size, kv_heads, head_dim, generator=g).to(dtype)
    v_cache = torch.randn(num_blocks, block_size, kv_heads, head_dim, generator=g).to(dtype)
    tokens = sum(q_lens)
    q = torch.randn(tokens, heads * head_dim, generator=g).to(dtype)
    positions = torch.cat([torch.arange(s - n, s) for n, s in zip(q_lens, seq_lens)])
    seq_of = torch.repeat_interleave(torch.arange(len(q_lens)), torch.tensor(q_lens))
    slots = bt[seq_of, positions // block_size] * block_size + positions % block_size
    meta = AttentionMetadata(list(q_lens), list(seq_lens), query_start_loc(list(q_lens)), slots, bt, block_size, None)
    return q, k_cache, v_cache, meta


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("heads,kv_heads", [(4, 4), (4, 2), (14, 2), (8, 1)])
@pytest.mark.parametrize("head_dim,block_size", [(64, 16), (128, 32), (64, 4)])
def test_paged_attention_matches_reference(dtype, heads, kv_heads, head_dim, block_size, ext):
    q_lens, seq_lens = [1, 1, 5, 16, 1], [1, 37, 9, 40, 300]
    q, kc, vc, meta = _paged_case(q_lens, seq_lens, heads, kv_heads, head_dim, block_size, dtype)
    ref = TorchAttentionBackend()
    meta.backend = ref
    ref.prepare(meta)
    k = v = torch.empty(0)  # short queries read only the cache
    want = ref.attend(q, k, v, kc, vc, meta, head_dim**-0.5, heads)
    starts = torch.tensor([0, 1, 2, 7, 23])
    got = torch.full((q.shape[0], heads, head_dim), float("nan"), dtype=dtype)
    ext.paged_attention(got, q, kc, vc, meta.block_tables, starts, torch.tensor(q_lens), torch.tensor(seq_lens),
                        head_dim**-0.5)
    torch.testing.assert_close(got.view_as(want), want, **TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
def test_fixed_chunk_attention_rows_do_not_depend_on_the_batch_on_this_path(dtype, ext):
    """Deterministic mode (fixed KV chunks) on this build's own path: a row's bits are the same
    in its sequence's 40 query rows (a verification or prefill chunk), alone (decode), and
    between other sequences; the row lengths end inside and at the edge of 8-key groups, and with
    4 heads per KV head the kernel's blocks of 3 rows mix query rows of different lengths."""
    heads, kv_heads, head_dim = 8, 2, 64
    q, kc, vc, meta = _paged_case([40, 3, 1], [300, 77, 5], heads, kv_heads, head_dim, 16, dtype, seed=3)

    def attend(parts: list[tuple[int, int, int, int]]) -> torch.Tensor:  # (sequence, first q row, rows, length)
        rows = torch.cat([q[first : first + n] for _, first, n, _ in parts])
        out = torch.zeros(rows.shape[0], heads, head_dim, dtype=dtype)
        lens = [n for _, _, n, _ in parts]
        starts = torch.tensor([sum(lens[:i]) for i in range(len(parts))])
        ext.paged_attention(out, rows, kc, vc, meta.block_tables[[p[0] for p in parts]].contiguous(), starts,
                            torch.tensor(lens), torch.tensor([p[3] for p in parts]), head_dim**-0.5, 64)
        return out

    whole = attend([(0, 0, 40, 300)])
    alone = torch.cat([attend([(0, i, 1, 261 + i)]) for i in range(40)])
    between = attend([(1, 40, 3, 77), (0, 0, 40, 300), (2, 43, 1, 5)])[3:43]
    assert torch.equal(whole, alone) and torch.equal(whole, between)


@pytest.mark.parametrize("dtype", DTYPES)
def test_write_kv_scatters_rows(dtype, ext):
    kv_heads, head_dim, block_size = 2, 8, 4
    k_cache = torch.zeros(6, block_size, kv_heads, head_dim, dtype=dtype)
    v_cache = torch.zeros_like(k_cache)
    qkv = torch.randn(3, 4 * kv_heads * head_dim, generator=torch.Generator().manual_seed(3)).to(dtype)
    k, v = qkv[:, : kv_heads * head_dim], qkv[:, 2 * kv_heads * head_dim : 3 * kv_heads * head_dim]
    slots = torch.tensor([5, 17, 0])
    ext.write_kv(k, v, k_cache, v_cache, slots)
    flat_k, flat_v = k_cache.view(-1, kv_heads * head_dim), v_cache.view(-1, kv_heads * head_dim)
    assert torch.equal(flat_k[slots], k) and torch.equal(flat_v[slots], v)
    assert flat_k.abs().sum(-1).nonzero().flatten().tolist() == [0, 5, 17]


def test_a_lock_left_by_an_interrupted_build_does_not_hang_the_next_run():
    import subprocess
    import sys

    from llm_infer.kernels.cpu_extension import build_path

    lock = build_path() / "lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    lock.touch()  # what a killed compiler leaves behind
    code = "from llm_infer.kernels.cpu_extension import load_cpu_extension as l; assert l() is not None"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)
    assert not lock.exists()
