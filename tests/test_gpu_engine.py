"""The engine on a CUDA device (`pytest -m gpu`; skipped without CUDA): the torch path against
transformers on the same GPU (dense and mixture-of-experts models, fp32 and bf16), prefix
caching and n-gram speculation against plain decoding, and an NCCL world of one. (Our kernels
and CUDA graphs against the torch path: tests/test_gpu_model.py.)"""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest
import torch

from llm_infer import LLM, SamplingParams
from tests.checkpoints import make_checkpoint, reference_model
from tests.conftest import tiny_engine_config

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]
PROMPT = [257, 72, 101, 108, 108, 111, 44, 32, 119, 111, 114, 108, 100, 33, 10, 84, 104, 101, 32, 99, 97, 116]
GREEDY = SamplingParams(max_tokens=32, temperature=0, ignore_eos=True)
# Our CUDA attention takes head_dim 64 or 128 (kernels/dispatch.py: CUDA_HEAD_DIMS); TINY's is 16.
HEAD_DIM_64 = dict(hidden_size=128, num_attention_heads=2, num_key_value_heads=1)
# Qwen2-MoE: shared expert, layer 1 dense; Qwen3-MoE: norm_topk_prob, q/k norms (as tests/test_moe_model.py).
MOE_ARCHS = {"qwen2_moe": dict(mlp_only_layers=[1], **HEAD_DIM_64),
             "qwen3_moe": dict(norm_topk_prob=True, **HEAD_DIM_64, head_dim=64)}


@pytest.fixture(scope="module", autouse=True)
def exact_fp32_matmuls():
    """TF32 off: fp32 on the GPU must be fp32 for a 1e-4 comparison with transformers."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@pytest.fixture(scope="module")
def models(tiny_models, tmp_path_factory) -> dict:
    """The dense tiny checkpoints, a tiny Qwen2-MoE / Qwen3-MoE (8 experts, top-2), and a tiny
    Qwen2 with head_dim 64 (`qwen2_hd64`) for our kernels."""
    root = tmp_path_factory.mktemp("gpu-moe")
    return {**tiny_models, **{arch: make_checkpoint(root / arch, arch, seed=5, **extra)
                              for arch, extra in MOE_ARCHS.items()},
            "qwen2_hd64": make_checkpoint(root / "qwen2_hd64", "qwen2", **HEAD_DIM_64)}


def hf_on_cuda(path, dtype: torch.dtype = torch.float32):
    """transformers' model on the GPU, experts as a plain loop of matmuls (not grouped_mm)."""
    return reference_model(path, dtype, experts_implementation="eager").cuda()


def on_cuda(path, **extra) -> dict:
    return tiny_engine_config(path, device="cuda", **extra)


def hf_greedy_on_cuda(hf, prompt: list[int], steps: int) -> list[int]:
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(steps):
            ids.append(int(hf(torch.tensor([ids], device="cuda")).logits[0, -1].argmax()))
    return ids[len(prompt):]


@pytest.mark.parametrize("arch", ["qwen2", "qwen3", "llama", *MOE_ARCHS])
def test_torch_path_on_cuda_matches_transformers_on_the_same_gpu(models, arch):
    hf = hf_on_cuda(models[arch])
    with LLM(on_cuda(models[arch], kernels="torch"), progress=False) as llm:
        assert llm.worker_info()["device"].startswith("cuda") and llm.worker_info()["kernels"] == "torch"
        ours = llm.logits(PROMPT)
        tokens = llm.generate([PROMPT], GREEDY)[0].token_ids
    with torch.no_grad():
        ref = hf(torch.tensor([PROMPT], device="cuda")).logits[0].float().cpu()
    assert ref.std() > 0.1
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=0)
    assert tokens == hf_greedy_on_cuda(hf, PROMPT, 32)


@pytest.mark.parametrize("kernels", ["torch", "cuda"])
@pytest.mark.parametrize("arch", list(MOE_ARCHS))
def test_moe_in_bf16_on_cuda_stays_within_bf16_rounding_of_transformers(models, arch, kernels):
    """bf16 rounds differently in each implementation, and a random tiny model's greedy choice
    can be a near-tie (0.016 logits apart at step 2 of Qwen3-MoE on CPU), so the tokens are not
    asked to be identical: each of ours must be one transformers scores within the tolerance of
    its best, given our preceding tokens (so wherever transformers prefers a token by more than
    the tolerance, that token is ours)."""
    hf = hf_on_cuda(models[arch], torch.bfloat16)
    with LLM(on_cuda(models[arch], dtype="bfloat16", kernels=kernels), progress=False) as llm:
        assert llm.worker_info()["kernels"] == kernels
        ours = llm.logits(PROMPT)
        tokens = llm.generate([PROMPT], SamplingParams(max_tokens=16, temperature=0, ignore_eos=True))[0].token_ids
    with torch.no_grad():
        ref = hf(torch.tensor([PROMPT + tokens], device="cuda")).logits[0].float().cpu()
    tol = 0.05 * float(ref.abs().max())  # measured on CPU: at most 0.03 x max|logit| apart
    assert ref.std() > 0.1
    torch.testing.assert_close(ours, ref[: len(PROMPT)], atol=tol, rtol=0)
    steps = ref[len(PROMPT) - 1 : -1]  # transformers' logits where each of our tokens was chosen
    chosen = steps.gather(1, torch.tensor(tokens)[:, None])[:, 0]
    assert (steps.max(dim=1).values - chosen <= tol).all(), (tokens, steps.argmax(dim=1).tolist())


def test_prefix_caching_on_cuda_is_identical_to_caching_off(tiny_models):
    system = list(range(200, 241))
    prompts = [system + q for q in ([11, 12, 13], [14], [15, 16, 17, 18])]
    outs = {}
    for caching in (True, False):
        with LLM(on_cuda(tiny_models["qwen2"], cache={"block_size": 4, "num_blocks": 256, "prefix_caching": caching}),
                 progress=False) as llm:
            first = llm.generate(prompts[:1], GREEDY)  # computes the shared prefix once
            outs[caching] = [o.token_ids for o in first + llm.generate(prompts[1:], GREEDY)]
            if caching:
                assert llm.engine.snapshot().prefix_hit_tokens > 0
    assert outs[True] == outs[False]


def test_ngram_speculation_on_cuda_is_identical_to_plain_decoding(tiny_models):
    prompt = PROMPT + PROMPT  # repeated text gives the n-gram proposer something to propose
    with LLM(on_cuda(tiny_models["qwen2"]), progress=False) as plain:
        want = plain.generate([prompt], SamplingParams(max_tokens=48, temperature=0, ignore_eos=True))[0].token_ids
    with LLM(on_cuda(tiny_models["qwen2"], speculative={"method": "ngram", "num_tokens": 4}), progress=False) as llm:
        got = llm.generate([prompt], SamplingParams(max_tokens=48, temperature=0, ignore_eos=True))[0].token_ids
        assert llm.engine.snapshot().spec_proposed > 0
    assert got == want


def test_our_kernels_in_bf16_keep_prefix_caching_close(models):
    """bf16 with our CUDA kernels: a suffix over cached blocks rounds differently from a whole
    prefill, so greedy tokens may part on near-ties; most must agree."""
    tokens = {}
    for caching in (True, False):
        cfg = on_cuda(models["qwen2_hd64"], dtype="bfloat16", kernels="cuda",
                      cache={"block_size": 16, "num_blocks": 64, "prefix_caching": caching})
        with LLM(cfg, progress=False) as llm:
            llm.generate([PROMPT * 2], SamplingParams(max_tokens=1, temperature=0))
            tokens[caching] = llm.generate([PROMPT * 2 + [65, 66]], SamplingParams(max_tokens=8, temperature=0,
                                                                                 ignore_eos=True))[0].token_ids
    agree = sum(a == b for a, b in zip(tokens[True], tokens[False])) / len(tokens[False])
    assert agree >= 0.75, tokens


NCCL_WORLD_OF_ONE = """
import datetime, sys, torch, torch.distributed as dist
dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{sys.argv[1]}", world_size=1, rank=0,
                        timeout=datetime.timedelta(seconds=60))
torch.cuda.set_device(0)
x = torch.arange(4, dtype=torch.float32, device="cuda")
dist.all_reduce(x)
group = dist.new_group([0])
dist.broadcast(x, src=0, group=group)
assert x.tolist() == [0.0, 1.0, 2.0, 3.0], x
dist.destroy_process_group()
print("nccl ok")
"""


def test_nccl_initialises_a_world_of_one():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    run = subprocess.run([sys.executable, "-c", NCCL_WORLD_OF_ONE, str(port)], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0 and "nccl ok" in run.stdout, run.stderr[-2000:]
