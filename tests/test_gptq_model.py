"""GPTQ checkpoints (AutoGPTQ / GPTQModel layout, written by tests/quantized_checkpoints.py from
tiny random Qwen2 and Qwen3 models) against transformers running the same model with every
weight dequantized: fp32 logits within 1e-4 x max|logit| and 32 identical greedy tokens, for
int4/int8, sym/asym, act-order, group sizes 32/64/128/-1, v1/v2 zeros and q/k/v bias (Qwen2);
TP=2 and PP=2 equal to TP=1; malformed tensors are one-line errors naming the tensor."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from llm_infer import LLM
from llm_infer.errors import UserError
from tests import introspect
from tests.checkpoints import make_checkpoint, reference_model
from tests.conftest import tiny_engine_config
from tests.oracle import assert_layout_matches_tp1, assert_logits_and_tokens_match, engine_greedy, hf_cached_greedy
from tests.quantized_checkpoints import write_gptq

PROMPT = [257, 72, 101, 108, 108, 111, 44, 32, 119, 111, 114, 108, 100, 33, 10, 84, 104, 101]
STEPS = 32
# Hidden 128 and intermediate 256 so that every projection holds whole groups of 128.
SHAPE = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2)
# (arch, bits, group_size, sym, act-order, gptq_v2)
VARIANTS = [
    ("qwen2", 4, 128, True, False, False),
    ("qwen2", 4, 32, False, True, False),
    ("qwen2", 4, -1, False, False, False),
    ("qwen2", 8, 64, True, True, False),
    ("qwen2", 8, 128, False, False, True),
    ("qwen3", 4, 64, False, True, True),
    ("qwen3", 4, -1, True, True, False),
    ("qwen3", 8, 32, False, True, False),
]


def variant_id(v: tuple) -> str:
    arch, bits, group, sym, act, v2 = v
    return f"{arch}-int{bits}-g{group}-{'sym' if sym else 'asym'}{'-act' if act else ''}{'-v2' if v2 else ''}"


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("gptq-src")
    return {"qwen2": make_checkpoint(root / "qwen2", "qwen2", seed=5, **SHAPE),
            "qwen3": make_checkpoint(root / "qwen3", "qwen3", seed=6, head_dim=32, **SHAPE)}


def gptq(sources: dict[str, Path], root: Path, v: tuple) -> tuple[Path, Path]:
    arch, bits, group, sym, act, v2 = v
    return write_gptq(sources[arch], root / variant_id(v), bits=bits, group=group, sym=sym, act_order=act, v2=v2)


@pytest.mark.parametrize("v", VARIANTS, ids=[variant_id(v) for v in VARIANTS])
def test_gptq_matches_transformers_on_its_dequantized_weights(sources, tmp_path, v):
    path, dense = gptq(sources, tmp_path, v)
    want = hf_cached_greedy(reference_model(dense), PROMPT, STEPS)
    with LLM(tiny_engine_config(path), progress=False) as llm:
        layers = introspect.decoder_layers(llm)
        if v[1] == 4:
            assert hasattr(layers[0].self_attn.qkv_proj, "awq") and hasattr(layers[1].mlp.down_proj, "awq")
        if v[4]:  # act-order: down_proj reads gate_up's output as it comes (gate_up's rows were permuted)
            assert layers[0].mlp.down_proj.input_perm is None
        assert_logits_and_tokens_match(engine_greedy(llm, PROMPT, STEPS), want)


@pytest.mark.slow  # a second kernel set over the same variants
@pytest.mark.parametrize("v", [VARIANTS[1], VARIANTS[5]], ids=variant_id)
def test_gptq_on_the_torch_kernels(sources, tmp_path, v):
    path, dense = gptq(sources, tmp_path, v)
    want = hf_cached_greedy(reference_model(dense), PROMPT, STEPS)
    with LLM(tiny_engine_config(path, kernels="torch"), progress=False) as llm:
        assert_logits_and_tokens_match(engine_greedy(llm, PROMPT, STEPS), want)


BATCH = [PROMPT, PROMPT[:5], [65, 66, 67] * 9]
# act-order row shards of random groups (dequantized at load on each rank) and of whole groups.
DESC_IN_ORDER = ("qwen2", 4, 32, False, False, True)
PARALLEL = [(VARIANTS[1], 2, 1), (VARIANTS[1], 1, 2), (VARIANTS[2], 2, 1), (VARIANTS[6], 2, 1),
            (VARIANTS[7], 1, 2), (("qwen3", 4, 64, False, False, False), 2, 2), (DESC_IN_ORDER, 2, 1)]


@pytest.mark.slow  # worker processes
@pytest.mark.parametrize("v,tp,pp", PARALLEL, ids=[f"{variant_id(v)}-tp{t}-pp{p}" for v, t, p in PARALLEL])
def test_gptq_parallel_layouts_match_tp1(sources, tmp_path, v, tp, pp):
    path, _ = gptq(sources, tmp_path, v)
    if v == DESC_IN_ORDER:  # desc_act, g_idx in order: row shards are whole groups and keep only their scales
        cfg = json.loads((path / "config.json").read_text())
        cfg["quantization_config"]["desc_act"] = True
        (path / "config.json").write_text(json.dumps(cfg))
    assert_layout_matches_tp1(tiny_engine_config(path), {"tensor": tp, "pipeline": pp}, BATCH, STEPS)


@pytest.mark.slow  # worker processes (the workers find the mistake)
def test_shard_off_the_group_grid_is_a_one_line_error(sources, tmp_path):
    path, _ = gptq(sources, tmp_path, VARIANTS[0])  # o_proj: 128 inputs, one group of 128
    with pytest.raises(UserError, match=r"model.layers.0.self_attn.o_proj: 64 input features per rank is not a "
                                        r"whole number of GPTQ groups of 128"):
        LLM(tiny_engine_config(path, parallel={"tensor": 2}), progress=False)


def test_trivial_g_idx_without_desc_act_and_none_at_all_load(sources, tmp_path):
    path, dense = gptq(sources, tmp_path, VARIANTS[0])
    tensors = load_file(path / "model.safetensors")
    save_file({k: v for k, v in tensors.items() if not k.endswith("g_idx")}, path / "model.safetensors")
    want = hf_cached_greedy(reference_model(dense), PROMPT, 4)
    with LLM(tiny_engine_config(path), progress=False) as llm:
        assert_logits_and_tokens_match(engine_greedy(llm, PROMPT, 4), want)


def test_an_ordering_g_idx_is_honoured_even_without_desc_act(sources, tmp_path):
    path, dense = gptq(sources, tmp_path, VARIANTS[1])
    cfg = json.loads((path / "config.json").read_text())
    cfg["quantization_config"]["desc_act"] = False
    (path / "config.json").write_text(json.dumps(cfg))
    want = hf_cached_greedy(reference_model(dense), PROMPT, 4)
    with LLM(tiny_engine_config(path), progress=False) as llm:
        assert_logits_and_tokens_match(engine_greedy(llm, PROMPT, 4), want)


def _broken(sources: dict[str, Path], root: Path, edit) -> Path:
    path, _ = gptq(sources, root, VARIANTS[1])
    tensors = load_file(path / "model.safetensors")
    edit(tensors)
    save_file({k: v.contiguous() for k, v in tensors.items()}, path / "model.safetensors")
    return path


Q = "model.layers.1.self_attn.k_proj"
MALFORMED = {
    "qweight shape": (lambda t: t.update({f"{Q}.qweight": t[f"{Q}.qweight"][:-1]}),
                      rf"tensor {Q}.qweight does not fit the model: .*shape"),
    "scales shape": (lambda t: t.update({f"{Q}.scales": t[f"{Q}.scales"][:, :-8]}),
                     rf"tensor {Q}.scales does not fit the model: dim 1 has 56 rows, expected 64"),
    "qzeros shape": (lambda t: t.update({f"{Q}.qzeros": t[f"{Q}.qzeros"][:2]}),
                     rf"tensor {Q}.qzeros does not fit the model: .*shape"),
    "missing g_idx": (lambda t: t.pop(f"{Q}.g_idx"), rf"missing tensor {Q}.g_idx"),
    "scale dtype": (lambda t: t.update({f"{Q}.scales": t[f"{Q}.scales"].to(torch.int32)}),
                    rf"tensor {Q}.scales does not fit the model: dtype I32, expected F16 or BF16 or F32"),
    "qweight dtype": (lambda t: t.update({f"{Q}.qweight": t[f"{Q}.qweight"].float()}),
                      rf"tensor {Q}.qweight does not fit the model: dtype F32, expected I32"),
    "g_idx out of range": (lambda t: t[f"model.layers.0.mlp.down_proj.g_idx"].add_(100),
                           r"model.layers.0.mlp.down_proj.g_idx: groups 100..10\d, the layer has 8"),
    "g_idx groups unequal": (lambda t: t[f"model.layers.0.mlp.down_proj.g_idx"][:3].fill_(0),
                             r"model.layers.0.mlp.down_proj.g_idx: g_idx does not give every group exactly 32"),
    "g_idx differs within q/k/v": (lambda t: t.update({f"{Q}.g_idx": t[f"{Q}.g_idx"].flip(0).contiguous()}),
                                   rf"tensor {Q}.g_idx does not fit the model: differs from the g_idx"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_gptq_checkpoint_is_a_one_line_error_naming_the_tensor(sources, tmp_path, case):
    edit, message = MALFORMED[case]
    path = _broken(sources, tmp_path, edit)
    with pytest.raises(UserError, match=message) as e:
        LLM(tiny_engine_config(path), progress=False)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("raw,message", [
    ({"bits": 3}, "GPTQ bits=3 is not supported"),
    ({"group_size": 12}, "GPTQ group_size 12 is not supported"),
    ({"checkpoint_format": "marlin"}, "GPTQ checkpoint_format 'marlin' is not supported"),
    ({"lm_head": True}, "GPTQ-quantized LM head"),
])
def test_unsupported_gptq_settings_are_user_errors(sources, tmp_path, raw, message):
    path, _ = gptq(sources, tmp_path, VARIANTS[0])
    cfg = json.loads((path / "config.json").read_text())
    cfg["quantization_config"].update(raw)
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UserError, match=message):
        LLM(tiny_engine_config(path), progress=False)
