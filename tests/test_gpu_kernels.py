"""Each CUDA kernel against its torch reference on random data (`pytest -m gpu`; skipped without CUDA)."""

from __future__ import annotations

import pytest
import torch

from llm_infer.kernels.attention_metadata import AttentionMetadata, query_start_loc
from llm_infer.kernels.attention_torch import TorchAttentionBackend
from llm_infer.kernels.awq_torch import dequantize_awq, pack_awq
from llm_infer.kernels import torch_ref

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]
DTYPES = [torch.float16, torch.bfloat16]


@pytest.fixture(scope="module")
def ext():
    from llm_infer.kernels.cuda_extension import load_cuda_extension

    module = load_cuda_extension()
    assert module is not None, "the CUDA kernels must build on a GPU machine"
    return module


def paged_case(q_lens, seq_lens, heads, kv_heads, head_dim, block_size, dtype, seed=0):
    """Random paged cache and queries, with shuffled block tables."""
    g = torch.Generator().manual_seed(seed)
    per_seq = [-(-s // block_size) for s in seq_lens]
    num_blocks = sum(per_seq) + 4
    perm = torch.randperm(num_blocks, generator=g)
    width = max(per_seq)
    tables = torch.zeros(len(seq_lens), width, dtype=torch.int64)
    offset = 0
    for i, n in enumerate(per_seq):
        tables[i, :n] = perm[offset : offset + n]
        offset += n
    dev = "cuda"
    k_cache = torch.randn(num_blocks, block_size, kv_heads, head_dim, generator=g).to(dev, dtype)
    v_cache = torch.randn(num_blocks, block_size, kv_heads, head_dim, generator=g).to(dev, dtype)
    q = torch.randn(sum(q_lens), heads * head_dim, generator=g).to(dev, dtype)
    positions = torch.cat([torch.arange(s - n, s) for n, s in zip(q_lens, seq_lens)])
    seq_of = torch.repeat_interleave(torch.arange(len(q_lens)), torch.tensor(q_lens))
    slots = tables[seq_of, positions // block_size] * block_size + positions % block_size
    starts = torch.tensor([0] + q_lens[:-1]).cumsum(0)
    meta = AttentionMetadata(list(q_lens), list(seq_lens), query_start_loc(list(q_lens)), slots.to(dev), tables.to(dev), block_size, None)
    int32 = dict(dtype=torch.int32, device=dev)
    dev_meta = (tables.to(**int32), starts.to(**int32), torch.tensor(q_lens, **int32), torch.tensor(seq_lens, **int32))
    return q, k_cache, v_cache, meta, dev_meta


def reference_attention(q, k_cache, v_cache, meta, heads, head_dim):
    ref = TorchAttentionBackend()
    meta.backend = ref
    ref.prepare(meta)
    # fp32 reference on the same (rounded) inputs
    return ref.attend(q.float(), q.float(), q.float(), k_cache.float(), v_cache.float(), meta, head_dim**-0.5, heads)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("heads,kv_heads", [(8, 8), (8, 4), (14, 2), (32, 4)])  # GQA ratios 1, 2, 7, 8
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("block_size", [16, 32])
def test_decode_attention(ext, dtype, heads, kv_heads, head_dim, block_size):
    q_lens = [1, 1, 1, 5, 16, 1]
    seq_lens = [1, 17, 300, 40, 1100, 4500]  # ragged, including 1 and > 4096
    q, kc, vc, meta, (bt, qs, ql, sl) = paged_case(q_lens, seq_lens, heads, kv_heads, head_dim, block_size, dtype)
    splits = max(1, -(-max(seq_lens) // 512))
    work = torch.empty(ext.decode_workspace_bytes(len(q_lens), 16, heads, head_dim, splits), dtype=torch.uint8,
                       device="cuda")
    out = torch.empty(q.shape[0], heads * head_dim, dtype=dtype, device="cuda")
    ext.decode_attention(out, q, kc, vc, bt, qs, ql, sl, head_dim**-0.5, 16, splits, work)
    want = reference_attention(q, kc, vc, meta, heads, head_dim)
    torch.testing.assert_close(out.float(), want, atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("heads,kv_heads", [(8, 8), (8, 4), (14, 2), (32, 4)])
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("block_size", [16, 32])
def test_prefill_attention(ext, dtype, heads, kv_heads, head_dim, block_size):
    q_lens = [1, 37, 128, 300, 17]
    seq_lens = [1, 37, 200, 300, 4200]  # whole prompts, and prompts extending a cached prefix
    q, kc, vc, meta, (bt, qs, ql, sl) = paged_case(q_lens, seq_lens, heads, kv_heads, head_dim, block_size, dtype)
    out = torch.empty(q.shape[0], heads * head_dim, dtype=dtype, device="cuda")
    ext.prefill_attention(out, q, kc, vc, bt, qs, ql, sl, head_dim**-0.5, max(q_lens))
    # the reference reads fresh K/V for whole prompts: give it the cache's rows for those tokens
    ref = TorchAttentionBackend()
    meta.backend = ref
    ref.prepare(meta)
    flat_k = kc.float().view(-1, kv_heads * head_dim)[meta.slot_mapping]
    flat_v = vc.float().view(-1, kv_heads * head_dim)[meta.slot_mapping]
    want = ref.attend(q.float(), flat_k, flat_v, kc.float(), vc.float(), meta, head_dim**-0.5, heads)
    torch.testing.assert_close(out.float(), want, atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize("dtype", DTYPES)
def test_write_kv_cache(ext, dtype):
    kv_heads, head_dim, block_size = 4, 64, 16
    kc = torch.zeros(8, block_size, kv_heads, head_dim, dtype=dtype, device="cuda")
    vc = torch.zeros_like(kc)
    qkv = torch.randn(5, 3 * kv_heads * head_dim, dtype=dtype, device="cuda")
    k, v = qkv[:, : kv_heads * head_dim], qkv[:, kv_heads * head_dim : 2 * kv_heads * head_dim]
    slots = torch.tensor([3, 17, -1, 127, 0], dtype=torch.int32, device="cuda")
    ext.write_kv(k, v, kc, vc, slots)
    flat_k, flat_v = kc.view(-1, kv_heads * head_dim), vc.view(-1, kv_heads * head_dim)
    keep = slots >= 0
    assert torch.equal(flat_k[slots[keep].long()], k[keep]) and torch.equal(flat_v[slots[keep].long()], v[keep])
    assert int((flat_k.abs().sum(-1) > 0).sum()) == int(keep.sum())


def random_awq(k: int, n: int, group: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    qweight = pack_awq(torch.randint(0, 16, (k, n), generator=g))
    qzeros = pack_awq(torch.randint(0, 16, (k // group, n), generator=g))
    scales = (torch.rand(k // group, n, generator=g) * 0.01 + 0.001).half()
    return qweight.cuda(), qzeros.cuda(), scales.cuda()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m", [1, 2, 3, 8, 9, 16, 64, 100, 512])
@pytest.mark.parametrize("k,n,group", [(896, 4864, 128), (4864, 896, 128), (1536, 256, 64)])
def test_awq_linear(ext, dtype, m, k, n, group):
    qweight, qzeros, scales = random_awq(k, n, group, seed=m)
    x = torch.randn(m, k, device="cuda").to(dtype)
    bias = torch.randn(n, device="cuda").to(dtype)
    got = ext.awq_linear(x, qweight, qzeros, scales, group, bias).float()
    want = x.float() @ dequantize_awq(qweight, qzeros, scales, group).t() + bias.float()
    torch.testing.assert_close(got, want, atol=2e-2 * want.abs().max(), rtol=0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("with_residual", [False, True])
def test_fused_add_rms_norm(ext, dtype, with_residual):
    x = torch.randn(33, 896, device="cuda").to(dtype)
    res = torch.randn(33, 896, device="cuda").to(dtype)
    w = (torch.rand(896, device="cuda") + 0.5).to(dtype)
    if with_residual:
        want_out, want_res = torch_ref.add_rms_norm(x, res, w, 1e-6)
        res2 = res.clone()
        out = ext.rms_norm(x, res2, w, 1e-6)
        torch.testing.assert_close(res2, want_res)
    else:
        want_out = torch_ref.rms_norm(x, w, 1e-6)
        out = ext.rms_norm(x, None, w, 1e-6)
    torch.testing.assert_close(out.float(), want_out.float(), atol=2e-2, rtol=2e-2)
