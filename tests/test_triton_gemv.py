"""Triton dense GEMV (`llm_infer/kernels/triton/gemv.py`) against an fp32 truth.

Oracle: x.float() @ weight.float().T + bias (with gate_up: silu(gate) * up in fp32, rounded to
the dtype as the kernel rounds it, then the same product). Tolerance, relative to max|y|: the
rounding of y to the dtype (half an ulp, 2^-11 |y| for fp16 and 2^-8 for bf16; the interpreter
truncates fp32 -> bf16, a whole ulp: 2^-7) plus 2^-12 for fp32 summation order and exp.

On CPU the kernels run under Triton's interpreter, which computes a bf16 `tl.dot` as a matmul of
the raw uint16 bit patterns (triton 3.6 `interpreter.create_dot`): the tensor-core path (Tile.dot,
every M >= 2) is checked in fp16 only there, and in both dtypes on CUDA. bf16 loads, stores, casts
and the M = 1 FMA path work in the interpreter and are checked in bf16 everywhere.
"""

from __future__ import annotations


import pytest
import torch
import torch.nn.functional as F

from llm_infer.kernels import torch_ref
from llm_infer.kernels.triton import gemv as G
from llm_infer.kernels.triton.gemv import Tile, gemv

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
F16, BF16 = torch.float16, torch.bfloat16


UNFUSED = 1.5  # x tolerance() against the unfused activation: at most 0.9 seen over 12 seeds


def tolerance(dtype: torch.dtype) -> float:
    rounding = 2.0**-11 if dtype == F16 else (2.0**-8 if CUDA else 2.0**-7)
    return rounding + 2.0**-12


def round_like_kernel(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """fp32 -> dtype -> fp32 as the kernel rounds: to nearest, except bf16 in the interpreter (truncation)."""
    if dtype == BF16 and not CUDA:
        return (t.float().contiguous().view(torch.int32) & -65536).view(torch.float32)
    return t.to(dtype).float()


def case(M, N, K, dtype, *, bias=True, gate_up=False, seed=0, row_pad=0, col_offset=0):
    """Seeded inputs on DEVICE; x is a view into a wider buffer when row_pad/col_offset are given."""
    g = torch.Generator().manual_seed(seed)
    width = 2 * K if gate_up else K
    buf = torch.randn(M, col_offset + width + row_pad, generator=g)
    w = torch.randn(N, K, generator=g) / K**0.5
    b = torch.randn(N, generator=g) if bias else None
    x = buf.to(DEVICE, dtype)[:, col_offset:col_offset + width]
    return x, w.to(DEVICE, dtype), (b.to(DEVICE, dtype) if bias else None)


def truth(x, w, b, gate_up=False):
    h = x.float()
    if gate_up:
        K = w.shape[1]
        h = round_like_kernel(F.silu(h[:, :K]) * h[:, K:], x.dtype)
    y = h @ w.float().T
    return y + b.float() if b is not None else y


def poisoned(M, N, dtype):
    return torch.full((M, N), float("nan"), dtype=dtype, device=DEVICE)


def assert_close(y, ref, dtype):
    assert not y.isnan().any(), "output not fully written"
    scale = ref.abs().max().item()
    err = (y.float() - ref).abs().max().item()
    assert err <= tolerance(dtype) * scale, f"max err {err:.3g} > {tolerance(dtype):.3g} x max|y| {scale:.3g}"


def dtypes_for(tile: Tile):
    return [F16, BF16] if (CUDA or not tile.dot) else [F16]


# (M, N, K, tile): N and K off the tile sizes; split-K 1, uneven, more splits asked than K slabs
# (evened out to one slab each), and past 4 (the partials are summed four loads at a time);
# the FMA path (M = 1) and the tensor-core path at M = 1 and above.
CASES = [
    (1, 37, 100, Tile(16, 32, 1)),
    (1, 50, 200, Tile(8, 64, 3)),  # 4 K slabs asked in 3 splits: launched as 2 of 2
    (1, 24, 600, Tile(8, 32, 16)),  # 19 K slabs: 10 splits of 2 (the last of 1)
    (1, 37, 100, Tile(16, 32, 3, dot=True)),  # x padded to 16 rows
    (3, 37, 100, Tile(16, 32, 2, dot=True)),
    (7, 40, 70, Tile(16, 32, 8, dot=True)),  # 8 splits asked, 3 K slabs
    (3, 20, 900, Tile(16, 64, 16, dot=True)),  # 15 splits
    (16, 33, 96, Tile(32, 16, 4, dot=True)),
    (2, 24, 40, Tile(16, 16, 1, dot=True)),
]
PARAMS = [pytest.param(*c, d, id=f"M{c[0]}-N{c[1]}-K{c[2]}-{c[3].block_n}x{c[3].block_k}x{c[3].split_k}"
                       f"{'-dot' if c[3].dot else ''}-{str(d)[6:]}") for c in CASES for d in dtypes_for(c[3])]


@pytest.mark.parametrize("M,N,K,tile,dtype", PARAMS)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_matches_fp32_truth(M, N, K, tile, dtype, bias):
    x, w, b = case(M, N, K, dtype, bias=bias)
    y = gemv(x, w, b, out=poisoned(M, N, dtype), tile=tile)
    assert_close(y, truth(x, w, b), dtype)


@pytest.mark.parametrize("M,N,K,tile,dtype", [p for p in PARAMS if p.values[0] in (1, 7)])
def test_gate_up_fuses_swiglu_into_the_down_projection(M, N, K, tile, dtype):
    x, w, b = case(M, N, K, dtype, gate_up=True, row_pad=24, seed=1)
    y = gemv(x, w, b, gate_up=True, out=poisoned(M, N, dtype), tile=tile)
    assert_close(y, truth(x, w, b, gate_up=True), dtype)
    # ... and the activation of the unfused path it replaces (silu and the product each rounded to
    # the dtype), multiplied in fp32: one more rounding of the activation apart
    unfused = torch_ref.linear(torch_ref.silu_and_mul(x).float(), w.float(), b.float())
    assert (y.float() - unfused).abs().max() <= UNFUSED * tolerance(dtype) * unfused.abs().max()


@pytest.mark.parametrize("dtype", [F16, BF16])
def test_strided_unaligned_x_and_a_fresh_output(dtype):
    M = 5 if dtype == F16 or CUDA else 1  # default tiles: the dot path from M = 2 (no bf16 dot on CPU)
    x, w, b = case(M, 45, 130, dtype, row_pad=13, col_offset=3)
    assert x.stride(0) == 146 and x.data_ptr() % 16 != 0
    y = gemv(x, w, b)  # the default tile, a new output tensor
    assert y.shape == (M, 45) and y.dtype == dtype
    assert_close(y, truth(x, w, b), dtype)


def test_split_k_leaves_counters_at_zero_and_is_deterministic():
    tile = Tile(16, 32, 4, dot=True)
    x1, w, b = case(2, 70, 300, F16, seed=2)
    x2, _, _ = case(2, 70, 300, F16, seed=3)
    first = gemv(x1, w, b, out=poisoned(2, 70, F16), tile=tile)
    counters = [t for k, t in G._BUFFERS.items() if k[0] == "counters" and k[1] == first.device.type]
    assert counters and all(int(t.abs().sum()) == 0 for t in counters)
    second = gemv(x2, w, b, out=poisoned(2, 70, F16), tile=tile)  # a stale counter would skip or double the sum
    assert_close(second, truth(x2, w, b), F16)
    again = gemv(x1, w, b, out=poisoned(2, 70, F16), tile=tile)
    assert torch.equal(first.view(torch.int16), again.view(torch.int16))


@pytest.mark.parametrize("M", [1, 2])
def test_every_candidate_computes_the_same_product(M):
    N, K = 40, 300
    x, w, b = case(M, N, K, F16, seed=4)
    ref = truth(x, w, b)
    tiles = G.candidates(M, N, K)
    assert tiles[0] == G.default_tile(M, N, K) and len(set(tiles)) == len(tiles)
    assert {t.dot for t in tiles} == ({True, False} if M == 1 else {True})
    for tile in tiles:
        assert_close(gemv(x, w, b, out=poisoned(M, N, F16), tile=tile), ref, F16)


QWEN_SHAPES = [(1536, 2048), (1536, 1536), (1536, 17920), (8960, 1536), (1536, 151936),
               (3584, 4608), (3584, 3584), (3584, 37888), (18944, 3584)]  # (K, N)


@pytest.mark.parametrize("M", [1, 2, 4, 8, 16])
def test_tiles_and_candidates_are_valid_for_the_qwen_shapes(M):
    for K, N in QWEN_SHAPES:
        for tile in [G.tile_for(M, N, K), *G.candidates(M, N, K)]:
            for size in (tile.block_n, tile.block_k):
                assert size & (size - 1) == 0
            assert 1 <= tile.split_k <= max(1, -(-K // tile.block_k))
            assert tile.dot or M == 1
            assert not tile.dot or (tile.block_n >= 16 and tile.block_k >= 16)
        n_tiles, splits, _ = G.grid(N, K, G.tile_for(M, N, K))
        assert n_tiles * splits >= 256, "the default launch should give a 132-SM GPU two programs per SM"


def test_bad_arguments_name_the_argument():
    x, w, b = case(2, 24, 40, F16)
    bad = [
        (dict(x=x.float()), "x:"),
        (dict(x=torch.zeros(17, 40, dtype=F16, device=DEVICE)), "x:"),
        (dict(x=x[:, :39]), "x:"),
        (dict(x=x, gate_up=True), "x:"),
        (dict(x=x.t().contiguous().t()), "x:"),
        (dict(weight=w.to(BF16)), "weight:"),
        (dict(weight=w.t().contiguous().t()), "weight:"),
        (dict(bias=b[:10]), "bias:"),
        (dict(out=torch.empty(2, 25, dtype=F16, device=DEVICE)), "out:"),
        (dict(tile=Tile(8, 32, 1, dot=True)), "tile:"),
        (dict(tile=Tile(16, 32, 1)), "tile:"),  # the FMA path at M = 2
    ]
    for change, message in bad:
        args = dict(x=x, weight=w, bias=b) | change
        with pytest.raises(ValueError, match=message):
            gemv(**args)


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_cuda_graph_replays_split_k_and_refuses_a_cold_workspace(monkeypatch):
    monkeypatch.setattr(G, "_BUFFERS", {})  # nothing warmed up yet
    tile = Tile(16, 64, 8, dot=True)
    x, w, b = case(3, 96, 1000, BF16, seed=5)
    out = poisoned(3, 96, BF16)
    with pytest.raises(RuntimeError, match="capture"), torch.cuda.graph(torch.cuda.CUDAGraph()):
        gemv(x, w, b, out=out, tile=tile)  # would allocate the workspace inside the graph
    gemv(x, w, b, out=out, tile=tile)  # the warm-up outside capture allocates it
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(3):  # each call must leave the counters at zero for the next
            gemv(x, w, b, out=out, tile=tile)
    for seed in (6, 7):
        x.copy_(case(3, 96, 1000, BF16, seed=seed)[0])
        out.fill_(float("nan"))
        graph.replay()
        torch.cuda.synchronize()
        assert_close(out, truth(x, w, b), BF16)


def test_benchmark_plan_lists_every_shape_and_batch_without_cuda():
    from benchmarks.gpu_sections import gemv as section

    plan = section.plan()
    shapes = {(s["k"], s["n"]) for s in plan["shapes"]}
    assert shapes == set(QWEN_SHAPES) and plan["m"] == [1, 2, 4, 8, 16]
    assert plan["candidates"] >= len(plan["shapes"]) * len(plan["m"])
    assert {f["shape"] for f in plan["fused_gate_up_down"]} == {"qwen2-1.5b down", "qwen2.5-7b down"}


def test_benchmark_run_logic_on_cpu_with_a_fake_timer(monkeypatch):
    """run() end to end on two tiny shapes at M = 1 (fp16; on CPU under the interpreter), each
    timing replaced by one call: a row per shape, the fused row, and a TILES line per swept class."""
    from benchmarks.gpu_sections import gemv as section

    shapes = [("tiny qkv", 64, 48, True), ("tiny down", 96, 40, False)]
    for name, value in dict(SHAPES=shapes, MS=[1], SWEEP_ORDER=[1], DTYPE=F16, DEVICE=DEVICE).items():
        monkeypatch.setattr(section, name, value)
    monkeypatch.setattr(section, "graph_time", lambda call, copies: (call(0), 1e-6)[1])
    monkeypatch.setattr(G, "candidates", lambda M, N, K: [G.default_tile(M, N, K), Tile(16, 32, 2, dot=True)])
    report = section.run(peak_bytes_per_s=4e12, budget_s=600)
    assert [r["shape"] for r in report["rows"]] == ["tiny qkv", "tiny down"]
    assert all(r["rel_err"] <= section.CHECK_TOL and r["repeatable"] for r in report["rows"] + report["fused"])
    assert [r["shape"] for r in report["fused"]] == ["tiny down"]
    assert [tuple(e["class"]) for e in report["sweep"]] == [(1, 64, 64), (1, 64, 128)]
    assert len(report["tiles_py"]) == 2 and all(line.startswith("(1, 64, ") for line in report["tiles_py"])
    assert not report["skipped"]
