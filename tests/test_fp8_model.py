"""Block-wise FP8 checkpoints (Qwen3-*-FP8 layout: e4m3 weights, a `weight_scale_inv` (F32, BF16 or F16) per
128 x 128 block; written by tests/quantized_checkpoints.py from tiny random Qwen2 and Qwen3 models)
against transformers running the same model with every weight dequantized: fp32 logits within
1e-4 x max|logit| and 32 identical greedy tokens; blocks cut by the matrix edge, modules_to_not_convert,
TP=2 and PP=2 equal to TP=1, malformed tensors one-line errors naming the tensor. The CUDA W8A8 path
is in tests/test_fp8_kernels.py."""

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
from tests.quantized_checkpoints import write_fp8

PROMPT = [257, 72, 101, 108, 108, 111, 44, 32, 119, 111, 114, 108, 100, 33, 10, 84, 104, 101]
STEPS = 32
# Qwen2: whole 128-blocks everywhere, also per rank under TP=2. Qwen3: intermediate 320 (a block cut
# at 64 rows / inputs by the matrix edge), head_dim 48 (q/k/v parts off the block grid).
SHAPES = {"qwen2": dict(hidden_size=256, intermediate_size=512, num_hidden_layers=2),
          "qwen3": dict(hidden_size=192, intermediate_size=320, num_hidden_layers=2, head_dim=48)}
KEEP = ("mlp.down_proj", "self_attn.o_proj")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[tuple[str, bool], tuple[Path, Path]]:
    """(arch, with modules_to_not_convert) -> (FP8 checkpoint, its dequantized dense copy)."""
    root = tmp_path_factory.mktemp("fp8")
    out = {}
    for seed, (arch, shape) in enumerate(SHAPES.items()):
        src = make_checkpoint(root / arch, arch, seed=seed + 7, **shape)
        out[arch, False] = write_fp8(src, root / f"{arch}-fp8")
        out[arch, True] = write_fp8(src, root / f"{arch}-fp8-keep", keep=KEEP)
    return out


@pytest.mark.parametrize("kernels", ["auto", pytest.param("torch", marks=pytest.mark.slow)])
@pytest.mark.parametrize("arch,keep", [("qwen2", False), ("qwen3", False), ("qwen2", True), ("qwen3", True)])
def test_fp8_matches_transformers_on_its_dequantized_weights(checkpoints, arch, keep, kernels):
    path, dense = checkpoints[arch, keep]
    want = hf_cached_greedy(reference_model(dense), PROMPT, STEPS)
    with LLM(tiny_engine_config(path, kernels=kernels), progress=False) as llm:
        layer = introspect.decoder_layers(llm)[1]
        assert layer.mlp.gate_up_proj.weight.dtype == torch.float32, "dequantized at load on CPU"
        assert_logits_and_tokens_match(engine_greedy(llm, PROMPT, STEPS), want)


def test_modules_to_not_convert_load_their_dense_weights(checkpoints):
    path, _ = checkpoints["qwen2", True]
    names = load_file(path / "model.safetensors").keys()
    assert "model.layers.0.mlp.down_proj.weight_scale_inv" not in names
    assert "model.layers.0.mlp.gate_proj.weight_scale_inv" in names


BATCH = [PROMPT, PROMPT[:5], [65, 66, 67] * 9]


@pytest.mark.slow  # worker processes
@pytest.mark.parametrize("tp,pp,keep", [(2, 1, False), (1, 2, False), (2, 2, True)])
def test_fp8_parallel_layouts_match_tp1(checkpoints, tp, pp, keep):
    path, _ = checkpoints["qwen2", keep]
    assert_layout_matches_tp1(tiny_engine_config(path), {"tensor": tp, "pipeline": pp}, BATCH, STEPS)


@pytest.mark.slow  # worker processes (the workers find the mistake)
def test_input_split_off_the_block_grid_is_a_one_line_error(checkpoints):
    path, _ = checkpoints["qwen3", False]  # o_proj: 192 inputs, 96 per rank
    with pytest.raises(UserError, match=r"model.layers.0.self_attn.o_proj: 96 input features per rank is not a "
                                        r"whole number of FP8 blocks of 128"):
        LLM(tiny_engine_config(path, parallel={"tensor": 2}), progress=False)


W = "model.layers.1.mlp.gate_proj"
MALFORMED = {
    "weight dtype": (lambda t: t.update({f"{W}.weight": t[f"{W}.weight"].bfloat16()}),
                     rf"tensor {W}.weight does not fit the model: dtype BF16, expected F8_E4M3"),
    "scale dtype": (lambda t: t.update({f"{W}.weight_scale_inv": t[f"{W}.weight_scale_inv"].to(torch.int32)}),
                    rf"tensor {W}.weight_scale_inv does not fit the model: dtype I32, expected F32 or BF16 or F16"),
    "scale rows": (lambda t: t.update({f"{W}.weight_scale_inv": t[f"{W}.weight_scale_inv"][:1]}),
                   rf"tensor {W}.weight_scale_inv does not fit the model: expected 3 row blocks of 128 for 320 "
                   r"weight rows, checkpoint has shape \[1, 2\]"),
    "scale columns": (lambda t: t.update({f"{W}.weight_scale_inv": t[f"{W}.weight_scale_inv"][:, :1]}),
                      rf"tensor {W}.weight_scale_inv does not fit the model: expected shape \[320, 2\], "
                      r"checkpoint has \[320, 1\]"),
    "weight shape": (lambda t: t.update({f"{W}.weight": t[f"{W}.weight"][:, :-1]}),
                     rf"tensor {W}.weight does not fit the model: .*shape"),
    "missing scale": (lambda t: t.pop(f"{W}.weight_scale_inv"), rf"missing tensor {W}.weight_scale_inv"),
}


def _copy_with(path: Path, dst: Path, edit) -> Path:
    dst.mkdir()
    for f in path.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    tensors = load_file(path / "model.safetensors")
    edit(tensors)
    save_file({k: v.contiguous() for k, v in tensors.items()}, dst / "model.safetensors")
    return dst


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_scales_stored_in_half_precision_load_as_their_float32_values(checkpoints, tmp_path, dtype):
    """Qwen's published FP8 checkpoints store weight_scale_inv in BF16 or F16: the same values stored
    as F32 give the same logits."""
    path, _ = checkpoints["qwen3", False]

    def rounded(to: torch.dtype):
        def edit(t: dict) -> None:
            for k in [k for k in t if k.endswith("weight_scale_inv")]:
                t[k] = t[k].to(dtype).to(to)
        return edit
    half = _copy_with(path, tmp_path / "half", rounded(dtype))
    full = _copy_with(path, tmp_path / "full", rounded(torch.float32))
    assert load_file(half / "model.safetensors")[f"{W}.weight_scale_inv"].dtype == dtype
    outs = []
    for folder in (half, full):
        with LLM(tiny_engine_config(folder), progress=False) as llm:
            outs.append(engine_greedy(llm, PROMPT, 8))
    assert outs[0][0] == outs[1][0]
    assert torch.equal(outs[0][1], outs[1][1])


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_fp8_checkpoint_is_a_one_line_error_naming_the_tensor(checkpoints, tmp_path, case):
    edit, message = MALFORMED[case]
    path, _ = checkpoints["qwen3", False]
    broken = _copy_with(path, tmp_path / "broken", edit)
    with pytest.raises(UserError, match=message) as e:
        LLM(tiny_engine_config(broken), progress=False)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("raw,message", [
    ({"weight_block_size": None}, "FP8 checkpoints without weight_block_size"),
    ({"weight_block_size": [128]}, r"FP8 weight_block_size \[128\] is not supported"),
    ({"activation_scheme": "static"}, "FP8 activation_scheme 'static' is not supported"),
    ({"fmt": "e5m2"}, "FP8 fmt 'e5m2' is not supported"),
    ({"modules_to_not_convert": ["k_proj"]}, r"qkv_proj: modules_to_not_convert excludes only some of"),
])
def test_unsupported_fp8_settings_are_user_errors(checkpoints, tmp_path, raw, message):
    path, _ = checkpoints["qwen2", False]
    cfg = json.loads((path / "config.json").read_text())
    cfg["quantization_config"].update(raw)
    changed = tmp_path / "changed"
    changed.mkdir()
    for f in path.iterdir():
        (changed / f.name).write_bytes(f.read_bytes())
    (changed / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UserError, match=message):
        LLM(tiny_engine_config(changed), progress=False)
