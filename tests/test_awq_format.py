"""The AutoAWQ int4 format: packing, dequantisation, repacking, and the CPU kernel (once per
build variant this CPU runs: `cpu_ext`)."""

from __future__ import annotations

import pytest
import torch

from llm_infer.kernels.awq_torch import (
    AWQ_ORDER,
    AWQWeights,
    awq_linear_ref,
    dequantize_awq,
    pack_awq,
    repack_for_cpu,
    unpack_awq,
)

def test_hand_built_layer_unpacks_to_the_expected_matrix():
    # 2 input rows, 8 output columns, group size 1: one int32 per row holds all 8 columns.
    q = torch.tensor([[0, 1, 2, 3, 4, 5, 6, 7], [15, 14, 13, 12, 11, 10, 9, 8]])
    word = [sum(int(q[r, AWQ_ORDER[i]]) << (4 * i) for i in range(8)) for r in range(2)]
    qweight = torch.tensor(word, dtype=torch.int64).to(torch.int32).view(2, 1)
    assert torch.equal(unpack_awq(qweight), q.to(torch.uint8))
    assert torch.equal(pack_awq(q), qweight)
    qzeros = pack_awq(torch.tensor([[8] * 8, [1] * 8]))
    scales = torch.tensor([[0.5] * 8, [2.0] * 8], dtype=torch.float16)
    w = dequantize_awq(qweight, qzeros, scales, group=1)  # [out, in]
    expected = torch.stack([(q[0] - 8) * 0.5, (q[1] - 1) * 2.0], dim=1).float()
    assert torch.equal(w, expected)


def random_awq(k: int, n: int, group: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    qweight = pack_awq(torch.randint(0, 16, (k, n), generator=g))
    qzeros = pack_awq(torch.randint(0, 16, (k // group, n), generator=g))
    scales = (torch.rand(k // group, n, generator=g) * 0.02 + 0.001).to(torch.float16)
    return qweight, qzeros, scales


@pytest.fixture
def ext(cpu_ext):
    return cpu_ext


@pytest.mark.parametrize("k,n,group", [(256, 64, 128), (512, 96, 64), (576, 8, 64), (640, 16, 128)])
def test_cpu_repack_dequantizes_exactly(k, n, group, ext):
    qweight, qzeros, scales = random_awq(k, n, group)
    packed = repack_for_cpu(qweight, qzeros, scales, group)
    want = dequantize_awq(qweight, qzeros, scales, group)
    for dtype in (torch.float32, torch.bfloat16):  # bf16: the fp32 values rounded to nearest even
        got = ext.awq_dequantize(packed.packed, packed.scales_nk, packed.zeros_nk, group, dtype)
        assert torch.equal(got, want.to(dtype)), dtype


def w4a8_reference(x, qweight, qzeros, scales, group, bias):
    """What the W4A8 kernel computes, on every ISA path: x quantised to int8 per group as the
    kernel does it, in fp32 (x * (127 / max|x|), rounded half to even; scale max|x| / 127), weight
    products summed exactly, zero points applied with the exact sum of x. Quantising as
    round(x / (max|x| / 127)) in float64 instead gives a different int8 where x * 127 / max|x|
    lands within an fp32 rounding of a half-integer, so the two can differ by one activation step."""
    xf = x.float()
    m, k = xf.shape
    g = xf.view(m, k // group, group)
    amax = g.abs().amax(-1, keepdim=True)
    inv = torch.where(amax > 0, 127 / amax, 0)
    xq = torch.round(g * inv).double() * (amax / 127).double()
    q = unpack_awq(qweight).double()  # [in, out]
    z = unpack_awq(qzeros).double().repeat_interleave(group, 0)
    s = scales.double().repeat_interleave(group, 0)
    y = xq.view(m, k) @ (q * s) - x.double() @ (z * s)
    return y if bias is None else y + bias.double()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("m", [1, 2, 3, 4, 5, 8, 9, 16, 33])
@pytest.mark.parametrize("k,group", [(512, 128), (576, 64), (640, 128)])
@pytest.mark.parametrize("bias", [False, True])
def test_cpu_awq_linear_matches_its_reference(dtype, m, k, group, bias, ext):
    """fp32 activations: the exact int4 product. bf16 (W4A8, up to the build's row limit): the
    int8-activation result of `w4a8_reference` up to fp32 summation order and the bf16 output
    rounding (half an ulp: up to 2^-8 of the largest output), and near the exact product. Above the row
    limit: dequantised to bf16, then oneDNN."""
    n = 200
    qweight, qzeros, scales = random_awq(k, n, group, seed=m)
    gen = torch.Generator().manual_seed(1000 * m + k + bias)
    x = torch.randn(m, k, generator=gen).to(dtype)
    b = torch.randn(n, generator=gen).to(dtype) if bias else None
    packed = repack_for_cpu(qweight, qzeros, scales, group)
    got = ext.awq_linear(x, packed.packed, packed.scales_nk, packed.zeros_nk, group, b).double()
    exact = torch.nn.functional.linear(x.double(), dequantize_awq(qweight, qzeros, scales, group).double(),
                                       None if b is None else b.double())
    scale = exact.abs().max()
    if dtype == torch.float32:  # exact path
        torch.testing.assert_close(got, exact, atol=1e-4 * scale, rtol=0)
    elif m <= ext.row_limits()["awq_linear"]:
        torch.testing.assert_close(got, w4a8_reference(x, qweight, qzeros, scales, group, b), atol=5e-3 * scale, rtol=0)
        torch.testing.assert_close(got, exact, atol=3e-2 * scale, rtol=0)
    else:
        w = AWQWeights(group, qweight, qzeros, scales)
        torch.testing.assert_close(got, awq_linear_ref(x, w, b).double(), atol=3e-2 * scale, rtol=0)


def test_cpu_awq_linear_streams_up_to_its_row_limit_then_dequantizes_for_onednn(ext):
    """The one dispatch point: up to the build's limit the W4A8 GEMV, above it exactly
    `F.linear(x, awq_dequantize(...))` (oneDNN)."""
    k, n, group = 576, 64, 64
    packed = repack_for_cpu(*random_awq(k, n, group), group)
    args = (packed.packed, packed.scales_nk, packed.zeros_nk, group)
    most = ext.row_limits()["awq_linear"]
    gen = torch.Generator().manual_seed(7)
    w = ext.awq_dequantize(*args, torch.bfloat16)
    for m in (most, most + 1):
        x = torch.randn(m, k, generator=gen).bfloat16()
        onednn = torch.nn.functional.linear(x, w)
        assert torch.equal(ext.awq_linear(x, *args, None), onednn) == (m > most), m
