"""Qwen2-MoE and Qwen3-MoE against transformers (fp32): logits within 1e-4 through the paged cache,
32 greedy tokens identical, from both checkpoint layouts; MoE options we do not implement are
one-line errors."""

from __future__ import annotations

import pytest
import torch

from llm_infer import LLM
from llm_infer.errors import ConfigError, UserError
from llm_infer.runtime.models.model_config import ModelConfig
from tests.checkpoints import make_checkpoint, reference_model
from tests.conftest import tiny_engine_config
from tests.oracle import engine_greedy, hf_cached_greedy

PROMPT = [257, 72, 101, 108, 108, 111, 44, 32, 119, 111, 114, 108, 100, 33, 10, 84, 104, 101, 32, 99, 97, 116]
# Qwen2-MoE: shared expert, layer 1 dense (mlp_only_layers); Qwen3-MoE: norm_topk_prob, explicit head_dim.
MOE_ARCHS = {"qwen2_moe": dict(mlp_only_layers=[1]), "qwen3_moe": dict(norm_topk_prob=True, head_dim=32)}
CASES = [(arch, layout, kernels) for arch in MOE_ARCHS for layout in ("per-expert", "fused")
         for kernels in ("torch", "auto")]


@pytest.fixture(scope="module")
def moe_checkpoints(tmp_path_factory) -> dict[tuple[str, str], object]:
    root = tmp_path_factory.mktemp("moe")
    return {(arch, layout): make_checkpoint(root / f"{arch}-{layout}", arch, seed=11,
                                            fused_experts=layout == "fused", **extra)
            for arch, extra in MOE_ARCHS.items() for layout in ("per-expert", "fused")}


@pytest.fixture(scope="module")
def moe_references(moe_checkpoints):
    """transformers' 32 greedy tokens and per-position logits for each MoE architecture."""
    return {arch: hf_cached_greedy(reference_model(moe_checkpoints[(arch, "per-expert")]), PROMPT, 32)
            for arch in MOE_ARCHS}


@pytest.mark.parametrize("arch,layout,kernels", CASES, ids=["-".join(c) for c in CASES])
def test_moe_matches_transformers(moe_checkpoints, moe_references, arch, layout, kernels):
    path = moe_checkpoints[(arch, layout)]
    ref_tokens, ref_logits = moe_references[arch]
    assert ref_logits.std() > 0.1
    with LLM(tiny_engine_config(path, kernels=kernels), progress=False) as llm:
        torch.testing.assert_close(llm.logits(PROMPT), ref_logits[: len(PROMPT)], atol=1e-4, rtol=0)
        tokens, logits = engine_greedy(llm, PROMPT, 32)
    assert tokens == ref_tokens
    torch.testing.assert_close(logits[: len(ref_logits)], ref_logits, atol=1e-4, rtol=0)


def test_both_layouts_are_what_transformers_writes(moe_checkpoints):
    from safetensors import safe_open

    def keys(layout):
        with safe_open(str(moe_checkpoints[("qwen2_moe", layout)] / "model.safetensors"), "pt") as f:
            return set(f.keys())

    assert "model.layers.0.mlp.experts.7.down_proj.weight" in keys("per-expert")
    assert {"model.layers.0.mlp.experts.gate_up_proj", "model.layers.0.mlp.experts.down_proj"} <= keys("fused")
    assert "model.layers.1.mlp.gate_proj.weight" in keys("fused"), "layer 1 is dense (mlp_only_layers)"


def test_chunked_prefill_gives_the_same_logits(moe_checkpoints):
    path = moe_checkpoints[("qwen2_moe", "per-expert")]
    with LLM(tiny_engine_config(path), progress=False) as whole:
        want = whole.logits(PROMPT)
    with LLM(tiny_engine_config(path, scheduler={"max_num_batched_tokens": 5}), progress=False) as chunked:
        torch.testing.assert_close(chunked.logits(PROMPT), want, atol=1e-5, rtol=0)


MOE_BASE = {"architectures": ["Qwen3MoeForCausalLM"], "hidden_size": 64, "intermediate_size": 128,
            "num_hidden_layers": 2, "num_attention_heads": 4, "vocab_size": 320, "num_experts": 8,
            "num_experts_per_tok": 2, "moe_intermediate_size": 32}


@pytest.mark.parametrize("key,value", [("scoring_func", "sigmoid"), ("routed_scaling_factor", 2.5),
                                       ("n_group", 4), ("topk_method", "noaux_tc")])
def test_unknown_routing_option_is_a_one_line_error(key, value):
    with pytest.raises(UserError, match=rf"^c.json: MoE routing option {key}={value!r} is not supported$"):
        ModelConfig.from_dict({**MOE_BASE, key: value}, source="c.json")
    ModelConfig.from_dict({**MOE_BASE, "scoring_func": "softmax", "routed_scaling_factor": 1.0})  # neutral values


def test_moe_config_mistakes_are_one_line_errors():
    with pytest.raises(UserError, match="missing required key 'moe_intermediate_size'"):
        ModelConfig.from_dict({k: v for k, v in MOE_BASE.items() if k != "moe_intermediate_size"})
    with pytest.raises(UserError, match="missing required key 'shared_expert_intermediate_size'"):
        ModelConfig.from_dict({**MOE_BASE, "architectures": ["Qwen2MoeForCausalLM"]})
    with pytest.raises(UserError, match="num_experts_per_tok=9 must be between 1 and num_experts=8"):
        ModelConfig.from_dict({**MOE_BASE, "num_experts_per_tok": 9})
    cfg = ModelConfig.from_dict({**MOE_BASE, "decoder_sparse_step": 2, "mlp_only_layers": [3]})
    assert [cfg.moe.is_sparse(i) for i in range(4)] == [False, True, False, False]


def test_expert_parallel_sizes_are_checked_before_starting_workers(moe_checkpoints, tiny_models):
    path = moe_checkpoints[("qwen3_moe", "per-expert")]  # 8 experts, expert size 32
    with pytest.raises(ConfigError, match=r"^parallel.tensor=3 does not divide the model's 8 experts for expert "
                                          r"parallelism \(valid sizes: 1, 2, 4, 8\)$"):
        LLM(tiny_engine_config(path, parallel={"tensor": 3, "expert_parallel": True}), progress=False)
    with pytest.raises(ConfigError, match="expert_parallel needs a mixture-of-experts model"):
        LLM(tiny_engine_config(tiny_models["qwen2"], parallel={"expert_parallel": True}), progress=False)
