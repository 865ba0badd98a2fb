"""End to end on a GPU (`pytest -m gpu`; skipped without CUDA): our CUDA kernels on vs off,
CUDA graphs on vs off, AWQ through the CUDA kernels, against the torch reference path."""

from __future__ import annotations

import pytest
import torch

from llm_infer import LLM, SamplingParams
from tests.checkpoints import QWEN2_05B, make_checkpoint
from tests.test_awq_model import AWQ_DIR

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]
PROMPTS = [[257, 72, 101, 108, 108, 111, 44, 32, 119, 111, 114, 108, 100], [84, 104, 101] * 30, [65, 66]]


def config(path, **extra) -> dict:
    cfg = {"model": str(path), "dtype": "bfloat16", "device": "cuda", "cache": {"block_size": 16, "num_blocks": 512},
           "scheduler": {"max_model_len": 512, "max_num_seqs": 8}}
    cfg.update(extra)
    return cfg


@pytest.fixture(scope="module")
def qwen2_05b(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("gpu") / "qwen2-0.5b", "qwen2", dtype=torch.bfloat16, seed=1,
                           **QWEN2_05B)


def run(path, prompts, tokens, **extra):
    with LLM(config(path, **extra), progress=False) as llm:
        kernels = llm.worker_info()["kernels"]
        outs = llm.generate(prompts, SamplingParams(max_tokens=tokens, temperature=0, ignore_eos=True))
        logits = llm.logits(prompts[0])
    return kernels, [o.token_ids for o in outs], logits


def test_logits_and_greedy_text_with_our_kernels_match_the_torch_path(qwen2_05b):
    kernels, ours, ours_logits = run(qwen2_05b, PROMPTS, 24, kernels="cuda", cuda_graphs=False)
    assert kernels == "cuda"
    _, ref, ref_logits = run(qwen2_05b, PROMPTS, 24, kernels="torch")
    torch.testing.assert_close(ours_logits, ref_logits, atol=0.05 * ref_logits.abs().max(), rtol=0)
    assert ours == ref


def test_cuda_graphs_give_the_same_tokens(qwen2_05b):
    _, eager, _ = run(qwen2_05b, PROMPTS, 24, kernels="cuda", cuda_graphs=False)
    _, graphed, _ = run(qwen2_05b, PROMPTS, 24, kernels="cuda", cuda_graphs=True)
    assert graphed == eager


def test_awq_checkpoint_through_the_cuda_kernels():
    _, ours, ours_logits = run(AWQ_DIR, PROMPTS, 16, kernels="cuda", dtype="float16")
    _, ref, ref_logits = run(AWQ_DIR, PROMPTS, 16, kernels="torch", dtype="float16")
    torch.testing.assert_close(ours_logits, ref_logits, atol=0.05 * ref_logits.abs().max(), rtol=0)
    assert ours == ref
