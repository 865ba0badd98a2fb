"""The fused C++ MoE kernel against the torch reference loop, on seeded random routings (experts with
no token, experts held by another rank, decode and prefill sizes, fp32 and bf16), once per build
variant this CPU runs (`cpu_ext`: native, and the AVX2 build on an AVX-512 CPU)."""

from __future__ import annotations

import pytest
import torch

from llm_infer.kernels import moe_torch

TOL = {torch.float32: dict(atol=1e-5, rtol=1e-5), torch.bfloat16: dict(atol=2e-2, rtol=2e-2)}


def _case(tokens: int, experts: int, top_k: int, hidden: int, inter: int, dtype: torch.dtype, seed: int):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(tokens, hidden, generator=g).to(dtype)
    gate_up = (torch.randn(experts, 2 * inter, hidden, generator=g) * hidden**-0.5).to(dtype)
    down = (torch.randn(experts, hidden, inter, generator=g) * inter**-0.5).to(dtype)
    logits = torch.randn(tokens, experts, generator=g)
    logits[:, 1] = -1e9  # expert 1 never receives a token
    weights, ids = moe_torch.route(logits, top_k, renormalize=seed % 2 == 0)
    return x, gate_up, down, weights, ids


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("tokens", [1, 3, 8, 40])
def test_fused_moe_matches_the_reference_loop(dtype, tokens, cpu_ext):
    x, gate_up, down, weights, ids = _case(tokens, 8, 2, 64, 48, dtype, seed=tokens)
    want = moe_torch.fused_moe(x, gate_up, down, weights, ids, 0)
    got = cpu_ext.fused_moe(x, gate_up, down, weights, ids, 0)
    assert got.dtype == dtype and got.shape == x.shape
    torch.testing.assert_close(got.float(), want.float(), **TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_expert_parallel_rank_adds_only_its_experts(dtype, cpu_ext):
    """A rank holding experts 4..7 of 8: slots routed elsewhere contribute nothing."""
    x, gate_up, down, weights, ids = _case(17, 8, 3, 32, 16, dtype, seed=5)
    want = moe_torch.fused_moe(x, gate_up[4:], down[4:], weights, ids, 4)
    got = cpu_ext.fused_moe(x, gate_up[4:].contiguous(), down[4:].contiguous(), weights, ids, 4)
    torch.testing.assert_close(got.float(), want.float(), **TOL[dtype])
    full = moe_torch.fused_moe(x, gate_up, down, weights, ids, 0).float()
    other = moe_torch.fused_moe(x, gate_up[:4], down[:4], weights, ids, 0).float()
    torch.testing.assert_close(want.float() + other, full, **TOL[dtype])


def test_decode_reads_only_the_selected_experts(cpu_ext):
    """NaN weights in every expert the token did not choose leave the output finite."""
    x, gate_up, down, weights, ids = _case(1, 16, 4, 64, 32, torch.float32, seed=2)
    unused = [e for e in range(16) if e not in ids[0].tolist()]
    gate_up[unused] = float("nan")
    down[unused] = float("nan")
    got = cpu_ext.fused_moe(x, gate_up, down, weights, ids, 0)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, moe_torch.fused_moe(x, gate_up, down, weights, ids, 0), atol=1e-5, rtol=1e-5)


def test_bad_inputs_are_refused(cpu_ext):
    x, gate_up, down, weights, ids = _case(2, 4, 2, 16, 8, torch.float32, seed=1)
    with pytest.raises(RuntimeError, match="fused_moe: expert weights do not match"):
        cpu_ext.fused_moe(x, gate_up[:, :8], down, weights, ids, 0)
    with pytest.raises(RuntimeError, match="fused_moe: bad dtypes"):
        cpu_ext.fused_moe(x, gate_up, down, weights.double(), ids, 0)
