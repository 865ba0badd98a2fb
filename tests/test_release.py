"""An engine releases what it holds: dropped without close(), closed twice, or at interpreter exit.

With every launcher: build an LLM, drop it without closing, build another with a different
layout, generate (TP=1's tokens), and nothing (worker process, Ray actor, placement group)
is left at the end.
"""

from __future__ import annotations

import gc
import json
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from llm_infer import LLM, SamplingParams
from llm_infer.errors import UserError
from tests import introspect
from tests.conftest import tiny_engine_config

PROMPT = [257, 72, 101, 108, 108, 111, 44, 32, 119, 111, 114, 108, 100]
GREEDY = SamplingParams(max_tokens=12, temperature=0, ignore_eos=True)
pytestmark = pytest.mark.slow  # worker processes, Ray, a child interpreter


@pytest.fixture(scope="module")
def want(tiny_models) -> list[int]:
    with LLM(tiny_engine_config(tiny_models["qwen2"]), progress=False) as llm:
        return llm.generate([PROMPT], GREEDY)[0].token_ids


@pytest.mark.parametrize("first,second", [
    ({"tensor": 1}, {"tensor": 2}),
    ({"tensor": 2}, {"pipeline": 2}),
], ids=["in-process-then-processes", "processes-then-processes"])
def test_dropped_llm_releases_its_processes(tiny_models, want, first, second):
    llm = LLM(tiny_engine_config(tiny_models["qwen2"], parallel=first), progress=False)
    assert llm.generate([PROMPT], GREEDY)[0].token_ids == want
    pids = [p.pid for p in introspect.worker_processes()]
    del llm  # no close(): collecting the object releases its workers
    assert not [p for p in introspect.worker_processes() if p.pid in pids]
    llm = LLM(tiny_engine_config(tiny_models["qwen2"], parallel=second), progress=False)
    assert llm.generate([PROMPT], GREEDY)[0].token_ids == want
    llm.close()
    llm.close()  # idempotent
    with pytest.raises(UserError, match="has been closed"):
        llm.generate([PROMPT], GREEDY)
    assert introspect.worker_processes() == []


def test_dropped_ray_llm_releases_its_placement_groups(tiny_models, want):
    ray = pytest.importorskip("ray")
    # Two CPUs: the second LLM can be placed only if the first one's bundles were given back.
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", configure_logging=False)
    try:
        llm = LLM(tiny_engine_config(tiny_models["qwen2"], parallel={"tensor": 2, "launcher": "ray"}), progress=False)
        assert llm.generate([PROMPT], GREEDY)[0].token_ids == want
        # While it lives, another LLM cannot be placed, and the error says who holds the cluster.
        with pytest.raises(UserError, match="2 workers belong to another LLM of this process"):
            LLM(tiny_engine_config(tiny_models["qwen2"], parallel={"pipeline": 2, "launcher": "ray"}), progress=False)
        del llm
        gc.collect()  # the failed constructor's traceback may still reference its half-built engine
        llm = LLM(tiny_engine_config(tiny_models["qwen2"], parallel={"pipeline": 2, "launcher": "ray"}),
                  progress=False)
        assert llm.generate([PROMPT], GREEDY)[0].token_ids == want
        live = [g for g in ray.util.placement_group_table().values() if g["state"] != "REMOVED"]
        assert len(live) == 2, live  # the second LLM's two stages, nothing of the first
        del llm
        live = [g for g in ray.util.placement_group_table().values() if g["state"] != "REMOVED"]
        assert live == []
        deadline = time.monotonic() + 15  # Ray reports returned resources asynchronously
        while ray.available_resources().get("CPU") != 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert ray.available_resources().get("CPU") == 2
    finally:
        ray.shutdown()


def test_workers_stop_when_the_interpreter_exits_without_close(tiny_models):
    """A script that never calls close(): its worker processes are gone when it has exited."""
    script = (
        "import json, psutil\n"
        "from llm_infer import LLM\n"
        f"llm = LLM({tiny_engine_config(tiny_models['qwen2'], parallel={'tensor': 2})!r}, progress=False)\n"
        "print(json.dumps([p.pid for p in psutil.Process().children()]), flush=True)\n"
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                         cwd=Path(__file__).resolve().parents[1])
    assert run.returncode == 0, run.stderr[-2000:]
    pids = json.loads(run.stdout.strip().splitlines()[-1])
    assert len(pids) == 2
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(psutil.pid_exists(p) for p in pids):
        time.sleep(0.2)
    assert not any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE for p in pids)
