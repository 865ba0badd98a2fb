"""An AutoAWQ-produced checkpoint (tests/data/awq_tiny_qwen2, made by autoawq 0.2.9) loads and
matches a dequantize-then-matmul reference, alone and sharded under tensor parallelism."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from llm_infer import LLM, SamplingParams
from llm_infer.errors import UserError
from llm_infer.kernels.awq_torch import dequantize_awq
from tests import introspect
from tests.checkpoints import reference_model

AWQ_DIR = Path(__file__).parent / "data" / "awq_tiny_qwen2"
PROMPT = [257, 72, 101, 108, 108, 111, 44, 32, 119, 111, 114, 108, 100, 33, 10, 84, 104, 101, 32]
PROJ = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
        "mlp.up_proj", "mlp.down_proj"]


def config(path: Path, **extra) -> dict:
    cfg = {"model": str(path), "dtype": "float32", "device": "cpu", "cache": {"block_size": 4, "num_blocks": 128}}
    cfg.update(extra)
    return cfg


def dequantized_checkpoint(src: Path, dst: Path, keep_quantized: set[str] = frozenset()) -> Path:
    """The same model with every AWQ linear (but `keep_quantized`) replaced by its fp32 dequantised weight."""
    shutil.copytree(src, dst)
    tensors = load_file(src / "model.safetensors")
    group = json.loads((src / "config.json").read_text())["quantization_config"]["group_size"]
    out = {k: v.float() for k, v in tensors.items() if not k.endswith(("qweight", "qzeros", "scales"))}
    for name in {k.rsplit(".", 1)[0] for k in tensors if k.endswith(".qweight")}:
        if name in keep_quantized:
            out.update({f"{name}.{p}": tensors[f"{name}.{p}"] for p in ("qweight", "qzeros", "scales")})
        else:
            out[f"{name}.weight"] = dequantize_awq(tensors[f"{name}.qweight"], tensors[f"{name}.qzeros"],
                                                   tensors[f"{name}.scales"], group)
    save_file(out, dst / "model.safetensors")
    cfg = json.loads((src / "config.json").read_text())
    if keep_quantized:
        cfg["quantization_config"]["modules_to_not_convert"] = sorted(
            {n for n in (k.rsplit(".", 1)[0] for k in out if k.endswith(".weight") and "proj" in k)})
    else:
        del cfg["quantization_config"]
    cfg["dtype"] = "float32"
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    dense = dequantized_checkpoint(AWQ_DIR, tmp_path_factory.mktemp("awq") / "dense")
    with torch.no_grad():
        logits = reference_model(dense)(torch.tensor([PROMPT])).logits[0]
    return dense, logits


@pytest.mark.parametrize("kernels", ["torch", "auto"])
def test_autoawq_checkpoint_matches_dequantize_then_matmul(reference, kernels):
    _, ref = reference
    with LLM(config(AWQ_DIR, kernels=kernels), progress=False) as llm:
        layer = introspect.decoder_layers(llm)[0].self_attn.qkv_proj
        assert hasattr(layer, "awq"), "the linear layers must stay int4"
        ours = llm.logits(PROMPT)
    assert ref.std() > 0.1
    # fp16 tensors upcast to fp32 on both sides; only the summation order differs.
    torch.testing.assert_close(ours, ref, atol=1e-3, rtol=0)


def test_greedy_tokens_match_the_dense_reference(reference):
    dense, _ = reference
    params = SamplingParams(max_tokens=24, temperature=0, ignore_eos=True)
    with LLM(config(dense), progress=False) as llm:
        want = llm.generate([PROMPT], params)[0].token_ids
    with LLM(config(AWQ_DIR), progress=False) as llm:
        assert llm.generate([PROMPT], params)[0].token_ids == want


@pytest.mark.slow  # worker processes
def test_tp2_on_awq_gives_tp1_tokens():
    params = SamplingParams(max_tokens=32, temperature=0, ignore_eos=True)
    batch = [PROMPT, PROMPT[:7], [65, 66, 67, 68] * 5]
    with LLM(config(AWQ_DIR), progress=False) as llm:
        want = [o.token_ids for o in llm.generate(batch, params)]
        want_logits = llm.logits(PROMPT)
    with LLM(config(AWQ_DIR, parallel={"tensor": 2}), progress=False) as llm:
        assert [o.token_ids for o in llm.generate(batch, params)] == want
        torch.testing.assert_close(llm.logits(PROMPT), want_logits, atol=1e-4, rtol=0)


@pytest.mark.slow  # worker processes (the workers find the mistake)
def test_shard_off_a_group_boundary_is_a_one_line_error():
    # o_proj has 256 inputs: 4 ranks would get 64 each, half an AWQ group of 128.
    with pytest.raises(UserError, match=r"model.layers.0.self_attn.o_proj: 64 input features per rank is not a "
                                          r"whole number of AWQ groups of 128"):
        LLM(config(AWQ_DIR, parallel={"tensor": 4}), progress=False)


def test_modules_to_not_convert_stay_dense(reference, tmp_path):
    _, ref = reference
    keep = {f"model.layers.{i}.{p}" for i in range(2) for p in PROJ if "mlp" in p}
    mixed = dequantized_checkpoint(AWQ_DIR, tmp_path / "mixed", keep_quantized=keep)
    with LLM(config(mixed), progress=False) as llm:
        layers = introspect.decoder_layers(llm)
        assert hasattr(layers[0].mlp.gate_up_proj, "awq")
        assert not hasattr(layers[0].self_attn.qkv_proj, "awq")
        torch.testing.assert_close(llm.logits(PROMPT), ref, atol=1e-3, rtol=0)


def test_unsupported_quantization_is_a_user_error(tmp_path):
    path = shutil.copytree(AWQ_DIR, tmp_path / "bnb")
    cfg = json.loads((path / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "bitsandbytes", "bits": 4}
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UserError, match="quantization method 'bitsandbytes' is not supported"):
        LLM(config(path), progress=False)
