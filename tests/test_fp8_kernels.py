"""Block-wise FP8 kernels (`kernels/fp8_torch.py`): the parts a CPU proves (dequantisation, the
dynamic per-token-group activation quantisation, block scales of a shard, the CUDA choice falling
back to the dequantised form), and on a GPU (`-m gpu`) the W8A8 product through `torch._scaled_mm`
against dequantise-then-matmul of the same quantised operands, and a whole FP8 model."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from llm_infer.kernels import fp8_torch
from tests.quantized_checkpoints import dequantize_fp8, quantize_fp8


def test_dequantize_with_row_scales_is_the_block_dequantisation():
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(300, 200, generator=gen)  # blocks cut by both edges
    q, blocks = quantize_fp8(w)
    rows = fp8_torch.expand_rows(blocks, 300, 128)
    assert rows.shape == (300, 2)
    torch.testing.assert_close(fp8_torch.dequantize(q, rows, 128), dequantize_fp8(q, blocks), atol=0, rtol=0)
    with pytest.raises(ValueError, match="expected 3 row blocks for 300 rows, got 2"):
        fp8_torch.expand_rows(blocks[:2], 300, 128)


def test_activation_quantisation_per_token_group():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(5, 256, generator=gen) * torch.tensor([0.01, 1.0, 30.0, 1e-3, 4.0])[:, None]
    x[3, :128] = 0  # an all-zero group: scale 1, zeros
    q, s = fp8_torch.quantize_activation(x)
    assert q.dtype == torch.float8_e4m3fn and s.shape == (5, 2)
    groups = x.view(5, 2, 128)
    amax = groups.abs().amax(-1)
    torch.testing.assert_close(s, torch.where(amax > 0, amax / 448.0, torch.ones_like(amax)), atol=0, rtol=0)
    back = (q.float().view(5, 2, 128) * s[..., None])
    # e4m3 keeps 3 mantissa bits: half an ulp is 1/16 of the value (subnormals: 2^-10 of the scale)
    err = (back - groups).abs()
    assert (err <= groups.abs() / 16 + s[..., None] * 2.0**-9).all()
    assert (q.float().view(5, 2, 128).abs().amax(-1)[amax > 0] == 448).all(), "each group's largest value is 448"
    assert (q.float()[3, :128] == 0).all()


def test_block_scales_of_a_shard():
    gen = torch.Generator().manual_seed(2)
    blocks = torch.rand(3, 2, generator=gen)
    rows = fp8_torch.expand_rows(blocks, 384, 128)
    torch.testing.assert_close(fp8_torch.block_scales(rows, 128), blocks, atol=0, rtol=0)
    assert fp8_torch.block_scales(rows[64:320], 128) is None, "a shard starting inside a block"
    assert fp8_torch.block_scales(rows[:200], 128) is None, "a shard ending inside a block"


def test_cuda_preparation_falls_back_to_the_dequantised_weight_off_a_gpu():
    gen = torch.Generator().manual_seed(3)
    q, blocks = quantize_fp8(torch.randn(256, 256, generator=gen))
    w = fp8_torch.prepare_w8a8(q, fp8_torch.expand_rows(blocks, 256, 128), 128, 128, torch.bfloat16)
    assert w.weight_t is None and w.dense.dtype == torch.bfloat16
    torch.testing.assert_close(w.dense, dequantize_fp8(q, blocks).bfloat16(), atol=0, rtol=0)
    x = torch.randn(3, 256, generator=gen).bfloat16()
    torch.testing.assert_close(fp8_torch.fp8_linear(x, w, None), F.linear(x, w.dense), atol=0, rtol=0)


def test_env_says_how_gptq_and_fp8_run_on_cpu():
    from llm_infer.entrypoints.env_report import cpu_ops
    from tests.conftest import cpu_extension_or_skip

    ops = cpu_ops(cpu_extension_or_skip())
    assert ops["FP8 block-wise checkpoints"].startswith("dequantized at load to the model dtype")
    assert ops["GPTQ checkpoints"].startswith("int4 converted at load to AWQ's int4")


needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def w8a8_device() -> torch.device:
    dev = torch.device("cuda")
    if fp8_torch.probe_w8a8(dev) is None:
        pytest.skip(f"no block-scaled FP8 matmul on {torch.cuda.get_device_name(dev)}")
    return dev


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("m", [1, 7, 64])
def test_w8a8_matches_dequantised_operands_on_gpu(m):
    dev = w8a8_device()
    gen = torch.Generator().manual_seed(4)
    n, k = 512, 768
    q, blocks = quantize_fp8(torch.randn(n, k, generator=gen) * 0.05)
    q, blocks = q.to(dev), blocks.to(dev)
    w = fp8_torch.prepare_w8a8(q, fp8_torch.expand_rows(blocks, n, 128), 128, 128, torch.bfloat16)
    assert w.weight_t is not None, "whole 128-blocks take the W8A8 path"
    x = torch.randn(m, k, generator=gen).to(dev).bfloat16()
    bias = torch.randn(n, generator=gen).to(dev).bfloat16()
    xq, xs = fp8_torch.quantize_activation(x)
    ref_w = dequantize_fp8(q.cpu(), blocks.cpu()).to(dev)
    want = F.linear(xq.float() * xs.repeat_interleave(128, 1), ref_w) + bias.float()
    got = fp8_torch.fp8_linear(x, w, bias).float()
    # fp32 accumulation of the same products on both sides; the output is rounded to bf16
    torch.testing.assert_close(got, want, atol=1e-2 * float(want.abs().max()), rtol=1e-2)


@pytest.mark.gpu
@needs_gpu
def test_fp8_model_runs_w8a8_on_gpu_near_its_dequantized_weights(tmp_path):
    from llm_infer import LLM
    from tests import introspect
    from tests.checkpoints import make_checkpoint
    from tests.quantized_checkpoints import write_fp8

    w8a8_device()
    src = make_checkpoint(tmp_path / "qwen3", "qwen3", seed=9, hidden_size=256, intermediate_size=512,
                          num_hidden_layers=2, head_dim=64)
    path, dense = write_fp8(src, tmp_path / "fp8")
    prompt = [257, 72, 101, 108, 108, 111, 44, 32, 119, 111, 114, 108, 100]
    cfg = {"dtype": "bfloat16", "device": "cuda", "cache": {"block_size": 16, "num_blocks": 64}}
    with LLM({"model": str(path), **cfg}, progress=False) as llm:
        assert hasattr(introspect.decoder_layers(llm)[0].mlp.gate_up_proj, "fp8")
        ours = llm.logits(prompt).float()
    with LLM({"model": str(dense), **cfg}, progress=False) as llm:
        want = llm.logits(prompt).float()
    # W8A8 also rounds the activations to e4m3 (relative error up to 1/16 per value): the logits
    # move by a few percent of their spread, not more.
    assert float((ours - want).pow(2).mean().sqrt()) <= 0.05 * float(want.std())
