"""Overlapped (asynchronous) scheduling: step N+1 is planned and submitted before step N's tokens
reach the host, with placeholders the worker fills on the device. Oracle: the same engine with
`scheduler.async_scheduling: off` gives identical tokens and finish reasons. On CPU the device is
synchronous, so these tests prove the bookkeeping (placeholders, computed counts, finishes in
flight, preemption, prefix caching, fallback for requests that need the host), not the overlap."""

from __future__ import annotations

import pytest

from llm_infer import LLM, SamplingParams
from llm_infer.runtime.request import PLACEHOLDER
from tests import introspect
from tests.conftest import tiny_engine_config

PROMPTS = [[5, 6, 7, 8, 9, 10, 11], [20, 21, 22], list(range(30, 60)), [70, 71, 72, 73, 74]]


def run(path, prompts, params, async_mode: str, **extra):
    """(token ids and finish reason per request, overlapped plans seen, placeholder inputs seen)."""
    cfg = tiny_engine_config(path, **extra)
    cfg.setdefault("scheduler", {})["async_scheduling"] = async_mode
    with LLM(cfg, progress=False) as llm:
        executor = introspect.executor(llm)
        seen = {"overlapped": 0, "placeholders": 0}
        submit = executor.submit

        def spy(plan):
            seen["overlapped"] += plan.overlapped
            seen["placeholders"] += plan.input_ids.count(PLACEHOLDER)
            submit(plan)

        executor.submit = spy
        outs = llm.generate(prompts, params)
        assert not introspect.scheduler(llm).has_unfinished()
        seen["preemptions"] = introspect.scheduler(llm).num_preemptions
    return [(o.outputs[0].token_ids, o.outputs[0].finish_reason) for o in outs], seen


def both(path, prompts, params, **extra):
    off, seen_off = run(path, prompts, params, "off", **extra)
    on, seen_on = run(path, prompts, params, "on", **extra)
    assert seen_off["overlapped"] == seen_off["placeholders"] == 0
    return off, on, seen_on


@pytest.mark.parametrize("kernels", ["torch", "auto"])  # reference forward; the fused C++ decode stack
def test_greedy_tokens_equal_synchronous_scheduling(tiny_models, kernels):
    params = [SamplingParams(max_tokens=m, temperature=0, ignore_eos=True) for m in (1, 2, 9, 17)]
    off, on, seen = both(tiny_models["qwen2"], PROMPTS, params, kernels=kernels)
    assert on == off
    assert [len(t) for t, _ in on] == [1, 2, 9, 17]
    assert seen["overlapped"] > 10 and seen["placeholders"] > 10


def test_eos_and_stop_tokens_found_in_flight_end_the_request_with_nothing_extra(tiny_models):
    """A request that stops at step N was already planned into step N+1: that token is dropped."""
    off, _, _ = both(tiny_models["qwen2"], PROMPTS, SamplingParams(max_tokens=24, temperature=0, ignore_eos=True))
    stops = [tokens[3] for tokens, _ in off]  # each request's 4th token becomes a stop token
    params = [SamplingParams(max_tokens=24, temperature=0, stop_token_ids=[s]) for s in stops]
    off, on, seen = both(tiny_models["qwen2"], PROMPTS, params)
    assert on == off
    assert all(reason == "stop" and len(tokens) <= 4 for tokens, reason in on)
    assert seen["overlapped"] > 0


def test_seeded_sampling_chunked_prefill_and_preemption_equal_synchronous(tiny_models):
    """Random draws depend on (seed, output index), so placeholders must keep the index right;
    a tight token budget chunks the long prompt; a small cache forces preemption."""
    params = [SamplingParams(max_tokens=20, temperature=0.9, top_p=0.95, seed=s, ignore_eos=True) for s in range(4)]
    extra = dict(cache={"block_size": 4, "num_blocks": 24}, scheduler={"max_num_batched_tokens": 12, "max_model_len": 64})
    off, on, seen = both(tiny_models["qwen3"], PROMPTS, params, **extra)
    assert on == off
    assert seen["placeholders"] > 0 and seen["preemptions"] > 0


def test_prefix_cache_hits_under_overlap_give_the_same_tokens(tiny_models):
    shared = list(range(100, 140))
    prompts = [shared + [1, 2], shared + [3], shared + [4, 5, 6]]
    params = SamplingParams(max_tokens=12, temperature=0, ignore_eos=True)
    cfg = dict(cache={"block_size": 4, "num_blocks": 128, "prefix_caching": True})
    off, on, _ = both(tiny_models["llama"], prompts, params, **cfg)
    assert on == off


def test_a_request_that_needs_the_host_between_steps_turns_overlap_off_while_it_runs(tiny_models):
    params = [SamplingParams(max_tokens=10, temperature=0, ignore_eos=True, logprobs=2 if i == 1 else None)
              for i in range(len(PROMPTS))]
    off, on, seen = both(tiny_models["qwen2"], PROMPTS, params)
    assert on == off
    assert seen["overlapped"] == 0  # every step had the logprobs request in it or waiting


def test_overlap_resumes_once_no_request_needs_the_host(tiny_models):
    cfg = tiny_engine_config(tiny_models["qwen2"], scheduler={"async_scheduling": "on"})
    with LLM(cfg, progress=False) as llm:
        first = llm.generate([PROMPTS[0]], SamplingParams(max_tokens=5, temperature=0, logprobs=1))[0]
        assert len(first.outputs[0].logprobs) == 5
        plans = []
        executor = introspect.executor(llm)
        submit = executor.submit
        executor.submit = lambda plan: (plans.append(plan), submit(plan))
        second = llm.generate([PROMPTS[1]], SamplingParams(max_tokens=6, temperature=0, ignore_eos=True))[0]
    assert len(second.outputs[0].token_ids) == 6
    assert sum(p.overlapped for p in plans) >= 5
