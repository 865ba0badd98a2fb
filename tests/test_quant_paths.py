"""GPTQ and block-wise FP8 checkpoints on the paths AWQ runs besides plain decoding: mixture-of-experts
models (every expert its own quantized layers), speculation with a quantized draft model, and the
int8 LM head option. Oracles: transformers on the dequantized weights, and the same engine without
speculation. (TP and PP: tests/test_gptq_model.py, tests/test_fp8_model.py.)"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from llm_infer import LLM, SamplingParams
from llm_infer.kernels.torch_ref import quantize_int8_rows
from tests import introspect
from tests.checkpoints import make_checkpoint, reference_model
from tests.conftest import tiny_engine_config
from tests.oracle import assert_logits_and_tokens_match, engine_greedy, hf_cached_greedy
from tests.quantized_checkpoints import write_fp8, write_gptq

PROMPT = [257, 72, 101, 108, 108, 111, 44, 32, 119, 111, 114, 108, 100, 33, 10, 84, 104, 101]
WRITERS = {"gptq-int4-act": lambda src, dst: write_gptq(src, dst, bits=4, group=32, sym=False, act_order=True),
           "gptq-int8": lambda src, dst: write_gptq(src, dst, bits=8, group=64),
           "fp8": lambda src, dst: write_fp8(src, dst)}


@pytest.fixture(scope="module")
def dense_qwen2(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("paths") / "qwen2", "qwen2", seed=11, hidden_size=128,
                           intermediate_size=256, num_hidden_layers=2)


@pytest.mark.slow  # three MoE checkpoints and their transformers references
@pytest.mark.parametrize("fmt", list(WRITERS))
def test_moe_experts_are_quantized_layers_matching_transformers(tmp_path, fmt):
    src = make_checkpoint(tmp_path / "moe", "qwen3_moe", seed=12, hidden_size=128, moe_intermediate_size=64,
                          num_hidden_layers=2, head_dim=32, norm_topk_prob=True)
    path, dense = WRITERS[fmt](src, tmp_path / fmt)
    want = hf_cached_greedy(reference_model(dense), PROMPT, 24)
    with LLM(tiny_engine_config(path), progress=False) as llm:
        expert = introspect.decoder_layers(llm)[0].mlp.experts[7]
        assert type(expert.down_proj.linear_method).__name__ == ("FP8" if fmt == "fp8" else "GPTQ") + "LinearMethod"
        assert_logits_and_tokens_match(engine_greedy(llm, PROMPT, 24), want)


@pytest.mark.slow  # speculative engines
@pytest.mark.parametrize("fmt", ["gptq-int4-act", "fp8"])
def test_a_quantized_draft_model_proposes_what_its_target_would_choose(dense_qwen2, tmp_path, fmt):
    path, _ = WRITERS[fmt](dense_qwen2, tmp_path / fmt)
    params = SamplingParams(max_tokens=24, temperature=0, ignore_eos=True)
    prompts = [PROMPT, [65, 66, 67] * 5]
    with LLM(tiny_engine_config(path), progress=False) as llm:
        plain = [o.token_ids for o in llm.generate(prompts, params)]
    draft = {"method": "draft", "draft_model": str(path), "draft_dtype": "float32", "num_tokens": 3}
    with LLM(tiny_engine_config(path, speculative=draft), progress=False) as llm:
        assert [o.token_ids for o in llm.generate(prompts, params)] == plain
        assert introspect.spec_stats(llm).accepted > 0, "a self-draft's proposals are accepted"


@pytest.mark.parametrize("fmt", ["gptq-int4-act", "fp8"])
def test_int8_lm_head_on_a_quantized_checkpoint(dense_qwen2, tmp_path, fmt):
    path, dense = WRITERS[fmt](dense_qwen2, tmp_path / fmt)
    hf = reference_model(dense)
    q, scales = quantize_int8_rows(hf.lm_head.weight.data)
    hf.lm_head.weight = torch.nn.Parameter(q.float() * scales[:, None])
    want = hf_cached_greedy(hf, PROMPT, 16)
    with LLM(tiny_engine_config(path, quantization={"lm_head": "int8"}), progress=False) as llm:
        assert_logits_and_tokens_match(engine_greedy(llm, PROMPT, 16), want)
