"""The AutoAWQ int4 format: packing, dequantisation, repacking, and the CPU kernel."""

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
from llm_infer.kernels.cpu_extension import load_cpu_extension


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


ext = load_cpu_extension()
needs_ext = pytest.mark.skipif(ext is None, reason="the C++ CPU kernels could not be built here")


@needs_ext
@pytest.mark.parametrize("k,n,group", [(256, 64, 128), (512, 96, 64), (576, 8, 64)])
def test_cpu_repack_dequantizes_exactly(k, n, group):
    qweight, qzeros, scales = random_awq(k, n, group)
    packed = repack_for_cpu(qweight, qzeros, scales, group)
    got = ext.awq_dequantize(packed.packed, packed.scales_nk, packed.zeros_nk, group, torch.float32)
    assert torch.equal(got, dequantize_awq(qweight, qzeros, scales, group))


@needs_ext
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("m", [1, 2, 3, 4, 5, 8, 9, 16])
@pytest.mark.parametrize("bias", [False, True])
def test_cpu_awq_linear_matches_dequantize_then_matmul(dtype, m, bias):
    k, n, group = 512, 200, 128
    qweight, qzeros, scales = random_awq(k, n, group, seed=m)
    x = torch.randn(m, k).to(dtype)
    b = torch.randn(n).to(dtype) if bias else None
    w = AWQWeights(group, qweight, qzeros, scales)
    packed = repack_for_cpu(qweight, qzeros, scales, group)
    got = ext.awq_linear(x, packed.packed, packed.scales_nk, packed.zeros_nk, group, b)
    # Exact reference: fp32 dequantised weights against the same (rounded) activations.
    exact = torch.nn.functional.linear(x.float(), dequantize_awq(qweight, qzeros, scales, group),
                                       None if b is None else b.float())
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(got.float(), exact, atol=tol * exact.abs().max(), rtol=0)
    # and the torch reference path (which rounds the weights to the activation dtype) agrees too
    torch.testing.assert_close(got.float(), awq_linear_ref(x, w, b).float(), atol=3e-2 * exact.abs().max(), rtol=0)
