"""End to end on a GPU (`pytest -m gpu`; skipped without CUDA): our kernels in eager steps (the
CUDA extension) and in CUDA graphs (Triton), and AWQ through them, against the torch reference
path and its float32 truth."""

from __future__ import annotations

import pytest
import torch

from llm_infer import LLM, SamplingParams
from tests.checkpoints import QWEN2_05B, make_checkpoint
from tests.test_awq_model import AWQ_DIR
from tests.test_gpu_engine import exact_fp32_matmuls  # noqa: F401  (autouse: TF32 off, the float32 truth is float32)

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
    one per prompt, or "own": this engine's own greedy tokens) are rated under this engine: each
    step's logits given the prompt and the tokens before it, `[len(tokens), vocab]` per prompt."""
    with LLM(config(path, **extra), progress=False) as llm:
        kernels = llm.worker_info()["kernels"]
        outs = llm.generate(prompts, SamplingParams(max_tokens=tokens, temperature=0, ignore_eos=True))
        logits = llm.logits(prompts[0])
        if score == "own":
            score = [o.token_ids for o in outs]
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


def rms(x: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    x = x.float().pow(2)
    return (x.mean() if dim is None else x.mean(dim=dim)).sqrt()


def test_logits_and_greedy_text_with_our_kernels_match_the_torch_path(qwen2_05b):
    """Both paths run in bf16, and two correct bf16 implementations of this random model differ by
    up to about 1.0 in a logit (max|logit| 11.5): on CPU the C++ kernels and the torch path were
    0.91 apart; on the H200 (2026-12-04) our CUDA kernels and the torch path were 0.625 apart, over
    the 0.575 then allowed. So neither is the oracle: each is measured against the torch path in
    float32 on the same bf16 checkpoint (its weights upcast exactly), and ours may be at most
    1.25x as far from it as the torch path.

    The norm is the RMS of the logits' difference, over the prompt's 1.98 M logits and over the
    rows where our greedy tokens were chosen (each scored given the earlier ones): a stable figure
    (CPU: C++ kernels 0.142 and 0.180, torch path 0.150 and 0.202), where the max-abs error is the
    extreme of millions of draws (1.004 against 1.008 there). Row by row ours may be at most 2x the
    torch path's RMS (CPU: at most 1.24x), so a bug confined to one position cannot hide in the
    average (it costs about 15x: the logits' own RMS is 2.4). Each greedy token of ours must be
    one the float32 truth scores within 6 sigma of its best, sigma being the torch path's RMS error:
    the C++ kernels' tokens came within 2.5 sigma and the torch path's own within 2.7, where a
    random token is over 20 sigma away."""
    kernels, ours, ours_logits, ours_scored = run(qwen2_05b, PROMPTS, 24, score="own", kernels="cuda",
                                                  cuda_graphs=False)
    assert kernels == "cuda"
    _, ref, ref_logits, ref_scored = run(qwen2_05b, PROMPTS, 24, score=ours, kernels="torch")
    _, _, truth, truth_scored = run(qwen2_05b, PROMPTS, 1, score=ours, kernels="torch", dtype="float32")
    sigma = float(rms(ref_logits - truth))
    assert sigma < 0.1 * float(rms(truth))  # the torch path's bf16 is itself near its float32 (CPU: 0.15 vs 2.4)
    rows = {"prompt": (ours_logits, ref_logits, truth),
            "greedy steps": tuple(torch.cat(x) for x in (ours_scored, ref_scored, truth_scored))}
    for name, (o, r, t) in rows.items():
        ours_err, torch_err = float(rms(o - t)), float(rms(r - t))
        print(f"{name}: RMS logit error against float32: ours {ours_err:.4f}, torch path {torch_err:.4f}")
        assert ours_err <= 1.25 * torch_err, (name, ours_err, torch_err)
        per_row = rms(o - t, dim=1) / rms(r - t, dim=1)
        assert per_row.max() <= 2.0, (name, per_row.tolist())
    assert_near_greedy(ours, truth_scored, 6 * sigma)
    print(f"greedy tokens equal to the torch path's: {sum(a == b for o, r in zip(ours, ref) for a, b in zip(o, r))}"
          f" of {sum(map(len, ref))}")


def test_graphed_decode_stays_as_close_to_float32_as_the_torch_path(qwen2_05b):
    """Decode steps replayed from CUDA graphs run the Triton kernels, eager steps the CUDA extension
    (kernels/cuda_set.py), so graphed tokens need not equal eager ones: on the H200 (2026-12-04,
    ee8079a) they parted at step 7 of one prompt, which an exact comparison failed. As for the eager
    path above, each graphed token must be one the float32 truth scores within 6 sigma of its best,
    sigma being the torch path's bf16 RMS error on the prompt: in a batch of three (bucket 4:
    cuBLAS matmuls) and alone (bucket 1: the one-row Triton GEMV with SwiGLU fused)."""
    params = SamplingParams(max_tokens=24, temperature=0, ignore_eos=True)
    with LLM(config(qwen2_05b, kernels="cuda"), progress=False) as llm:
        assert llm.worker_info()["forward"] == "cuda-graphs"
        tokens = [o.token_ids for o in llm.generate(PROMPTS, params)] + [llm.generate(PROMPTS[:1], params)[0].token_ids]
    prompts = PROMPTS + PROMPTS[:1]
    _, _, ref_logits, _ = run(qwen2_05b, PROMPTS[:1], 1, kernels="torch")
    _, _, truth, truth_scored = run(qwen2_05b, prompts, 1, score=tokens, kernels="torch", dtype="float32")
    sigma = float(rms(ref_logits - truth))
    assert sigma < 0.1 * float(rms(truth))
    assert_near_greedy(tokens, truth_scored, 6 * sigma)


def test_awq_checkpoint_through_the_cuda_kernels():
    _, ours, ours_logits, _ = run(AWQ_DIR, PROMPTS, 16, kernels="cuda", dtype="float16")
    _, ref, ref_logits, scored = run(AWQ_DIR, PROMPTS, 16, score=ours, kernels="torch", dtype="float16")
    scale = float(ref_logits.abs().max())
    torch.testing.assert_close(ours_logits, ref_logits, atol=0.05 * scale, rtol=0)
    assert_near_greedy(ours, scored, 0.02 * scale)
