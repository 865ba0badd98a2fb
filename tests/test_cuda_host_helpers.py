"""The kernels' host-runnable arithmetic (csrc/cuda/host_device.cuh) against the Python references.

tests/cuda_host/host_helpers.cu calls the very __host__ __device__ functions the kernels call;
nvcc builds it here (no GPU needed) and each test feeds it vectors and compares:
- fp16/bf16 <-> fp32 conversions with torch's, bit for bit (ties to even, subnormals, overflow,
  infinities); a NaN must stay a NaN, its payload is free (CUDA gives 0x7fff, torch its own);
- the AWQ nibble order with pack_awq / unpack_awq, and the dequantisation of both AWQ kernels
  with dequantize_awq (fp32 bit for bit, and rounded to fp16 / bf16 as awq_gemm stores it);
- the merge of split-KV partials with full softmax attention over all the keys, and with a
  log-sum-exp merge in torch;
- the cache slot and element offset of a position with step_inputs' slot mapping and the cache
  tensor's own indexing.
Skipped without nvcc; a failing build is a failure.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from llm_infer.kernels.awq_torch import dequantize_awq, pack_awq, unpack_awq
from llm_infer.runtime.step_inputs import build_inputs

ROOT = Path(__file__).resolve().parents[1]
CSRC = ROOT / "llm_infer" / "kernels" / "csrc" / "cuda"
DRIVER = ROOT / "tests" / "cuda_host" / "host_helpers.cu"
NVCC = shutil.which("nvcc") or ("/usr/local/cuda/bin/nvcc" if Path("/usr/local/cuda/bin/nvcc").exists() else None)
pytestmark = [pytest.mark.skipif(NVCC is None, reason="nvcc is not installed here"),
              pytest.mark.slow]  # nvcc builds the host program

DTYPES = {"half": torch.float16, "bf16": torch.bfloat16}


@pytest.fixture(scope="module")
def helpers(tmp_path_factory: pytest.TempPathFactory):
    """Runs the driver: helpers(*args, numbers=...) -> its output numbers as int64."""
    exe = tmp_path_factory.mktemp("cuda_host") / "host_helpers"
    r = subprocess.run([NVCC, "-std=c++17", "-O2", "-Xcompiler", "-Wall", f"-I{CSRC}", str(DRIVER), "-o", str(exe)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"nvcc failed to build {DRIVER.name}:\n{r.stderr[-3000:]}"

    def run(*args, numbers) -> np.ndarray:
        stdin = " ".join(map(str, np.asarray(numbers, dtype=np.int64).ravel().tolist()))
        out = subprocess.run([str(exe), *map(str, args)], input=stdin, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        return np.array(out.stdout.split(), dtype=np.int64)

    return run


def f32_bits(x: torch.Tensor) -> np.ndarray:
    return x.float().contiguous().view(torch.int32).numpy().astype(np.int64) & 0xFFFFFFFF


def bits16(x: torch.Tensor) -> np.ndarray:
    return x.contiguous().view(torch.int16).numpy().astype(np.int64) & 0xFFFF


def f32_from_bits(bits) -> torch.Tensor:
    return torch.from_numpy(np.asarray(bits, dtype=np.int64).astype(np.uint32).view(np.int32)).view(torch.float32)


def assert_same_bits(got: np.ndarray, want: np.ndarray, is_nan: np.ndarray, what: str) -> None:
    """Bit for bit where the result is a number; both NaN where it is not."""
    bad = np.flatnonzero(~is_nan & (got != want))
    assert bad.size == 0, f"{what}: {bad.size} differ, first at {bad[0]}: got {got[bad[0]]:#x}, want {want[bad[0]]:#x}"


# ---- Conversions ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["half", "bf16"])
def test_every_16_bit_pattern_widens_to_f32_like_torch(helpers, kind):
    patterns = np.arange(1 << 16, dtype=np.int64)
    x = torch.from_numpy(patterns.astype(np.uint16).view(np.int16)).view(DTYPES[kind])
    got = helpers("to_f32", kind, numbers=patterns)
    is_nan = torch.isnan(x).numpy()
    assert np.isnan(f32_from_bits(got).numpy()[is_nan]).all()
    assert_same_bits(got, f32_bits(x), is_nan, f"{kind} -> f32")


def f32_edge_patterns() -> np.ndarray:
    """Zeros, infinities, NaNs, float subnormals, the fp16 overflow and subnormal boundaries, and
    exact ties (with their neighbours) at the rounding bit of both fp16 and bf16."""
    rng = np.random.default_rng(1)
    named = [0.0, -0.0, np.inf, -np.inf, 65504.0, 65519.0, 65520.0, -65520.0, 2.0**-24, 2.0**-25, 3 * 2.0**-26,
             2.0**-14, 2.0**-14 - 2.0**-25, 1.0 + 2.0**-8, 1.0 + 3 * 2.0**-8, 1.0 + 2.0**-11, 1.0 + 3 * 2.0**-11,
             np.finfo(np.float32).max, np.finfo(np.float32).tiny, 1e-45]
    bits = list(np.array(named, dtype=np.float32).view(np.uint32).astype(np.int64))
    bits += [0x7FC00000, 0xFFC00000, 0x7F800001, 0x7FBFFFFF, 0xFFFFFFFF, 0x00000001, 0x807FFFFF, 0x7F7F8000]
    high = rng.integers(0, 1 << 16, 4000, dtype=np.int64) << 16
    for low in (0x8000, 0x7FFF, 0x8001):  # bf16: exact ties and one ulp either side
        bits += list(high | low)
    half_range = rng.integers(0x33000000, 0x47800000, 4000, dtype=np.int64) & ~0x1FFF  # fp16 normals and subnormals
    for low in (0x1000, 0x0FFF, 0x1001):  # fp16 ties (for normals) and their neighbours
        bits += list(half_range | low)
    return np.array(bits, dtype=np.int64)


@pytest.mark.parametrize("kind", ["half", "bf16"])
def test_f32_rounds_to_16_bits_like_torch(helpers, kind):
    rng = np.random.default_rng(0)
    patterns = np.concatenate([f32_edge_patterns(), rng.integers(0, 1 << 32, 200_000, dtype=np.int64)])
    x = f32_from_bits(patterns)
    got = helpers("from_f32", kind, numbers=patterns)
    is_nan = torch.isnan(x).numpy()
    got_nan = torch.isnan(torch.from_numpy(got.astype(np.uint16).view(np.int16)).view(DTYPES[kind])).numpy()
    assert (got_nan == is_nan).all(), "NaN in, NaN out (and only then)"
    assert_same_bits(got, bits16(x.to(DTYPES[kind])), is_nan, f"f32 -> {kind}")


# ---- AWQ ------------------------------------------------------------------------------------------------


def test_awq_nibble_order_is_that_of_pack_awq(helpers):
    g = torch.Generator().manual_seed(2)
    q = torch.randint(0, 16, (64, 64), generator=g)
    q[0, :8] = torch.arange(8)  # distinct columns: any order mix-up shows
    q[1, :8] = 15
    packed = pack_awq(q)
    got = helpers("awq_columns", numbers=packed.numpy().astype(np.int64) & 0xFFFFFFFF).reshape(-1, 2, 8)
    want = unpack_awq(packed).reshape(-1, 8).numpy()
    assert (want == q.reshape(-1, 8).numpy()).all()
    assert (got[:, 0] == want).all(), "awq_column"
    assert (got[:, 1] == want).all(), "awq_nibble placed at awq_nibble_column"


@pytest.mark.parametrize("group", [64, 128])
def test_awq_dequantization_is_that_of_dequantize_awq(helpers, group):
    K, N = 256, 128
    g = torch.Generator().manual_seed(group)
    qweight = torch.randint(-(2**31), 2**31, (K, N // 8), generator=g, dtype=torch.int64).to(torch.int32)
    qzeros = torch.randint(-(2**31), 2**31, (K // group, N // 8), generator=g, dtype=torch.int64).to(torch.int32)
    scales = (torch.randn(K // group, N, generator=g) * torch.logspace(-6, 2, N)).to(torch.float16)
    scales[0, :4] = torch.tensor([0.0, -0.0, 6e-8, 65504.0])  # zero, fp16 subnormal, largest fp16
    got = helpers("awq_dequant", K, N, group,
                  numbers=np.concatenate([qweight.numpy().ravel().astype(np.int64) & 0xFFFFFFFF,
                                          qzeros.numpy().ravel().astype(np.int64) & 0xFFFFFFFF,
                                          bits16(scales).ravel()])).reshape(4, K, N)
    w = dequantize_awq(qweight, qzeros, scales, group).t()  # [K, N] fp32
    no_nan = np.zeros((K, N), dtype=bool)
    assert_same_bits(got[0], f32_bits(w), no_nan, "awq_gemm's fp32 weight")
    assert_same_bits(got[1], f32_bits(w), no_nan, "awq_gemv's fp32 weight (2^23 form)")
    assert_same_bits(got[2], bits16(w.to(torch.float16)), no_nan, "awq_gemm's fp16 weight")
    assert_same_bits(got[3], bits16(w.to(torch.bfloat16)), no_nan, "awq_gemm's bf16 weight")


# ---- Split-KV merge ------------------------------------------------------------------------------------


def split_partials(scores: torch.Tensor, v: torch.Tensor, splits: int, block_size: int):
    """The partials decode_partial_kernel writes: chunks of ceil(L / splits) positions rounded up
    to whole blocks; a chunk past the end is empty (max -inf, sum 0, output never written: NaN)."""
    L, D = v.shape
    chunk = -(-L // splits)
    chunk = -(-chunk // block_size) * block_size
    m = torch.full((splits,), -torch.inf)
    l = torch.zeros(splits)
    out = torch.full((splits, D), torch.nan)
    for s in range(splits):
        part = scores[s * chunk : min((s + 1) * chunk, L)]
        if part.numel():
            m[s] = part.max()
            p = torch.exp(part - m[s])
            l[s] = p.sum()
            out[s] = p @ v[s * chunk : s * chunk + part.numel()]
    return m, l, out


def lse_merge(m: torch.Tensor, l: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """Each non-empty partial's normalised output weighted by softmax over its log-sum-exp."""
    keep = l > 0
    lse = (m[keep] + torch.log(l[keep])).double()
    return torch.softmax(lse, 0) @ (out[keep].double() / l[keep, None].double())


@pytest.mark.parametrize("D", [64, 128])
@pytest.mark.parametrize(("seq_len", "splits", "block_size", "spread"), [
    (1, 1, 16, 1.0),      # one position, one split
    (37, 4, 16, 1.0),     # the last split empty (3 blocks of 16 cover 37)
    (300, 8, 16, 1.0),
    (300, 8, 16, 30.0),   # scores far apart: some splits' weights underflow to 0
    (300, 8, 16, 300.0),  # maxima more than 88 apart: exp overflows unless taken from the common max
    (5, 16, 1, 1.0),      # more splits than positions: most are empty
    (1000, 3, 32, 5.0),
])
def test_split_kv_merge_is_softmax_attention_over_all_keys(helpers, D, seq_len, splits, block_size, spread):
    g = torch.Generator().manual_seed(seq_len * D + splits)
    q, k, v = torch.randn(D, generator=g), torch.randn(seq_len, D, generator=g), torch.randn(seq_len, D, generator=g)
    scores = (k @ q) * spread / D**0.5
    m, l, out = split_partials(scores, v, splits, block_size)
    got = f32_from_bits(helpers("merge", D, splits, 1, numbers=np.concatenate([f32_bits(m), f32_bits(l),
                                                                             f32_bits(out).ravel()])))
    full = torch.softmax(scores.double(), 0) @ v.double()
    torch.testing.assert_close(got.double(), full, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got.double(), lse_merge(m, l, out), rtol=1e-5, atol=1e-6)


def test_split_kv_merge_of_only_empty_partials_is_zero(helpers):
    splits, D = 4, 64
    m, l, out = torch.full((splits,), -torch.inf), torch.zeros(splits), torch.full((splits, D), torch.nan)
    got = helpers("merge", D, splits, 1, numbers=np.concatenate([f32_bits(m), f32_bits(l), f32_bits(out).ravel()]))
    assert (got == 0).all()  # +0.0


# ---- Paged KV cache indices ----------------------------------------------------------------------------


@pytest.mark.parametrize(("block_size", "seed"), [(1, 0), (4, 1), (16, 2), (16, 3)])
def test_slot_and_cache_offset_match_step_inputs(helpers, block_size, seed):
    rng = np.random.default_rng(seed)
    kv_heads, head_dim, num_seqs = 2, 64, int(rng.integers(1, 9))
    seq_lens = rng.integers(1, 100, num_seqs).tolist()
    query_lens = [int(rng.integers(1, n + 1)) for n in seq_lens]
    query_lens[0] = seq_lens[0]  # a whole prompt: every position of the sequence
    needed = [-(-n // block_size) for n in seq_lens]
    num_blocks = sum(needed) + 7
    blocks = rng.permutation(num_blocks).tolist()  # distinct, scattered block ids
    tables = [[blocks.pop() for _ in range(n)] for n in needed]
    batch = SimpleNamespace(input_ids=[0] * sum(query_lens), query_lens=query_lens, seq_lens=seq_lens,
                            block_tables=tables)
    _, positions, meta = build_inputs(batch, block_size, SimpleNamespace(prepare=lambda meta: None),
                                      torch.device("cpu"))
    seq_of_token = np.repeat(np.arange(num_seqs), query_lens)
    kvh = rng.integers(0, kv_heads, len(seq_of_token))
    dim = rng.integers(0, head_dim, len(seq_of_token))
    queries = np.stack([seq_of_token, positions.numpy(), kvh, dim], axis=1)
    table_array = meta.block_tables
    got = helpers("paged", block_size, num_seqs, table_array.shape[1], kv_heads, head_dim,
                  numbers=np.concatenate([table_array.numpy().ravel(), [len(queries)], queries.ravel()])).reshape(-1, 2)
    slots = meta.slot_mapping.numpy()
    assert (got[:, 0] == slots).all()
    cache = torch.arange(num_blocks * block_size * kv_heads * head_dim).view(num_blocks, block_size, kv_heads, head_dim)
    want = cache[slots // block_size, slots % block_size, kvh, dim].numpy()
    assert (got[:, 1] == want).all()


def test_cache_offset_does_not_overflow_32_bits(helpers):
    block_size, kv_heads, head_dim, block = 16, 8, 128, 2**21  # offsets near 2^35
    got = helpers("paged", block_size, 1, 2, kv_heads, head_dim,
                  numbers=[0, block, 1, 0, 31, kv_heads - 1, head_dim - 1]).reshape(-1, 2)
    slot = block * block_size + 15
    assert got.tolist() == [[slot, (slot * kv_heads + kv_heads - 1) * head_dim + head_dim - 1]]
