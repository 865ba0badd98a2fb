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


def run(path, prompts, tokens, score=None, **extra):
    """(kernel set, greedy token ids per prompt, logits of prompts[0], scored): `score` (token lists,
    one per prompt) are rated under this engine: each step's logits given the prompt and the
    tokens before it, `[len(tokens), vocab]` per prompt."""
    with LLM(config(path, **extra), progress=False) as llm:
        kernels = llm.worker_info()["kernels"]
        outs = llm.generate(prompts, SamplingParams(max_tokens=tokens, temperature=0, ignore_eos=True))
        logits = llm.logits(prompts[0])
        scored = [llm.logits(p + s)[len(p) - 1 : -1] for p, s in zip(prompts, score)] if score else None
    return kernels, [o.token_ids for o in outs], logits, scored


def assert_near_greedy(tokens: list[list[int]], scored: list[torch.Tensor], tol: float) -> None:
    """Each token is one the reference scores within `tol` of its best, given the same earlier
    tokens. Random checkpoints make exact greedy equality between two correct implementations
    impossible: their bf16 logits tie exactly (top-2 gap 0.0) within the first few steps of every
    prompt here (measured on the CPU), so any rounding difference may take either token."""
    for toks, steps in zip(tokens, scored):
        chosen = steps.float().gather(1, torch.tensor(toks, device=steps.device)[:, None])[:, 0]
        gaps = steps.float().max(dim=1).values - chosen
        assert (gaps <= tol).all(), (toks, steps.argmax(dim=1).tolist(), gaps.max().item())


def test_logits_and_greedy_text_with_our_kernels_match_the_torch_path(qwen2_05b):
    kernels, ours, ours_logits, _ = run(qwen2_05b, PROMPTS, 24, kernels="cuda", cuda_graphs=False)
    assert kernels == "cuda"
    _, ref, ref_logits, scored = run(qwen2_05b, PROMPTS, 24, score=ours, kernels="torch")
    scale = float(ref_logits.abs().max())
    torch.testing.assert_close(ours_logits, ref_logits, atol=0.05 * scale, rtol=0)
    assert_near_greedy(ours, scored, 0.02 * scale)
    print(f"greedy tokens equal to the torch path's: {sum(a == b for o, r in zip(ours, ref) for a, b in zip(o, r))}"
          f" of {sum(map(len, ref))}")


def test_cuda_graphs_give_the_same_tokens(qwen2_05b):
    # One bucket per batch size up to the batch (max_num_seqs = 3: buckets 1, 2, 3), so the graphed
    # and eager decode steps run the same matrix shapes and cuBLAS picks the same kernels.
    same_rows = {"scheduler": {"max_model_len": 512, "max_num_seqs": len(PROMPTS)}}
    _, eager, _, _ = run(qwen2_05b, PROMPTS, 24, kernels="cuda", cuda_graphs=False, **same_rows)
    _, graphed, _, _ = run(qwen2_05b, PROMPTS, 24, kernels="cuda", cuda_graphs=True, **same_rows)
    assert graphed == eager


def test_awq_checkpoint_through_the_cuda_kernels():
    _, ours, ours_logits, _ = run(AWQ_DIR, PROMPTS, 16, kernels="cuda", dtype="float16")
    _, ref, ref_logits, scored = run(AWQ_DIR, PROMPTS, 16, score=ours, kernels="torch", dtype="float16")
    scale = float(ref_logits.abs().max())
    torch.testing.assert_close(ours_logits, ref_logits, atol=0.05 * scale, rtol=0)
    assert_near_greedy(ours, scored, 0.02 * scale)
