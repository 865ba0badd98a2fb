"""`llm-infer quantize --method gptq | fp8`: the folders it writes are in AutoGPTQ's and Qwen's FP8
layout, load, and run as transformers runs the same model with the written weights dequantized
(unpacked here, independently of the runtime's unpacking); GPTQ's output error is below
round-to-nearest's; FP8 weights are the originals rounded to e4m3 per block."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from llm_infer import LLM
from tests.checkpoints import make_checkpoint, reference_model
from tests.conftest import tiny_engine_config
from tests.oracle import assert_logits_and_tokens_match, engine_greedy, hf_cached_greedy
from tests.quantized_checkpoints import dequantize, dequantize_fp8
from tests.test_quantizer import CALIB, PROMPT, quantize


def unpack(words: torch.Tensor, bits: int, dim: int) -> torch.Tensor:
    """int32 words -> their 32/bits values (value i at bits*i), unpacked along `dim` (0: rows, 1: columns)."""
    p, mask = 32 // bits, (1 << bits) - 1
    w = words.long() & 0xFFFFFFFF
    values = [(w >> (bits * i)) & mask for i in range(p)]
    return torch.stack(values, dim=dim + 1).flatten(dim, dim + 1)


def dense_copy(path: Path, dst: Path) -> Path:
    """The checkpoint at `path` (GPTQ v1 or block FP8) with every quantized layer dequantized to fp32."""
    shutil.copytree(path, dst)
    tensors = load_file(path / "model.safetensors")
    cfg = json.loads((path / "config.json").read_text())
    quant = cfg.pop("quantization_config")
    out = {k: v.float() for k, v in tensors.items() if not k.endswith(("qweight", "qzeros", "scales", "g_idx"))}
    for name in {k.rsplit(".", 1)[0] for k in tensors if k.endswith((".qweight", ".weight_scale_inv"))}:
        if quant["quant_method"] == "gptq":
            bits = quant["bits"]
            q = unpack(tensors[f"{name}.qweight"], bits, 0)
            zeros = unpack(tensors[f"{name}.qzeros"], bits, 1) + 1
            out[f"{name}.weight"] = dequantize(q, zeros, tensors[f"{name}.scales"], tensors[f"{name}.g_idx"])
        else:
            out[f"{name}.weight"] = dequantize_fp8(tensors[f"{name}.weight"], tensors[f"{name}.weight_scale_inv"])
            del out[f"{name}.weight_scale_inv"]
    save_file(out, str(dst / "model.safetensors"))
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("qf") / "src", "qwen3", hidden_size=128, intermediate_size=256,
                           head_dim=32, num_hidden_layers=2, seed=4)


@pytest.fixture(scope="module")
def written(model, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("qf-out")
    (root / "calib.txt").write_text(CALIB)
    runs = {"gptq4": ("--method", "gptq"), "gptq8": ("--method", "gptq", "--bits", "8", "--group-size", "32"),
            "fp8": ("--method", "fp8"), "rtn": ("--method", "rtn")}
    for name, args in runs.items():
        code, stderr = quantize(model, root / name, *args, calib=root / "calib.txt")
        assert code == 0, stderr
    return {name: root / name for name in runs}


@pytest.mark.slow  # four `llm-infer quantize` runs (module fixture)
def test_layouts(written):
    gptq = json.loads((written["gptq4"] / "config.json").read_text())["quantization_config"]
    assert gptq == {"quant_method": "gptq", "bits": 4, "group_size": 64, "sym": False, "desc_act": False,
                    "damp_percent": 0.01, "true_sequential": False, "static_groups": False,
                    "checkpoint_format": "gptq"}
    t = load_file(written["gptq4"] / "model.safetensors")
    p = "model.layers.0.mlp.down_proj"
    assert (t[f"{p}.qweight"].dtype, tuple(t[f"{p}.qweight"].shape)) == (torch.int32, (256 // 8, 128))
    assert (t[f"{p}.qzeros"].dtype, tuple(t[f"{p}.qzeros"].shape)) == (torch.int32, (4, 128 // 8))
    assert (t[f"{p}.scales"].dtype, tuple(t[f"{p}.scales"].shape)) == (torch.float16, (4, 128))
    assert torch.equal(t[f"{p}.g_idx"], (torch.arange(256) // 64).int())
    fp8 = json.loads((written["fp8"] / "config.json").read_text())["quantization_config"]
    assert fp8 == {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
                   "weight_block_size": [128, 128], "modules_to_not_convert": None}
    t = load_file(written["fp8"] / "model.safetensors")
    assert t[f"{p}.weight"].dtype == torch.float8_e4m3fn and tuple(t[f"{p}.weight_scale_inv"].shape) == (1, 2)
    assert t["model.embed_tokens.weight"].dtype == torch.bfloat16


@pytest.mark.slow  # four `llm-infer quantize` runs (module fixture)
@pytest.mark.parametrize("name", ["gptq4", "gptq8", "fp8"])
def test_written_checkpoint_runs_as_transformers_on_its_dequantized_weights(written, tmp_path, name):
    want = hf_cached_greedy(reference_model(dense_copy(written[name], tmp_path / "dense")), PROMPT, 24)
    with LLM(tiny_engine_config(written[name]), progress=False) as llm:
        assert_logits_and_tokens_match(engine_greedy(llm, PROMPT, 24), want)


@pytest.mark.slow  # four `llm-infer quantize` runs (module fixture)
def test_gptq_is_closer_to_the_original_than_round_to_nearest(model, written):
    with LLM(tiny_engine_config(model), progress=False) as llm:
        ref = llm.logits(PROMPT)
    errors = {}
    for name in ("gptq4", "rtn"):
        with LLM(tiny_engine_config(written[name]), progress=False) as llm:
            errors[name] = float((llm.logits(PROMPT) - ref).pow(2).mean())
    assert errors["gptq4"] < errors["rtn"], errors


@pytest.mark.parametrize("bits,group", [(4, 64), (4, -1), (8, 32)])
def test_gptq_lowers_a_layers_output_error_on_its_calibration_inputs(bits, group):
    from llm_infer.runtime.quant.gptq_search import gptq_quantize, group_params, inverse_hessian

    gen = torch.Generator().manual_seed(0)
    k, n = 256, 96
    x = torch.randn(1024, 16, generator=gen) @ torch.randn(16, k, generator=gen) + 0.1 * torch.randn(1024, k,
                                                                                                     generator=gen)
    w = torch.randn(n, k, generator=gen) * 0.05
    q, zeros, scales = gptq_quantize(w, inverse_hessian(x), bits, group)
    g = k if group == -1 else group
    assert q.shape == (k, n) and zeros.shape == scales.shape == (k // g, n)
    assert int(q.min()) >= 0 and int(q.max()) < 2**bits and int(zeros.min()) >= 1
    gptq = dequantize(q, zeros, scales, (torch.arange(k) // g).int())
    maxq = 2**bits - 1
    rtn = torch.empty_like(w)
    for j in range(0, k, g):  # the same grid, each weight rounded on its own
        s, z = group_params(w[:, j : j + g], maxq)
        rtn[:, j : j + g] = ((torch.round(w[:, j : j + g] / s[:, None]) + z[:, None]).clamp(0, maxq) - z[:, None]) * s[:, None]
    err = {name: float((x @ v.t() - x @ w.t()).pow(2).mean()) for name, v in (("gptq", gptq), ("rtn", rtn))}
    assert err["gptq"] < 0.5 * err["rtn"], err


@pytest.mark.slow  # four `llm-infer quantize` runs (module fixture)
def test_fp8_weights_are_the_originals_rounded_per_block(model, written):
    orig, ours = load_file(model / "model.safetensors"), load_file(written["fp8"] / "model.safetensors")
    p = "model.layers.1.self_attn.q_proj"
    w = orig[f"{p}.weight"].float()
    scale = ours[f"{p}.weight_scale_inv"]
    assert torch.allclose(scale, w.abs().amax() / 448 * torch.ones_like(scale))  # one 128 x 128 block
    deq = dequantize_fp8(ours[f"{p}.weight"], scale)
    # e4m3: 3 mantissa bits, so half an ulp is at most 1/16 of the value (subnormals: 2^-10 of the scale)
    assert ((deq - w).abs() <= w.abs() / 16 + float(scale.max()) * 2.0**-9).all()


def test_bits_belong_to_gptq(model, tmp_path):
    code, stderr = quantize(model, tmp_path / "x", "--method", "rtn", "--bits", "8")
    assert code == 2 and "--bits 8 is for --method gptq" in stderr


@pytest.mark.slow  # a MoE model quantized twice
@pytest.mark.parametrize("method", ["gptq", "fp8"])
def test_moe_model_quantized_per_expert(tmp_path, method):
    src = make_checkpoint(tmp_path / "moe", "qwen3_moe", seed=5, hidden_size=128, moe_intermediate_size=64,
                          num_hidden_layers=2, head_dim=32, norm_topk_prob=True)
    (tmp_path / "calib.txt").write_text(CALIB)
    code, stderr = quantize(src, tmp_path / method, "--method", method, calib=tmp_path / "calib.txt")
    assert code == 0, stderr
    assert f"model.layers.0.mlp.experts.7.down_proj.{'qweight' if method == 'gptq' else 'weight_scale_inv'}" in \
        load_file(tmp_path / method / "model.safetensors")
    want = hf_cached_greedy(reference_model(dense_copy(tmp_path / method, tmp_path / "dense")), PROMPT, 16)
    with LLM(tiny_engine_config(tmp_path / method), progress=False) as llm:
        assert_logits_and_tokens_match(engine_greedy(llm, PROMPT, 16), want)
