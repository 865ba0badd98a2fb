"""Every model path against transformers: logits within 1e-4 (fp32), greedy tokens identical."""

from __future__ import annotations

import shutil

import pytest
import torch

from llm_infer import LLM, SamplingParams
from tests.checkpoints import reference_model
from tests.conftest import tiny_engine_config
from tests.oracle import engine_greedy

ARCHS = ["qwen2", "qwen3", "llama"]
PROMPT = [257, 72, 101, 108, 108, 111, 44, 32, 119, 111, 114, 108, 100, 33, 10, 84, 104, 101, 32, 99, 97, 116]


def hf_greedy(hf, prompt: list[int], steps: int) -> tuple[list[int], torch.Tensor]:
    ids = list(prompt)
    for _ in range(steps):
        with torch.no_grad():
            logits = hf(torch.tensor([ids])).logits[0]
        ids.append(int(logits[-1].argmax()))
    with torch.no_grad():
        full = hf(torch.tensor([ids[:-1]])).logits[0]
    return ids[len(prompt):], full


@pytest.fixture(scope="module", params=[(a, k) for a in ARCHS for k in ("torch", "auto")],
                ids=lambda p: f"{p[0]}-{p[1]}")
def pair(request, tiny_models):
    arch, kernels = request.param
    path = tiny_models[arch]
    llm = LLM(tiny_engine_config(path, kernels=kernels), progress=False)
    if kernels == "auto" and shutil.which("c++"):
        assert llm.worker_info()["kernels"] == "cpu", "the C++ CPU kernels should be in use"
    yield llm, reference_model(path)
    llm.close()


def test_prompt_logits_match_transformers(pair):
    llm, hf = pair
    ours = llm.logits(PROMPT)
    with torch.no_grad():
        ref = hf(torch.tensor([PROMPT])).logits[0]
    assert ours.shape == ref.shape
    assert ref.std() > 0.1, "the oracle's logits must be spread out for the comparison to mean anything"
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=0)


def test_decode_through_paged_cache_matches_transformers(pair):
    llm, hf = pair
    ref_tokens, ref_logits = hf_greedy(hf, PROMPT, 32)
    tokens, logits = engine_greedy(llm, PROMPT, 32)
    assert tokens == ref_tokens
    # Prompt positions come from the prefill, the rest from 31 one-token decode steps over the cache.
    torch.testing.assert_close(logits[: len(ref_logits)], ref_logits, atol=1e-4, rtol=0)


def test_chunked_prefill_gives_the_same_logits(tiny_models):
    path = tiny_models["qwen2"]
    whole = LLM(tiny_engine_config(path), progress=False)
    chunked = LLM(tiny_engine_config(path, scheduler={"max_num_batched_tokens": 5}), progress=False)
    torch.testing.assert_close(chunked.logits(PROMPT), whole.logits(PROMPT), atol=1e-5, rtol=0)


@pytest.mark.parametrize("arch", ["qwen2", "llama"])  # untied head; head tied to the embeddings
def test_int8_lm_head_matches_transformers_with_that_head(tiny_models, arch):
    """`quantization.lm_head: int8`: transformers given the head our quantizer makes (int8 with one
    scale per vocabulary row, dequantized) is the oracle; four prompts decoded together must
    equal each decoded alone (the head's rows do not depend on the batch)."""
    from llm_infer.kernels.torch_ref import quantize_int8_rows

    llm = LLM(tiny_engine_config(tiny_models[arch], quantization={"lm_head": "int8"}), progress=False)
    hf = reference_model(tiny_models[arch])
    q, scales = quantize_int8_rows(hf.lm_head.weight.data)
    hf.lm_head.weight = torch.nn.Parameter(q.float() * scales[:, None])  # unties it from the embeddings
    try:
        ref_tokens, ref_logits = hf_greedy(hf, PROMPT, 16)
        tokens, logits = engine_greedy(llm, PROMPT, 16)
        assert tokens == ref_tokens
        torch.testing.assert_close(logits[: len(ref_logits)], ref_logits, atol=1e-4, rtol=0)
        prompts = [PROMPT, PROMPT[:7], PROMPT[3:], [257, 65, 66]]
        greedy = SamplingParams(max_tokens=12, temperature=0, ignore_eos=True)
        together = [o.token_ids for o in llm.generate(prompts, greedy)]
        assert together == [llm.generate([p], greedy)[0].token_ids for p in prompts]
    finally:
        llm.close()
