"""The Ray launcher on a Ray instance bound to 127.0.0.1: layouts, and a killed actor."""

from __future__ import annotations

import time

import pytest
import torch

from llm_infer import LLM, SamplingParams
from llm_infer.errors import WorkerError
from tests import introspect
from tests.conftest import tiny_engine_config

ray = pytest.importorskip("ray")  # conftest has set RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 (loopback only)
pytestmark = pytest.mark.slow  # a Ray instance and its actors
PROMPT = [257, 72, 101, 108, 108, 111, 44, 32, 119, 111, 114, 108, 100, 33, 10]
GREEDY = SamplingParams(max_tokens=32, temperature=0, ignore_eos=True)


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=4, include_dashboard=False, _node_ip_address="127.0.0.1", configure_logging=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def reference(tiny_models):
    with LLM(tiny_engine_config(tiny_models["qwen2"]), progress=False) as llm:
        return llm.logits(PROMPT), llm.generate([PROMPT], GREEDY)[0].token_ids


@pytest.mark.parametrize("tp,pp", [(2, 1), (1, 2)])
def test_ray_layouts_match_tp1(local_ray, tiny_models, reference, tp, pp):
    cfg = tiny_engine_config(tiny_models["qwen2"], parallel={"tensor": tp, "pipeline": pp, "launcher": "ray"})
    with LLM(cfg, progress=False) as llm:
        hello = introspect.channel_hello(llm)
        assert all(info["ip"] == "127.0.0.1" for info in hello.values()), hello
        torch.testing.assert_close(llm.logits(PROMPT), reference[0], atol=1e-4, rtol=0)
        assert llm.generate([PROMPT], GREEDY)[0].token_ids == reference[1]
    assert ray.util.placement_group_table() == {} or all(
        g["state"] == "REMOVED" for g in ray.util.placement_group_table().values())


def test_killed_ray_actor_is_a_clear_error(local_ray, tiny_models):
    cfg = tiny_engine_config(tiny_models["qwen2"], parallel={"tensor": 2, "launcher": "ray", "timeout_s": 20,
                                                             "max_restarts": 0})  # no replacement here
    llm = LLM(cfg, progress=False)
    ray.kill(introspect.ray_actors(llm)[1])
    start = time.monotonic()
    with pytest.raises(WorkerError, match="worker rank 1 died"):
        llm.generate([PROMPT] * 4, SamplingParams(max_tokens=100, temperature=0, ignore_eos=True))
    assert time.monotonic() - start < 30
    llm.close()
