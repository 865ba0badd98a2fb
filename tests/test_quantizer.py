"""`llm-infer quantize`: its output is an AutoAWQ-format folder that reloads, dequantizes to
within quantization error of the original, and beats round-to-nearest."""

from __future__ import annotations

import contextlib
import io
import json

import pytest
import torch
from safetensors.torch import load_file

from llm_infer import LLM
from llm_infer.entrypoints.cli import main
from llm_infer.errors import UserError
from llm_infer.kernels.awq_torch import dequantize_awq
from llm_infer.runtime.quant.awq_search import fake_quantize, quantize_groups, search_scales
from tests.checkpoints import make_checkpoint
from tests.conftest import tiny_engine_config

CALIB = " ".join(f"Sentence number {i} talks about apples, rivers, code and {i * 7} clocks." for i in range(200))
PROMPT = [257, 72, 101, 108, 108, 111, 44, 32, 119, 111, 114, 108, 100, 33, 10, 84, 104, 101, 32, 99, 97, 116]


def quantize(model, out, *extra, calib=None) -> tuple[int, str]:
    """`llm-infer quantize ...`, in-process: its exit code and what it wrote to stderr."""
    args = ["quantize", "--model", str(model), "--out", str(out), "--group-size", "64", "--samples", "8",
            "--seq-len", "64", *extra]
    if calib:
        args += ["--calib", str(calib)]
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        code = main(args)
    return code, stderr.getvalue()


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    # hidden 128 / intermediate 256: whole groups of 64; initializer large enough for outliers to matter
    return make_checkpoint(tmp_path_factory.mktemp("q") / "src", "qwen2", hidden_size=128, intermediate_size=256,
                           num_attention_heads=4, num_key_value_heads=2, seed=2)


@pytest.fixture(scope="module")
def quantized(model, tmp_path_factory):
    root = tmp_path_factory.mktemp("out")
    calib = root / "calib.txt"
    calib.write_text(CALIB)
    code, stderr = quantize(model, root / "awq", calib=calib)
    assert code == 0, stderr
    code, stderr = quantize(model, root / "rtn", "--method", "rtn")
    assert code == 0, stderr
    return root / "awq", root / "rtn"


def test_quantize_groups_round_trips_within_half_a_step():
    w = torch.randn(16, 128)
    q, zeros, scales = quantize_groups(w, 64)
    assert q.max() <= 15 and zeros.max() <= 15
    err = (fake_quantize(w, 64) - w).abs().reshape(16, 2, 64)
    assert (err <= scales[..., None] * 0.5 + 1e-6).all()


def test_scale_search_lowers_the_output_error_of_an_outlier_channel():
    torch.manual_seed(0)
    x = torch.randn(512, 128)
    x[:, 3] *= 30  # one salient input channel, as LLM activations have
    w = torch.randn(64, 128)
    s = search_scales([w], x, 64)
    plain = ((x @ fake_quantize(w, 64).t() - x @ w.t()) ** 2).mean()
    scaled = (((x / s) @ fake_quantize(w * s, 64).t() - x @ w.t()) ** 2).mean()
    assert scaled < 0.8 * plain and s[3] > s.median()


def test_output_is_autoawq_format_and_dequantizes_close_to_the_original(model, quantized):
    awq_dir, _ = quantized
    cfg = json.loads((awq_dir / "config.json").read_text())
    assert cfg["quantization_config"] == {"quant_method": "awq", "bits": 4, "group_size": 64, "zero_point": True,
                                          "version": "gemm", "modules_to_not_convert": None}
    assert (awq_dir / "tokenizer.json").is_file()
    ours, orig = load_file(awq_dir / "model.safetensors"), load_file(model / "model.safetensors")
    qw = ours["model.layers.0.mlp.gate_proj.qweight"]
    assert qw.dtype == torch.int32 and qw.shape == (128, 256 // 8)
    assert ours["model.layers.0.mlp.gate_proj.scales"].shape == (2, 256)
    # RTN weights are the original ones quantized (no scaling folded in): compare directly.
    _, rtn_dir = quantized
    rtn = load_file(rtn_dir / "model.safetensors")
    for name in ("self_attn.q_proj", "mlp.down_proj"):
        p = f"model.layers.1.{name}"
        w = dequantize_awq(rtn[f"{p}.qweight"], rtn[f"{p}.qzeros"], rtn[f"{p}.scales"], 64)
        step = rtn[f"{p}.scales"].float().t().repeat_interleave(64, dim=1)
        assert ((w - orig[f"{p}.weight"].float()).abs() <= step * 0.5 + 1e-3).all()


def test_awq_output_is_closer_to_the_original_than_round_to_nearest(model, quantized):
    awq_dir, rtn_dir = quantized
    with LLM(tiny_engine_config(model), progress=False) as llm:
        ref = llm.logits(PROMPT)
    errors = {}
    for name, path in (("awq", awq_dir), ("rtn", rtn_dir)):
        with LLM(tiny_engine_config(path), progress=False) as llm:
            errors[name] = float((llm.logits(PROMPT) - ref).pow(2).mean())
    assert errors["awq"] < errors["rtn"], errors


def test_quantize_mistakes(model, tmp_path, quantized):
    code, stderr = quantize(model, tmp_path / "x", "--group-size", "96")
    assert code == 2 and "error: group size 96 does not divide" in stderr
    code, stderr = quantize(quantized[0], tmp_path / "y")
    assert code == 2 and "is already quantized" in stderr
    code, stderr = quantize(model, quantized[0])
    assert code == 2 and "already exists" in stderr
    with pytest.raises(UserError, match="fewer than one sample"):
        from llm_infer.entrypoints.quantize import calibration_tokens
        from llm_infer.runtime.tokenizer import Tokenizer

        calibration_tokens("short", Tokenizer(model), 4, 64)


def test_the_default_group_size_is_128_where_it_fits_else_the_largest_that_does(tiny_models, tmp_path, capsys):
    """The tiny Qwen2's widths are 64 (hidden, attention) and 128: 128 does not divide 64."""
    code = main(["quantize", "--model", str(tiny_models["qwen2"]), "--out", str(tmp_path / "q"), "--method", "rtn"])
    assert code == 0, capsys.readouterr().err
    assert json.loads((tmp_path / "q" / "config.json").read_text())["quantization_config"]["group_size"] == 64
    capsys.readouterr()
    assert main(["quantize", "--model", str(tiny_models["qwen2"]), "--out", str(tmp_path / "q2"),
                 "--group-size", "128"]) == 2
    assert capsys.readouterr().err.strip() == ("error: group size 128 does not divide the model's hidden_size 64, "
                                               "attention width 64 (group sizes that fit: 32, 64)")
    assert main(["quantize", "--model", str(tiny_models["qwen2"]), "--out", str(tmp_path / "q3"),
                 "--group-size", "0"]) == 2
    assert capsys.readouterr().err.strip() == "error: group size must be a positive multiple of 32 (got 0)"
