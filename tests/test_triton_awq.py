"""Triton AWQ int4 kernels (`llm_infer/kernels/triton/awq_*.py`: GEMV, GEMM, MoE) against the dequantized reference.

Oracle: W = `awq_torch.dequantize_awq` in fp32, y = x.float() @ W.T (+ bias). The GEMV (both
modes) and the unscaled GEMM multiply the exact q - z and scale each group's sum in fp32, so they
meet this oracle within the rounding of y to the dtype; the scaled GEMM rounds every weight to x's
dtype first, as `awq_linear_ref` does, and is held to the same oracle with W rounded likewise.
Tolerance, relative to max|y|: half an ulp of the dtype (2^-11 fp16, 2^-8 bf16; the interpreter
truncates fp32 -> bf16, a whole ulp: 2^-7) plus 2^-14 for the fp32 summation order.

On CPU the kernels run under Triton's interpreter, which computes a bf16 `tl.dot` as a matmul of
the raw uint16 bit patterns (triton 3.6 `interpreter.create_dot`): the tensor-core paths (the
GEMV's dot mode, every GEMM) are checked in fp16 there and in both dtypes on CUDA; the GEMV's FMA
mode (M = 1) is checked in bf16 everywhere. Outputs are poisoned with NaN before every call.
The interpreter does not run Triton's compiler: the committed tiles are also compiled for sm_90 and
sm_80 with Triton's own ptxas (no GPU needed), in a process without TRITON_INTERPRET.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from llm_infer.kernels.awq_torch import AWQWeights, awq_linear_ref, dequantize_awq, pack_awq, prepare_ref
from llm_infer.kernels.triton import awq_gemm as GEMM
from llm_infer.kernels.triton import awq_gemv as GEMV
from llm_infer.kernels.triton import awq_moe as MOE
from llm_infer.kernels.triton.awq_linear import awq_linear
from llm_infer.kernels.triton.awq_pack import repack_for_triton, supports, unpack_triton
from tests.test_triton_gemv import poisoned  # NaN-filled [M, N] on the test device

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
F16, BF16 = torch.float16, torch.bfloat16


def tolerance(dtype: torch.dtype) -> float:
    rounding = 2.0**-11 if dtype == F16 else (2.0**-8 if CUDA else 2.0**-7)
    return rounding + 2.0**-14


def random_awq(K: int, N: int, group: int, seed: int = 0):
    """AutoAWQ tensors (qweight, qzeros, scales) of a random [K in, N out] layer, on DEVICE."""
    g = torch.Generator().manual_seed(seed)
    qweight = pack_awq(torch.randint(0, 16, (K, N), generator=g))
    qzeros = pack_awq(torch.randint(0, 16, (K // group, N), generator=g))
    scales = (torch.rand(K // group, N, generator=g) * 0.02 + 0.001).to(F16)
    return qweight.to(DEVICE), qzeros.to(DEVICE), scales.to(DEVICE)


def case(M: int, K: int, N: int, group: int, dtype: torch.dtype, bias: bool = True, seed: int = 0):
    """(x, repacked weights, bias, fp32 W [N, K]) on DEVICE."""
    qweight, qzeros, scales = random_awq(K, N, group, seed)
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(M, K, generator=g).to(DEVICE, dtype)
    b = torch.randn(N, generator=g).to(DEVICE, dtype) if bias else None
    return x, repack_for_triton(qweight, qzeros, scales, group), b, dequantize_awq(qweight, qzeros, scales, group)


def truth(x, W, b, round_weights: bool = False):
    W = W.to(x.dtype).float() if round_weights else W
    y = x.float() @ W.T
    return y + b.float() if b is not None else y


def assert_close(y, ref, dtype):
    assert not y.isnan().any(), "output not fully written"
    scale = ref.abs().max().item()
    err = (y.float() - ref).abs().max().item()
    assert err <= tolerance(dtype) * scale, f"max err {err:.3g} > {tolerance(dtype):.3g} x max|y| {scale:.3g}"


def counters_are_zero() -> bool:
    return all(int(c.abs().sum()) == 0 for (kind, _), (_, c) in GEMV._WORKSPACES.items() if kind == DEVICE)


# ---- the layout -----------------------------------------------------------------------------------

@pytest.mark.parametrize("K,N,group", [(32, 8, 32), (192, 40, 64), (384, 72, 128), (640, 24, 32)])
def test_repack_round_trips_to_the_autoawq_tensors(K, N, group):
    qweight, qzeros, scales = random_awq(K, N, group, seed=K)
    w = repack_for_triton(qweight, qzeros, scales, group)
    assert w.qweight is None and w.q4.shape == (N, K // 8) and w.z_gn.dtype == torch.uint8
    back = unpack_triton(w)
    for got, want in zip(back, (qweight, qzeros, scales)):
        assert torch.equal(got, want)
    # nibble i of word (n, j) is row 8j + i of column n
    q = (w.q4[3 % N, 1].item() >> 4 * 5) & 0xF
    assert q == (qweight[8 + 5, (3 % N) // 8].item() >> 4 * [0, 4, 1, 5, 2, 6, 3, 7][(3 % N) % 8]) & 0xF


def test_repack_is_done_in_column_chunks(monkeypatch):
    from llm_infer.kernels.triton import awq_pack

    monkeypatch.setattr(awq_pack, "_REPACK_ROWS", 16)  # 3 chunks of 16 output columns, the last of 8
    qweight, qzeros, scales = random_awq(64, 40, 32, seed=5)
    w = awq_pack.repack_for_triton(qweight, qzeros, scales, 32)
    assert torch.equal(unpack_triton(w)[0], qweight)


def test_supported_shapes_and_the_reference_form_for_the_rest():
    assert all(supports(K, N, g) for g in (32, 64, 128) for K in (g, 3 * g, 7 * g) for N in (8, 40, 4096))
    assert not supports(256, 64, 256) and not supports(192, 64, 96) and not supports(96, 64, 64)
    assert not supports(128, 12, 32) and not supports(0, 8, 32)
    qweight, qzeros, scales = random_awq(256, 16, 256)
    w = repack_for_triton(qweight, qzeros, scales, 256)  # group 256: kept for awq_linear_ref
    assert w.q4 is None and w.qweight is qweight
    with pytest.raises(ValueError, match="^w:"):
        awq_linear(torch.zeros(1, 256, dtype=F16, device=DEVICE), w)


# ---- the GEMV (M <= 16) ---------------------------------------------------------------------------

FMA = GEMV.Tile(16, 64, 4, dot=False, per_sm=4)


@pytest.mark.parametrize("K,N,group", [(128, 40, 32), (192, 72, 64), (384, 24, 128), (64, 8, 32)])
@pytest.mark.parametrize("dtype", [F16, BF16])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_gemv_fma_mode_at_m1(K, N, group, dtype, bias):
    x, w, b, W = case(1, K, N, group, dtype, bias, seed=K + N)
    for split in (1, None):  # None: the launcher's split (4 interpreter "SMs": K is split)
        y = GEMV.awq_gemv(x, w, b, out=poisoned(1, N, dtype), tile=FMA, split=split)
        assert_close(y, truth(x, W, b), dtype)


DOT_CASES = [(1, 128, 40, 32), (3, 192, 72, 64), (7, 384, 24, 128), (16, 256, 40, 64)]


@pytest.mark.parametrize("M,K,N,group", DOT_CASES)
@pytest.mark.parametrize("swap", [False, True], ids=["x_first", "w_first"])
@pytest.mark.parametrize("dtype", [F16, BF16] if CUDA else [F16])
def test_gemv_dot_mode(M, K, N, group, swap, dtype):
    x, w, b, W = case(M, K, N, group, dtype, bias=M % 2 == 1, seed=M)
    tile = GEMV.Tile(16, 64, 4, dot=True, per_sm=4, swap=swap)
    for split in (1, 3):
        y = GEMV.awq_gemv(x, w, b, out=poisoned(M, N, dtype), tile=tile, split=split)
        assert_close(y, truth(x, W, b), dtype)


def test_gemv_split_k_resets_its_counters_and_is_deterministic():
    x1, w, b, W = case(3, 512, 40, 128, F16, seed=2)
    x2 = torch.randn(3, 512, generator=torch.Generator().manual_seed(9)).to(DEVICE, F16)
    tile = GEMV.Tile(16, 64, 4, dot=True, per_sm=4)
    first = GEMV.awq_gemv(x1, w, b, out=poisoned(3, 40, F16), tile=tile, split=8)
    assert counters_are_zero()
    second = GEMV.awq_gemv(x2, w, b, out=poisoned(3, 40, F16), tile=tile, split=8)  # a stale counter breaks this
    assert_close(second, truth(x2, W, b), F16)
    again = GEMV.awq_gemv(x1, w, b, out=poisoned(3, 40, F16), tile=tile, split=8)
    assert torch.equal(first.view(torch.int16), again.view(torch.int16))
    assert counters_are_zero()


# ---- the GEMM (M > 16) ----------------------------------------------------------------------------

GEMM_CASES = [(17, 128, 40, 32), (33, 192, 72, 64), (40, 256, 24, 128)]


@pytest.mark.parametrize("M,K,N,group", GEMM_CASES)
@pytest.mark.parametrize("scaled,swap", [(True, False), (True, True), (False, False), (False, True)],
                         ids=["scaled", "scaled-w_first", "exact", "exact-w_first"])
@pytest.mark.parametrize("dtype", [F16, BF16] if CUDA else [F16])
def test_gemm(M, K, N, group, scaled, swap, dtype):
    x, w, b, W = case(M, K, N, group, dtype, bias=M % 2 == 1, seed=M)
    tile = GEMM.Tile(16, 32, 64, warps=4, stages=2, scaled=scaled, swap=swap, group_m=2)
    for split in (1, 2):
        y = GEMM.awq_gemm(x, w, b, out=poisoned(M, N, dtype), tile=tile, split=split)
        assert_close(y, truth(x, W, b, round_weights=scaled), dtype)
    assert counters_are_zero()


@pytest.mark.parametrize("M", [1, 9, 24])
def test_rows_of_x_with_a_stride_and_an_odd_offset(M):
    x, w, b, W = case(M, 192, 40, 64, F16, seed=7)
    wide = torch.full((M, 200), float("nan"), dtype=F16, device=DEVICE)
    wide[:, 3:195] = x
    y = awq_linear(wide[:, 3:195], w, b)
    assert_close(y, truth(x, W, b, round_weights=M > GEMV.MAX_M and GEMM.TILES["m32"].scaled), F16)


def test_gemm_split_k_is_deterministic():
    x, w, b, W = case(20, 512, 40, 64, F16, seed=3)
    tile = GEMM.Tile(16, 32, 64, warps=4, stages=2, scaled=False, swap=True)
    first = GEMM.awq_gemm(x, w, b, out=poisoned(20, 40, F16), tile=tile, split=5)
    again = GEMM.awq_gemm(x, w, b, out=poisoned(20, 40, F16), tile=tile, split=5)
    assert torch.equal(first.view(torch.int16), again.view(torch.int16))
    assert_close(first, truth(x, W, b), F16)


# ---- the linear layer: default tiles, M picks the kernel --------------------------------------------

@pytest.mark.parametrize("M", [1, 5, 16, 17, 33])
def test_awq_linear_with_the_default_tiles(M):
    dtype = BF16 if CUDA or M == 1 else F16  # M > 1: tensor cores (no bf16 dot in the interpreter)
    x, w, b, W = case(M, 256, 200, 128, dtype, seed=M)
    y = awq_linear(x.view(1, M, 256), w, b)
    assert y.shape == (1, M, 200) and y.dtype == dtype
    scaled = M > GEMV.MAX_M and GEMM.TILES[GEMM.shape_class(M, 200, 256)].scaled
    assert_close(y.view(M, 200), truth(x, W, b, round_weights=scaled), dtype)
    # ... and the dispatcher's reference: both round y to the dtype (one ulp apart at most) and the
    # reference rounds every weight too; up to 1.24 x tolerance() seen over 4 seeds per M
    ref = awq_linear_ref(x, prepare_ref(*unpack_triton(w), 128), b)
    assert (y.view(M, 200).float() - ref.float()).abs().max() <= 2 * tolerance(dtype) * ref.float().abs().max()


QWEN_SHAPES = [(1536, 2048), (1536, 1536), (1536, 17920), (8960, 1536),
               (3584, 4608), (3584, 3584), (3584, 37888), (18944, 3584)]  # (K, N) of the 1.5B and 7B layers


def test_tiles_and_candidates_are_valid_for_the_qwen_shapes():
    for K, N in QWEN_SHAPES:
        assert supports(K, N, 128)
        for M in (1, 2, 4, 8, 16):
            tiles = GEMV.candidates(M, N, K)
            assert tiles[0] == GEMV.TILES[GEMV.shape_class(M, N, K)] and len(set(tiles)) == len(tiles)
            for t in tiles:
                assert t.dot or M == 1
                assert t.block_n >= 16 and t.block_k >= 32 and not t.block_n & (t.block_n - 1)
            t = tiles[0]
            split, _ = GEMV.choose_split(-(-N // t.block_n), K // t.block_k, t.per_sm * 132)
            assert -(-N // t.block_n) * split >= 132, "the default launch fills a 132-SM GPU"
        for M in (17, 32, 64, 128, 256, 1024):
            tiles = GEMM.candidates(M, N, K)
            assert tiles[0] == GEMM.TILES[GEMM.shape_class(M, N, K)] and len(set(tiles)) == len(tiles)
            assert all(t.block_m >= 16 and t.block_n >= 16 for t in tiles)


def test_bad_arguments_name_the_argument():
    x, w, b, _ = case(2, 64, 16, 32, F16)
    bad = [
        (lambda: GEMV.awq_gemv(x.float(), w), "x:"),
        (lambda: GEMV.awq_gemv(torch.zeros(17, 64, dtype=F16, device=DEVICE), w), "x:"),
        (lambda: GEMV.awq_gemv(x[:, :32], w), "w.q4:"),
        (lambda: GEMV.awq_gemv(x, w, b[:8]), "bias:"),
        (lambda: GEMV.awq_gemv(x, w, b.float()), "bias:"),
        (lambda: GEMV.awq_gemv(x, w, out=torch.empty(2, 15, dtype=F16, device=DEVICE)), "out:"),
        (lambda: GEMV.awq_gemv(x, w, tile=FMA), "tile:"),
        (lambda: GEMV.awq_gemv(x, w, split=3), "split:"),
        (lambda: GEMM.awq_gemm(x, AWQWeights(32, q4=w.q4, s_gn=w.s_gn)), "w.z_gn:"),
        (lambda: awq_linear(x, prepare_ref(*unpack_triton(w), 32)), "w:"),
    ]
    for call, name in bad:
        with pytest.raises(ValueError, match=f"^{name}"):
            call()


# ---- mixture of experts: rows grouped by expert --------------------------------------------------

def moe_case(R, E, K, N, group, dtype, bias, seed=0):
    experts = [case(1, K, N, group, dtype, bias=False, seed=seed + 10 * e) for e in range(E)]
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(R, K, generator=g).to(DEVICE, dtype)
    ids = torch.randint(0, E - 1, (R,), generator=g).to(DEVICE)  # expert E - 1 gets no rows
    b = torch.randn(E, N, generator=g).to(DEVICE, dtype) if bias else None
    return x, MOE.stack_experts([e[1] for e in experts]), ids, b, [e[3] for e in experts]


@pytest.mark.parametrize("R,E,K,N,group", [(1, 3, 128, 40, 32), (7, 4, 192, 24, 64), (40, 3, 256, 72, 128)])
@pytest.mark.parametrize("scaled,swap", [(False, True), (True, False)], ids=["exact-w_first", "scaled"])
@pytest.mark.parametrize("dtype", [F16, BF16] if CUDA else [F16])
def test_moe_rows_use_their_own_expert(R, E, K, N, group, scaled, swap, dtype):
    x, w, ids, b, Ws = moe_case(R, E, K, N, group, dtype, bias=R % 2 == 1, seed=R)
    tile = GEMM.Tile(16, 16, 64, 4, 2, scaled=scaled, swap=swap)
    y = MOE.awq_moe(x, w, ids, b, out=poisoned(R, N, dtype), tile=tile)
    ref = torch.stack([truth(x[r : r + 1], Ws[int(ids[r])], None if b is None else b[int(ids[r])],
                             round_weights=scaled)[0] for r in range(R)])
    assert_close(y, ref, dtype)


def test_moe_grouping_counts_blocks_per_expert():
    ids = torch.tensor([2, 0, 2, 2, 0, 3, 2], device=DEVICE)
    order, counts, starts, block_end = MOE.group_rows(ids, 5, block_m=2)
    assert order.tolist() == [1, 4, 0, 2, 3, 6, 5] and counts.tolist() == [2, 0, 4, 1, 0]
    assert starts.tolist() == [0, 2, 2, 6, 7] and block_end.tolist() == [1, 1, 3, 4, 4]


def test_an_autoawq_checkpoint_goes_through_the_same_entry():
    """The experts of AutoAWQ's own tiny Qwen3-MoE (tests/data, group 64): each through awq_linear,
    all of layer 0's gate projections stacked through awq_moe."""
    from pathlib import Path

    from safetensors import safe_open

    path = Path(__file__).parent / "data" / "awq_tiny_qwen3_moe" / "model.safetensors"
    with safe_open(str(path), "pt") as f:
        layers = [[f.get_tensor(f"model.layers.0.mlp.experts.{e}.gate_proj.{t}").to(DEVICE)
                   for t in ("qweight", "qzeros", "scales")] for e in range(8)]
    x = torch.randn(5, layers[0][0].shape[0], generator=torch.Generator().manual_seed(0)).to(DEVICE, F16)
    repacked = [repack_for_triton(*layer, 64) for layer in layers]
    Ws = [dequantize_awq(*layer, 64) for layer in layers]
    for w, W in zip(repacked[:2], Ws):
        assert_close(awq_linear(x, w), truth(x, W, None), F16)
    ids = torch.tensor([3, 0, 7, 3, 5], device=DEVICE)
    y = MOE.awq_moe(x, MOE.stack_experts(repacked), ids, out=poisoned(5, Ws[0].shape[0], F16))
    assert_close(y, torch.stack([truth(x[r : r + 1], Ws[int(ids[r])], None)[0] for r in range(5)]), F16)


def compile_tiles(capability: int, dtype: str) -> list[str]:
    """Compile (no GPU needed: Triton's own ptxas) every TILES entry of the GEMV, GEMM and MoE kernels for
    sm_<capability> with <dtype> activations, with and without split-K; the failures, as text.
    Run in a process without TRITON_INTERPRET (see the test below)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    args = {"x_ptr": f"*{dtype}", "q4_ptr": "*i32", "s_ptr": "*fp16", "z_ptr": "*u8", "bias_ptr": f"*{dtype}",
            "y_ptr": f"*{dtype}", "ws_ptr": "*fp32", "cnt_ptr": "*i32", **{name: "i32" for name in (
                "M", "N", "K", "k_words", "stride_xm", "stride_ym", "split", "steps_per_split", "magic")}}
    aligned = {(i,): [["tt.divisibility", 16]] for i in range(17) if i not in (8, 15, 16)}
    limit = (227 if capability >= 90 else 163) * 1024
    failures = []
    launches = [(GEMV._awq_gemv_kernel, t, dict(DOT=t.dot, SWAP=t.swap, BLOCK_M=16 if t.dot else 1))
                for t in GEMV.TILES.values()]
    launches += [(GEMM._awq_gemm_kernel, t, dict(SCALED=t.scaled, SWAP=t.swap, BLOCK_M=t.block_m, GROUP_M=t.group_m))
                 for t in GEMM.TILES.values()]
    moe_args = {"x_ptr": f"*{dtype}", **{name: "*i32" for name in ("order_ptr", "counts_ptr", "starts_ptr",
                                                                     "block_end_ptr", "q4_ptr")},
                "s_ptr": "*fp16", "z_ptr": "*u8", "bias_ptr": f"*{dtype}", "y_ptr": f"*{dtype}",
                **{name: "i32" for name in ("N", "K", "k_words", "E", "stride_xm", "stride_ym", "magic")}}
    launches += [(MOE._awq_moe_kernel, t, dict(SCALED=t.scaled, SWAP=t.swap, BLOCK_M=t.block_m, E_P2=64))
                 for t in MOE.TILES.values()]
    done = set()
    for kernel, tile, extra in launches:
        for split_p2 in ((1,) if kernel is MOE._awq_moe_kernel else (1, 8)):
            consts = dict(GROUP=128, HAS_BIAS=split_p2 == 1, BLOCK_N=tile.block_n, BLOCK_K=tile.block_k,
                          STAGES=tile.stages, **extra)
            if kernel is not MOE._awq_moe_kernel:
                consts["SPLIT_P2"] = split_p2
            key = (kernel.__name__, tuple(sorted(consts.items())), tile.warps)
            if key in done:
                continue
            done.add(key)
            signature = moe_args if kernel is MOE._awq_moe_kernel else args
            source = ASTSource(kernel, {**signature, **{k: "constexpr" for k in consts}}, consts, aligned)
            try:
                compiled = triton.compile(source, target=GPUTarget("cuda", capability, 32),
                                          options={"num_warps": tile.warps, "num_stages": tile.stages})
                if compiled.metadata.shared > limit:
                    failures.append(f"{kernel.__name__} {tile}: {compiled.metadata.shared} bytes of shared memory")
            except Exception as e:  # noqa: BLE001 - reported, with the tile
                failures.append(f"{kernel.__name__} {tile}: {str(e).strip().splitlines()[-1][:300]}")
    return failures


@pytest.mark.slow  # Triton's compiler and ptxas, 10-40 s
@pytest.mark.skipif(CUDA, reason="on a GPU every test above compiles and runs the kernels")
@pytest.mark.parametrize("capability,dtype", [(90, "bf16"), (80, "fp16")])
def test_the_committed_tiles_compile_for_hopper_and_ampere(capability, dtype):
    # The interpreter runs the kernels' Python; only a compile finds what Triton's compiler rejects
    # (e.g. inconsistent return types, shared memory over the limit).
    code = (f"from tests.test_triton_awq import compile_tiles; import sys; f = compile_tiles({capability}, "
            f"{dtype!r}); print(*f, sep='\\n'); sys.exit(bool(f))")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]


def test_benchmark_plan_without_cuda():
    from benchmarks.gpu_sections import awq as section

    plan = section.plan()
    assert plan["shapes"] == [list(s) for s in QWEN_SHAPES] and plan["m"] == [1, 8, 16, 32, 64, 128, 256]
    assert plan["candidates"] > len(plan["shape_classes"])


@pytest.mark.slow  # every kernel of the section through the interpreter, ~30 s
@pytest.mark.skipif(CUDA, reason="the GPU run measures the section itself")
def test_benchmark_section_runs_end_to_end_on_a_tiny_shape(monkeypatch):
    """run() with a fake timer on CPU (fp16: no bf16 tl.dot in the interpreter): every code path
    of the report, the candidate sweep cut to two tiles per class."""
    from benchmarks.gpu_sections import awq as section

    monkeypatch.setattr(section, "DEVICE", "cpu")
    monkeypatch.setattr(section, "DTYPE", F16)
    monkeypatch.setattr(section, "SHAPES", [("tiny qkv", 256, 40, True), ("tiny o", 128, 24, False)])
    monkeypatch.setattr(section, "MS", [1, 3, 17])
    monkeypatch.setattr(section, "copies_to_exceed_l2", lambda nbytes: 2)
    monkeypatch.setattr(section, "graph_time", lambda call, copies: (call(copies - 1), 1e-6)[1])
    tiny = [GEMV.Tile(16, 64, 4, dot=False, per_sm=4), GEMV.Tile(16, 64, 4, dot=True, per_sm=4, swap=True),
            GEMM.Tile(16, 16, 64, 4, 2, scaled=False, swap=True, per_sm=2)]
    monkeypatch.setattr(section, "_class_candidates",
                        lambda m, shapes: [tiny[2]] if m > 16 else tiny[0 if m == 1 else 1:2])
    for table, key in ((GEMV.TILES, "m1_small"), (GEMV.TILES, "m4_small"), (GEMM.TILES, "m32")):
        monkeypatch.setitem(table, key, tiny[0] if key == "m1_small" else tiny[1] if key == "m4_small" else tiny[2])
    report = section.run(4.25e12, budget_s=600)
    assert len(report["rows"]) == 6 and not report["skipped"][1:]
    assert all(r["repeatable"] and r["rel_err"] < 2**-9 and r["vs_cublas"] == 1.0 for r in report["rows"])
    assert [e["m"] for e in report["sweep"]] == [1, 3, 17] and len(report["tiles_py"]) == 3


@pytest.mark.parametrize("group", [32, 64, 128])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_dequantize_gives_the_reference_weights(group, dtype):
    """The dense weight for large-M matmuls equals the reference's dequantized weight bit for bit
    (both compute (q - z) * s in fp32 and round once; 72 outputs: a partial block of rows)."""
    from llm_infer.kernels.triton.awq_dequant import dequantize

    g = torch.Generator().manual_seed(group)
    K, N = 2 * group, 72
    qweight = pack_awq(torch.randint(0, 16, (K, N), generator=g))
    qzeros = pack_awq(torch.randint(0, 16, (K // group, N), generator=g))
    scales = (torch.rand(K // group, N, generator=g) * 0.02 + 0.001).half()
    w = repack_for_triton(qweight.to(DEVICE), qzeros.to(DEVICE), scales.to(DEVICE), group)
    ours = dequantize(w, dtype)
    ref = dequantize_awq(qweight, qzeros, scales, group).to(dtype)
    assert ours.shape == (N, K)
    if DEVICE == "cpu" and dtype == torch.bfloat16:  # the interpreter truncates fp32 -> bf16
        torch.testing.assert_close(ours.float().cpu(), ref.float(), atol=0, rtol=2**-7)
    else:
        assert torch.equal(ours.cpu(), ref)
