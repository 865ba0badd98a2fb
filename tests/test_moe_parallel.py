"""MoE models under every parallel layout against TP=1 (logits within 1e-4, identical greedy tokens),
expert-parallel weight loading, and speculative decoding on a MoE target."""

from __future__ import annotations

import pytest
import torch

from llm_infer import LLM, SamplingParams
from llm_infer.kernels.dispatch import TORCH
from llm_infer.parallel.experts import FusedExperts
from llm_infer.parallel.state import ParallelState, get_parallel_state, set_parallel_state
from tests import introspect
from tests.checkpoints import make_checkpoint
from tests.conftest import tiny_engine_config

PROMPT = [257, 72, 101, 108, 108, 111, 44, 32, 119, 111, 114, 108, 100, 33, 10, 84, 104, 101]
BATCH = [PROMPT, PROMPT[:5], [65, 66, 67] * 9, [10, 11], list(range(70, 110))]
GREEDY32 = SamplingParams(max_tokens=32, temperature=0, ignore_eos=True)
SPEC_PROMPTS = [[257] + list(b"The cat sat on the mat. The cat sat on the"), [257] + list(b"abc abc abc abc ab")]


@pytest.fixture(scope="module")
def moe_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("moe-par")
    return {"qwen2_moe": make_checkpoint(root / "qwen2_moe", "qwen2_moe", seed=4, mlp_only_layers=[1]),
            "qwen3_moe": make_checkpoint(root / "qwen3_moe", "qwen3_moe", seed=4, norm_topk_prob=True,
                                         fused_experts=True)}


@pytest.fixture(scope="module")
def moe_refs(moe_models):
    refs = {}
    for name, path in moe_models.items():
        with LLM(tiny_engine_config(path), progress=False) as llm:
            refs[name] = (llm.logits(PROMPT), [o.token_ids for o in llm.generate(BATCH, GREEDY32)])
    return refs


LAYOUTS = [  # model, tensor, pipeline, expert_parallel
    ("qwen2_moe", 2, 1, False), ("qwen2_moe", 2, 1, True), ("qwen2_moe", 1, 2, False), ("qwen2_moe", 2, 2, False),
    ("qwen3_moe", 2, 1, False), ("qwen3_moe", 2, 1, True), ("qwen3_moe", 2, 2, True),
]


@pytest.mark.slow  # worker processes
@pytest.mark.parametrize("model,tp,pp,ep", LAYOUTS, ids=[f"{m}-tp{t}-pp{p}{'-ep' if e else ''}" for m, t, p, e in LAYOUTS])
def test_moe_layout_matches_tp1(moe_models, moe_refs, model, tp, pp, ep):
    ref_logits, ref_batch = moe_refs[model]
    cfg = tiny_engine_config(moe_models[model], parallel={"tensor": tp, "pipeline": pp, "expert_parallel": ep})
    with LLM(cfg, progress=False) as llm:
        torch.testing.assert_close(llm.logits(PROMPT), ref_logits, atol=1e-4, rtol=0)
        assert [o.token_ids for o in llm.generate(BATCH, GREEDY32)] == ref_batch
    assert introspect.worker_processes() == []


@pytest.mark.parametrize("spec", [{"method": "ngram"}, {"method": "draft", "draft_model": "SELF",
                                                         "draft_dtype": "float32"}], ids=["ngram", "draft-self"])
def test_speculation_on_a_moe_model_is_lossless(moe_models, spec):
    path = moe_models["qwen2_moe"]
    spec = {**spec, "draft_model": str(path)} if "draft_model" in spec else spec
    with LLM(tiny_engine_config(path), progress=False) as llm:
        plain = [o.token_ids for o in llm.generate(SPEC_PROMPTS, GREEDY32)]
    with LLM(tiny_engine_config(path, speculative=spec), progress=False) as llm:
        assert [o.token_ids for o in llm.generate(SPEC_PROMPTS, GREEDY32)] == plain
        assert introspect.spec_stats(llm).proposed > 0


@pytest.mark.slow  # worker processes
def test_ngram_speculation_on_a_moe_model_under_expert_parallelism(moe_models):
    path = moe_models["qwen3_moe"]
    with LLM(tiny_engine_config(path), progress=False) as llm:
        plain = [o.token_ids for o in llm.generate(SPEC_PROMPTS, GREEDY32)]
    cfg = tiny_engine_config(path, speculative={"method": "ngram"}, parallel={"tensor": 2, "expert_parallel": True})
    with LLM(cfg, progress=False) as llm:
        assert [o.token_ids for o in llm.generate(SPEC_PROMPTS, GREEDY32)] == plain


@pytest.mark.parametrize("ep,rank,experts,rows", [(False, 1, range(8), (16, 32)), (True, 1, range(4, 8), (32, 64))])
def test_each_rank_reads_only_its_experts_and_slices(ep, rank, experts, rows):
    """8 experts of size 32, hidden 64, TP=2: slices of every expert, or experts 4..7 whole."""
    saved = get_parallel_state()
    set_parallel_state(ParallelState(tp_size=2, tp_rank=rank, expert_parallel=ep))
    try:
        layer = FusedExperts(8, 64, 32, torch.float32, TORCH.moe)
    finally:
        set_parallel_state(saved)
    assert layer.experts == experts
    assert layer.gate_up_proj.shape == (len(experts), 2 * rows[0], 64)
    names = [n for n, _ in layer.checkpoint_names("m.experts", "down_proj", available=())]
    assert names == [f"m.experts.{e}.down_proj.weight" for e in experts]
    full = {p: torch.randn(8, *shape) for p, shape in [("gate", (32, 64)), ("up", (32, 64)), ("down", (64, 32))]}
    for name, shard in layer.checkpoint_names("m.experts", "gate_up_proj", available=()):
        part, e = shard
        layer.weight_loader(layer.gate_up_proj, full[part][e], shard)
    fused = torch.cat([full["gate"], full["up"]], dim=1)  # transformers' [E, 2I, H]
    local = torch.cat([full["gate"][experts.start:experts.stop, 16 * rank * (not ep):][:, :rows[0]],
                       full["up"][experts.start:experts.stop, 16 * rank * (not ep):][:, :rows[0]]], dim=1)
    torch.testing.assert_close(layer.gate_up_proj.data, local, atol=0, rtol=0)
    layer.gate_up_proj.data.zero_()
    assert layer.checkpoint_names("m.experts", "gate_up_proj", available={"m.experts.gate_up_proj"}) == [
        ("m.experts.gate_up_proj", ("fused", None))]
    layer.weight_loader(layer.gate_up_proj, fused, ("fused", None))
    torch.testing.assert_close(layer.gate_up_proj.data, local, atol=0, rtol=0)


def test_one_all_reduce_per_moe_block_covers_routed_and_shared_experts(monkeypatch):
    from llm_infer.parallel import linear
    from llm_infer.runtime.models import moe_block
    from llm_infer.runtime.models.decoder import make_mlp
    from llm_infer.runtime.models.model_config import ModelConfig
    from tests.test_moe_model import MOE_BASE

    calls = []
    monkeypatch.setattr(moe_block, "tp_all_reduce", lambda x: calls.append("block") or x)
    monkeypatch.setattr(linear, "tp_all_reduce", lambda x: calls.append("row-parallel") or x)
    cfg = ModelConfig.from_dict({**MOE_BASE, "architectures": ["Qwen2MoeForCausalLM"],
                                 "shared_expert_intermediate_size": 48})
    saved = get_parallel_state()
    set_parallel_state(ParallelState(tp_size=2, tp_rank=0))
    try:
        block = make_mlp(cfg, 0, torch.float32, TORCH, lambda prefix: linear.DenseLinearMethod(), "model.layers.0.mlp")
    finally:
        set_parallel_state(saved)
    for p in block.parameters():
        p.data.normal_()
    block(torch.randn(3, 64))
    assert calls == ["block"]


@pytest.mark.slow  # a Ray instance and its actors
def test_moe_tensor_parallel_under_ray_matches_tp1(moe_models, moe_refs):
    ray = pytest.importorskip("ray")  # conftest keeps Ray on 127.0.0.1
    ref_logits, ref_batch = moe_refs["qwen2_moe"]
    ray.init(num_cpus=4, include_dashboard=False, _node_ip_address="127.0.0.1", configure_logging=False)
    try:
        cfg = tiny_engine_config(moe_models["qwen2_moe"], parallel={"tensor": 2, "launcher": "ray"})
        with LLM(cfg, progress=False) as llm:
            torch.testing.assert_close(llm.logits(PROMPT), ref_logits, atol=1e-4, rtol=0)
            assert [o.token_ids for o in llm.generate(BATCH[:2], GREEDY32)] == ref_batch[:2]
    finally:
        ray.shutdown()
