"""RoPE scaling (linear, dynamic NTK, yarn, llama3) against transformers, with prompts and decoding
past `original_max_position_embeddings` (dynamic: past `max_position_embeddings`)."""

from __future__ import annotations

import json

import pytest
import torch

from llm_infer import LLM
from llm_infer.errors import UserError
from llm_infer.runtime.layers.rope_scaling import RopeScaling
from llm_infer.runtime.models.model_config import ModelConfig
from tests.checkpoints import make_checkpoint, reference_model
from tests.conftest import tiny_engine_config
from tests.oracle import engine_greedy, hf_cached_greedy

ORIGINAL = 32  # pretraining context of the scaled checkpoints
PROMPT = [257] + [(7 * i) % 250 + 3 for i in range(47)]  # 48 tokens: past ORIGINAL
STEPS = 16

SCALINGS = {
    "linear": ({"rope_type": "linear", "factor": 2.0}, 512),
    "dynamic": ({"rope_type": "dynamic", "factor": 4.0}, ORIGINAL),  # max_position_embeddings is the original
    "yarn": ({"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": ORIGINAL}, 512),
    "yarn-mscale": ({"rope_type": "yarn", "factor": 8.0, "original_max_position_embeddings": ORIGINAL,
                     "beta_fast": 16, "beta_slow": 2, "mscale": 0.8, "mscale_all_dim": 0.5}, 512),
    "llama3": ({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                "original_max_position_embeddings": ORIGINAL}, 512),
}
CASES = [(arch, kind) for kind in SCALINGS for arch in ("qwen2", "llama")]


@pytest.fixture(scope="module")
def scaled_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("rope")
    return {(arch, kind): make_checkpoint(root / f"{arch}-{kind}", arch, seed=5, rope_parameters=dict(rope),
                                          max_position_embeddings=max_pos)
            for arch, kind in CASES for rope, max_pos in [SCALINGS[kind]]}


@pytest.mark.parametrize("arch,kind", CASES, ids=[f"{a}-{k}" for a, k in CASES])
def test_scaled_rope_matches_transformers_past_the_original_context(scaled_models, arch, kind):
    path = scaled_models[(arch, kind)]
    assert json.loads((path / "config.json").read_text())["rope_parameters"]["rope_type"] == SCALINGS[kind][0][
        "rope_type"], "transformers writes rope_parameters"
    ref_tokens, ref_logits = hf_cached_greedy(reference_model(path), PROMPT, STEPS)
    with LLM(tiny_engine_config(path), progress=False) as llm:
        ours = llm.logits(PROMPT)
        tokens, logits = engine_greedy(llm, PROMPT, STEPS)
    assert ref_logits.std() > 0.1
    torch.testing.assert_close(ours, ref_logits[: len(PROMPT)], atol=1e-4, rtol=0)
    assert tokens == ref_tokens
    torch.testing.assert_close(logits[: len(ref_logits)], ref_logits, atol=1e-4, rtol=0)


@pytest.mark.parametrize("kind", ["dynamic", "yarn"])
def test_torch_reference_kernels_agree(scaled_models, kind):
    path = scaled_models[("qwen2", kind)]
    ref_tokens, ref_logits = hf_cached_greedy(reference_model(path), PROMPT, STEPS)
    with LLM(tiny_engine_config(path, kernels="torch"), progress=False) as llm:
        tokens, logits = engine_greedy(llm, PROMPT, STEPS)
    assert tokens == ref_tokens
    torch.testing.assert_close(logits[: len(ref_logits)], ref_logits, atol=1e-4, rtol=0)


def test_context_length_follows_the_scaling():
    base = {"architectures": ["Qwen2ForCausalLM"], "hidden_size": 64, "intermediate_size": 128,
            "num_hidden_layers": 1, "num_attention_heads": 4, "vocab_size": 320, "max_position_embeddings": 32768}
    # Qwen2.5's documented YaRN setting: 4 x 32768.
    yarn = ModelConfig.from_dict({**base, "rope_scaling": {"type": "yarn", "factor": 4.0,
                                                           "original_max_position_embeddings": 32768}})
    assert (yarn.rope.rope_type, yarn.context_len) == ("yarn", 131072)
    assert ModelConfig.from_dict({**base, "rope_scaling": {"type": "dynamic", "factor": 2.0}}).context_len == 65536
    linear = ModelConfig.from_dict({**base, "rope_theta": 5e5, "rope_scaling": {"type": "linear", "factor": 8.0}})
    assert (linear.rope.theta, linear.context_len) == (5e5, 32768)  # legacy top-level rope_theta
    assert ModelConfig.from_dict(base).rope == RopeScaling(theta=10000.0)


def test_unsupported_rope_is_a_one_line_error():
    base = {"architectures": ["LlamaForCausalLM"], "hidden_size": 64, "intermediate_size": 128,
            "num_hidden_layers": 1, "num_attention_heads": 4, "vocab_size": 320}
    with pytest.raises(UserError, match=r"^x.json: rope type 'longrope' is not supported \(supported: default, "
                                        r"linear, dynamic, yarn, llama3\)$"):
        ModelConfig.from_dict({**base, "rope_parameters": {"rope_type": "longrope"}}, source="x.json")
    with pytest.raises(UserError, match="rope type 'linear' needs a 'factor'"):
        ModelConfig.from_dict({**base, "rope_scaling": {"type": "linear"}})
    with pytest.raises(UserError, match="partial_rotary_factor=0.5 is not supported"):
        ModelConfig.from_dict({**base, "partial_rotary_factor": 0.5})
