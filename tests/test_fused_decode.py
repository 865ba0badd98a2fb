"""The fused C++ decoder stack against the layer-by-layer modules it replaces, in each build variant
this CPU runs (native, and the AVX2 build on an AVX-512 CPU: `LLM_INFER_CPU_ISA`)."""

from __future__ import annotations

import pytest
import torch

from llm_infer import LLM, SamplingParams
from llm_infer.kernels.cpu_extension import load_cpu_extension
from tests import introspect
from tests.conftest import cpu_extension_or_skip, cpu_variants, tiny_engine_config
from tests.test_awq_model import AWQ_DIR

cpu_extension_or_skip()
PROMPTS = [[257, 72, 101, 108, 108, 111, 44, 32, 119, 111, 114], [84, 104, 101, 32, 99, 97, 116], [65] * 20]


def decode_logits(llm: LLM) -> torch.Tensor:
    """Logits of 12 greedy decode steps for 3 sequences decoding together (steps of 3 tokens)."""
    engine = llm.engine
    ids = [engine.add_request(p, SamplingParams(max_tokens=12, temperature=0, ignore_eos=True), return_logits=True)
           for p in PROMPTS]
    done = {}
    while engine.has_unfinished():
        for out in engine.step():
            if out.finished:
                done[out.request_id] = out
    return torch.cat([done[i].logits[len(p):] for i, p in zip(ids, PROMPTS)])


@pytest.mark.parametrize("variant", cpu_variants())
@pytest.mark.parametrize("model,dtype", [("qwen2", "float32"), ("qwen3", "float32"), ("llama", "bfloat16"),
                                         ("awq", "float32"), ("awq", "bfloat16")])
def test_fused_stack_matches_the_layer_modules(tiny_models, model, dtype, variant, monkeypatch):
    """Both sides run the variant's kernels; the fused stack is taken, so no kernel it calls is
    scalar there (a scalar file would give the set a torch fallback and the reference forward)."""
    monkeypatch.setenv("LLM_INFER_CPU_ISA", variant)
    path = AWQ_DIR if model == "awq" else tiny_models[model]
    results = []
    for fused in (True, False):
        with LLM(tiny_engine_config(path, dtype=dtype), progress=False) as llm:
            assert llm.worker_info()["forward"] == "fused-cpu"
            assert introspect.runner(llm).kernels.attention.ext is load_cpu_extension(variant)
            if not fused:
                introspect.use_reference_forward(llm)
            results.append(decode_logits(llm))
    tol = 1e-4 if dtype == "float32" else 0.05 * results[1].abs().max()
    torch.testing.assert_close(results[0], results[1], atol=tol, rtol=0)
    assert (results[0].argmax(-1) == results[1].argmax(-1)).float().mean() > 0.95
