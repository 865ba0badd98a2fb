"""AWQ int4 mixture-of-experts checkpoints: one made by AutoAWQ (Qwen3-MoE,
tests/data/awq_tiny_qwen3_moe) and ours (`llm-infer quantize` on Qwen2-MoE with a shared expert
and a dense layer, and on Qwen3-MoE) load with every expert as its own int4 layers, match the
same model with the weights dequantized, and keep its greedy tokens."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from llm_infer import LLM, SamplingParams
from llm_infer.errors import ConfigError
from tests import introspect
from tests.checkpoints import make_checkpoint, reference_model
from tests.test_awq_model import config, dequantized_checkpoint
from tests.test_quantizer import CALIB, PROMPT, quantize

AUTOAWQ_MOE = Path(__file__).parent / "data" / "awq_tiny_qwen3_moe"
GREEDY = SamplingParams(max_tokens=32, temperature=0, ignore_eos=True)
# Whole AWQ groups of 64 in every projection: hidden 64, experts and shared expert 64 wide.
SHAPE = dict(hidden_size=64, intermediate_size=128, moe_intermediate_size=64)
OURS = {"qwen2_moe": dict(mlp_only_layers=[1], shared_expert_intermediate_size=64),
        "qwen3_moe": dict(norm_topk_prob=True)}


# Ours are quantized by `llm-infer quantize` (AWQ search over every expert): slow tier.
NAMES = ["autoawq", *(pytest.param(arch, marks=pytest.mark.slow) for arch in OURS)]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> Callable[[str], tuple[Path, Path]]:
    """name -> (AWQ checkpoint, the same with every int4 layer dequantized to fp32), made on first use."""
    root = tmp_path_factory.mktemp("awq-moe")
    (root / "calib.txt").write_text(CALIB)

    @functools.cache
    def get(name: str) -> tuple[Path, Path]:
        if name == "autoawq":
            return AUTOAWQ_MOE, dequantized_checkpoint(AUTOAWQ_MOE, root / "autoawq-dense")
        src = make_checkpoint(root / name, name, seed=3, **SHAPE, **OURS[name])
        code, stderr = quantize(src, root / f"{name}-awq", calib=root / "calib.txt")
        assert code == 0, stderr
        return root / f"{name}-awq", dequantized_checkpoint(root / f"{name}-awq", root / f"{name}-dense")

    return get


@pytest.mark.parametrize("kernels", ["torch", "auto"])
@pytest.mark.parametrize("name", NAMES)
def test_awq_moe_matches_its_dequantized_weights(checkpoints, name, kernels):
    awq, dense = checkpoints(name)
    with torch.no_grad():
        ref = reference_model(dense)(torch.tensor([PROMPT])).logits[0]
    with LLM(config(awq, kernels=kernels), progress=False) as llm:
        moe = introspect.decoder_layers(llm)[0].mlp
        assert hasattr(moe.experts[7].gate_up_proj, "awq") and hasattr(moe.experts[7].down_proj, "awq")
        assert moe.gate.weight.dtype == torch.float32, "the router stays dense"
        ours = llm.logits(PROMPT)
    assert ref.std() > 0.1
    # fp16 tensors upcast to fp32 on both sides; only the summation order differs (as for dense AWQ).
    torch.testing.assert_close(ours, ref, atol=1e-3, rtol=0)


@pytest.mark.parametrize("name", NAMES)
def test_awq_moe_greedy_tokens_match_the_dequantized_model(checkpoints, name):
    awq, dense = checkpoints(name)
    with LLM(config(dense), progress=False) as llm:
        want = llm.generate([PROMPT], GREEDY)[0].token_ids
    with LLM(config(awq), progress=False) as llm:
        assert llm.generate([PROMPT], GREEDY)[0].token_ids == want


@pytest.mark.slow  # quantizes both of ours
def test_our_moe_checkpoint_is_laid_out_per_expert_as_autoawq_writes_it(checkpoints):
    def layout(path: Path) -> dict[str, tuple]:
        with safe_open(str(path / "model.safetensors"), "pt") as f:
            return {k: (f.get_slice(k).get_dtype(), tuple(f.get_slice(k).get_shape())) for k in f.keys()
                    if k.startswith("model.layers.0.mlp.")}

    ours, autoawq = layout(checkpoints("qwen3_moe")[0]), layout(AUTOAWQ_MOE)
    assert ours == autoawq  # same shapes: hidden 64, 8 experts of 64, group 64
    assert ours["model.layers.0.mlp.experts.7.down_proj.qweight"] == ("I32", (64, 8))
    assert ours["model.layers.0.mlp.gate.weight"] == ("F16", (8, 64))
    qwen2 = layout(checkpoints("qwen2_moe")[0])
    assert {"model.layers.0.mlp.shared_expert.down_proj.qweight", "model.layers.0.mlp.shared_expert_gate.weight"
            } <= set(qwen2)


@pytest.mark.parametrize("arch", list(OURS))
def test_moe_scales_fold_without_changing_the_layer(tmp_path, arch):
    """Before rounding, AWQ's scaling is exact: the shared gate/up scale divided out of the norm
    (and taken by the router and the shared-expert gate), each down scale out of its expert's up
    rows. A MoE layer gives the same output before and after the scales are folded in."""
    from llm_infer.kernels.dispatch import TORCH
    from llm_infer.runtime.models.decoder import CausalLM
    from llm_infer.runtime.models.loader import load_weights
    from llm_infer.runtime.models.model_config import ModelConfig
    from llm_infer.runtime.quant import awq_quantizer as q

    src = make_checkpoint(tmp_path / "src", arch, seed=3, **SHAPE, **OURS[arch])
    cfg = ModelConfig.from_dir(src)
    model = CausalLM(cfg, torch.float32, TORCH)
    load_weights(model, src, progress=False)
    calib = q._Calibration(model, torch.randint(0, 256, (2, 48), generator=torch.Generator().manual_seed(0)))
    layer = model.model.layers[0]
    with torch.no_grad():
        x = model.model.embed_tokens(calib.ids)
        run = lambda: layer(x.clone(), None, calib.positions, model.model.rotary, calib.meta)  # noqa: E731
        inputs = q._record_inputs(layer, run)
        before, norm = inputs.pop("_out")[0], layer.post_attention_layernorm.weight.clone()
        q._apply_scales(layer, cfg, inputs, torch.arange(x.shape[0]), q.QuantizeOptions(group_size=64))
        after = run()[0]
    assert (layer.post_attention_layernorm.weight - norm).abs().max() > 1e-2, "the search chose no scaling"
    assert set(inputs) >= {f"down.{e}" for e in range(8)}
    assert before.std() > 0.05  # the MLP's output (the residual stream is separate)
    torch.testing.assert_close(after, before, atol=1e-5, rtol=1e-4)


def test_moe_group_size_must_divide_the_expert_width(tmp_path):
    src = make_checkpoint(tmp_path / "src", "qwen3_moe", hidden_size=128, intermediate_size=256,
                          moe_intermediate_size=96)
    code, stderr = quantize(src, tmp_path / "out")
    assert code == 2 and "error: group size 64 does not divide the model's moe_intermediate_size 96" in stderr


def test_expert_parallel_refuses_quantized_experts():
    with pytest.raises(ConfigError, match=r"^parallel.expert_parallel does not support quantized \(AWQ\) experts; "
                                          r"use tensor parallelism$"):
        LLM(config(AUTOAWQ_MOE, parallel={"expert_parallel": True}), progress=False)


@pytest.mark.slow  # worker processes
def test_tp2_shards_each_awq_expert_and_gives_tp1_tokens(tmp_path):
    """Group 32 so each rank's half of a 64-wide expert is a whole group."""
    src = make_checkpoint(tmp_path / "src", "qwen2_moe", seed=3, **SHAPE, **OURS["qwen2_moe"])
    (tmp_path / "calib.txt").write_text(CALIB)
    code, stderr = quantize(src, tmp_path / "awq", "--group-size", "32", calib=tmp_path / "calib.txt")
    assert code == 0, stderr
    batch = [PROMPT, PROMPT[:7], [65, 66, 67, 68] * 5]
    with LLM(config(tmp_path / "awq"), progress=False) as llm:
        want, want_logits = [o.token_ids for o in llm.generate(batch, GREEDY)], llm.logits(PROMPT)
    with LLM(config(tmp_path / "awq", parallel={"tensor": 2}), progress=False) as llm:
        assert [o.token_ids for o in llm.generate(batch, GREEDY)] == want
        torch.testing.assert_close(llm.logits(PROMPT), want_logits, atol=1e-4, rtol=0)
