"""Every parallel layout against TP=1: logits within 1e-4 (fp32), identical greedy tokens."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest
import torch

from llm_infer import LLM, SamplingParams
from llm_infer.errors import ConfigError, UserError, WorkerError
from tests import introspect
from tests.checkpoints import make_checkpoint
from tests.conftest import DEFAULT_FP32, tiny_engine_config

PROMPT = [257, 72, 101, 108, 108, 111, 44, 32, 119, 111, 114, 108, 100, 33, 10, 84, 104, 101]
BATCH = [PROMPT, PROMPT[:5], [65, 66, 67] * 9, [10, 11], list(range(70, 110)), [99] * 3]
GREEDY32 = SamplingParams(max_tokens=32, temperature=0, ignore_eos=True)


@pytest.fixture(scope="module")
def one_kv_head(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("kv1") / "qwen2", "qwen2", num_key_value_heads=1, seed=3)


@pytest.fixture(scope="module")
def references(tiny_models, one_kv_head):
    """TP=1 logits, greedy tokens and batch outputs per model."""
    refs = {}
    for name, path in [*tiny_models.items(), ("kv1", one_kv_head)]:
        with LLM(tiny_engine_config(path), progress=False) as llm:
            refs[name] = (path, llm.logits(PROMPT), llm.generate([PROMPT], GREEDY32)[0].token_ids,
                          [o.token_ids for o in llm.generate(BATCH, GREEDY32)])
    return refs


LAYOUTS = [
    ("qwen2", 2, 1), ("qwen2", 1, 2), ("qwen2", 2, 2),
    ("qwen3", 2, 1), ("qwen3", 1, 2), ("qwen3", 2, 2),
    ("kv1", 2, 1),  # one KV head: replicated on both ranks
    ("llama", 1, 2),  # tied embeddings with the head on another stage than the embedding
]


@pytest.mark.slow  # worker processes
@pytest.mark.parametrize("model,tp,pp", LAYOUTS, ids=[f"{m}-tp{t}-pp{p}" for m, t, p in LAYOUTS])
def test_layout_matches_tp1(references, model, tp, pp):
    path, ref_logits, ref_tokens, ref_batch = references[model]
    with LLM(tiny_engine_config(path, parallel={"tensor": tp, "pipeline": pp}), progress=False) as llm:
        torch.testing.assert_close(llm.logits(PROMPT), ref_logits, atol=1e-4, rtol=0)
        assert llm.generate([PROMPT], GREEDY32)[0].token_ids == ref_tokens
        # A batch: with pipeline stages it runs as micro-batches in flight at once.
        assert [o.token_ids for o in llm.generate(BATCH, GREEDY32)] == ref_batch
        assert introspect.block_manager(llm).hit_tokens > 0, "the repeated PROMPT reused cached blocks on every rank"
    assert introspect.worker_processes() == []


@pytest.mark.slow  # worker processes
def test_uneven_pipeline_layers_override(references):
    path, ref_logits, ref_tokens, _ = references["qwen2"]
    cfg = tiny_engine_config(path, parallel={"pipeline": 2, "pipeline_layers": [3, 1]})
    with LLM(cfg, progress=False) as llm:
        torch.testing.assert_close(llm.logits(PROMPT), ref_logits, atol=1e-4, rtol=0)


def test_tensor_size_that_fits_no_head_count_is_a_config_error(tiny_models):
    # tiny models have 4 query heads and 2 KV heads
    with pytest.raises(ConfigError, match=r"parallel.tensor=3 does not divide the model's 4 query heads"):
        LLM(tiny_engine_config(tiny_models["qwen2"], parallel={"tensor": 3}), progress=False)
    with pytest.raises(ConfigError, match="pipeline_layers sums to 3 but the model has 4 layers"):
        LLM(tiny_engine_config(tiny_models["qwen2"], parallel={"pipeline": 2, "pipeline_layers": [2, 1]}),
            progress=False)
    assert introspect.worker_processes() == []


@pytest.mark.slow  # worker processes
def test_killed_worker_is_a_clear_error_not_a_hang(tiny_models):
    # With restarts allowed the workers would be replaced (tests/test_recovery.py); here none are.
    llm = LLM(tiny_engine_config(tiny_models["qwen2"], parallel={"tensor": 2, "timeout_s": 20, "max_restarts": 0}),
              progress=False)
    victim = introspect.worker_procs(llm)[1]
    threading.Timer(0.5, lambda: os.kill(victim.pid, signal.SIGKILL)).start()
    start = time.monotonic()
    with pytest.raises(WorkerError, match=rf"worker rank 1 died: process {victim.pid} was killed by SIGKILL"):
        for _ in range(1000):
            llm.generate([PROMPT] * 4, SamplingParams(max_tokens=200, temperature=0, ignore_eos=True))
    assert time.monotonic() - start < 30
    assert all(p.poll() is not None for p in introspect.worker_procs(llm)), "the surviving rank is stopped too"
    with pytest.raises(WorkerError, match="shut down after an earlier failure"):
        llm.generate([PROMPT], GREEDY32)
    llm.close()
    assert introspect.worker_processes() == []


@pytest.mark.slow  # worker processes
def test_a_mistake_found_by_the_workers_is_still_a_one_line_user_error(tmp_path):
    path = make_checkpoint(tmp_path / "broken", "qwen2")
    (path / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(UserError, match="model.safetensors is not a readable safetensors file"):
        LLM(tiny_engine_config(path, parallel={"tensor": 2}), progress=False)
    assert introspect.worker_processes() == []


@pytest.mark.slow  # the default model, worker processes
def test_default_model_tp3_matches_tp1_and_tp2_is_refused(default_llm):
    """SmolLM2 has 9 query heads and 3 KV heads: TP=3 splits both, TP=2 fits neither."""
    prompt_chat = [{"role": "user", "content": "Name three colours."}]
    params = SamplingParams(max_tokens=24, temperature=0)
    want = default_llm.chat(prompt_chat, params).text
    with LLM({**DEFAULT_FP32, "parallel": {"tensor": 3}}, progress=False) as llm:
        assert llm.chat(prompt_chat, params).text == want
    with pytest.raises(ConfigError, match=r"parallel.tensor=2 does not divide the model's 9 query heads \(valid sizes: 1, 3, 9\)"):
        LLM({**DEFAULT_FP32, "parallel": {"tensor": 2}}, progress=False)
    assert introspect.worker_processes() == []
