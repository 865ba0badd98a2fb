"""Surviving worker failures: a killed or hung rank is replaced and every request resumes with
exactly the tokens of an uninterrupted run (fp32, seeded draws); past the restart budget the
failure is today's clear error. Local processes, Ray actors, and the server with the openai client.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import threading
import time

import httpx
import psutil
import pytest
from openai import OpenAI

from llm_infer import LLM, SamplingParams
from llm_infer.errors import UserError, WorkerError
from llm_infer.runtime.recovery import RestartBudget
from tests import introspect
from tests.conftest import tiny_engine_config

PROMPTS = [[257, 72, 101, 108, 108, 111] * (i + 1) for i in range(4)]
# Seeded sampling (one with penalties, which live on the sampling rank), and one greedy request.
PARAMS = [
    SamplingParams(max_tokens=40, temperature=0.9, seed=11, ignore_eos=True),
    SamplingParams(max_tokens=40, temperature=1.0, seed=12, ignore_eos=True, presence_penalty=0.8,
                   frequency_penalty=0.3, repetition_penalty=1.3),
    SamplingParams(max_tokens=40, temperature=0.7, top_p=0.9, seed=13, ignore_eos=True),
    SamplingParams(max_tokens=40, temperature=0, ignore_eos=True),
]


def stream_all(llm: LLM, at_step: int | None = None, action=None) -> list[list[int]]:
    """Run PROMPTS with PARAMS step by step, collecting each request's streamed tokens; call
    `action()` before step `at_step` (a failure injected mid-generation)."""
    engine = llm.engine
    ids = [engine.add_request(p, sp) for p, sp in zip(PROMPTS, PARAMS)]
    tokens: dict[str, list[int]] = {i: [] for i in ids}
    step = 0
    while engine.has_unfinished():
        if step == at_step:
            assert all(0 < len(t) < 40 for t in tokens.values()), "the failure must land mid-generation"
            action()
        for out in engine.step():
            tokens[out.request_id] += out.outputs[0].new_token_ids
        step += 1
    return [tokens[i] for i in ids]


def kill(pid: int, sig: signal.Signals = signal.SIGKILL):
    return lambda: os.kill(pid, sig)


def test_restart_budget_counts_restarts_within_the_window():
    now = [0.0]
    budget = RestartBudget(2, 600.0, clock=lambda: now[0])
    assert budget.take()
    now[0] = 100.0
    assert budget.take() and not budget.take()
    now[0] = 599.0
    assert not budget.take()
    now[0] = 600.0  # the first restart left the window
    assert budget.take() and not budget.take()
    now[0] = 700.0
    assert budget.take()
    assert not RestartBudget(0, 600.0).take()


@pytest.mark.slow  # worker processes
@pytest.mark.parametrize("tp,pp,extra", [(2, 1, {}), (1, 2, {}), (2, 1, {"dtype": "bfloat16", "deterministic": True})],
                         ids=["tp2", "pp2", "tp2-bf16-deterministic"])  # pp2: two steps in flight
def test_killed_rank_is_replaced_and_requests_resume_with_the_same_tokens(tiny_models, caplog, tp, pp, extra):
    cfg = tiny_engine_config(tiny_models["qwen2"], parallel={"tensor": tp, "pipeline": pp, "timeout_s": 20},
                             **extra)
    with LLM(cfg, progress=False) as llm:
        want = stream_all(llm)
        old = introspect.worker_procs(llm)
        with caplog.at_level(logging.WARNING, logger="llm_infer.engine"):
            got = stream_all(llm, at_step=6, action=kill(old[1].pid))
        assert got == want
        assert [p.poll() for p in old] == [-signal.SIGKILL, -signal.SIGKILL], "the surviving rank was stopped"
        new = introspect.worker_procs(llm)
        assert all(p.poll() is None for p in new) and {p.pid for p in new}.isdisjoint(p.pid for p in old)
        assert len(introspect.worker_processes()) == 2
        snap = llm.engine.snapshot()
        assert (snap.restarts, snap.recovered_requests) == (1, 4)
        log = caplog.text
        assert f"worker rank 1 died: process {old[1].pid} was killed by SIGKILL" in log
        assert "4 running requests will be recomputed" in log and "workers restarted in" in log
        assert stream_all(llm) == want, "the new workers serve later requests too"
    assert introspect.worker_processes() == []


@pytest.mark.slow  # worker processes
def test_hung_rank_is_declared_dead_after_the_timeout_and_replaced(tiny_models, caplog):
    cfg = tiny_engine_config(tiny_models["qwen2"], parallel={"tensor": 2, "timeout_s": 5})
    with LLM(cfg, progress=False) as llm:
        want = stream_all(llm)
        old = introspect.worker_procs(llm)
        start = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="llm_infer.engine"):
            got = stream_all(llm, at_step=6, action=kill(old[1].pid, signal.SIGSTOP))
        assert got == want
        assert time.monotonic() - start < 60
        assert all(p.poll() is not None for p in old), "the stopped rank was killed"
        assert f"worker rank 1 did not answer within 5 s (parallel.timeout_s): process {old[1].pid} is stopped" \
            in caplog.text or f"worker rank 1 stopped answering: process {old[1].pid} is stopped" in caplog.text
    assert introspect.worker_processes() == []


@pytest.mark.slow  # worker processes
def test_past_the_restart_budget_the_failure_is_final(tiny_models):
    cfg = tiny_engine_config(tiny_models["qwen2"], parallel={"tensor": 2, "timeout_s": 20, "max_restarts": 1})
    llm = LLM(cfg, progress=False)
    engine = llm.engine
    stream_ids = [engine.add_request(p, sp) for p, sp in zip(PROMPTS, PARAMS)]
    for _ in range(4):
        engine.step()
    os.kill(introspect.worker_procs(llm)[1].pid, signal.SIGKILL)
    assert engine.step() == []  # the one restart the budget allows
    assert engine.snapshot().restarts == 1
    second = introspect.worker_procs(llm)
    for _ in range(3):
        engine.step()
    os.kill(second[1].pid, signal.SIGKILL)
    with pytest.raises(WorkerError, match=rf"worker rank 1 died: process {second[1].pid} was killed by SIGKILL "
                                          r"\(no restart left: parallel.max_restarts=1 within 600 s\)"):
        for _ in range(100):
            engine.step()
    assert all(p.poll() is not None for p in second)
    with pytest.raises(WorkerError, match="shut down after an earlier failure"):
        llm.generate([PROMPTS[0]], PARAMS[3])
    for request_id in stream_ids:
        engine.abort(request_id)
    llm.close()
    assert introspect.worker_processes() == []


@pytest.mark.slow  # worker processes
def test_a_mistake_found_by_the_new_workers_is_not_retried(tiny_models, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(tiny_models["qwen2"], model)
    llm = LLM(tiny_engine_config(model, parallel={"tensor": 2, "timeout_s": 20}), progress=False)
    engine = llm.engine
    engine.add_request(PROMPTS[0], PARAMS[0])
    engine.step()
    broken = tmp_path / "broken.safetensors"  # a new file: the running workers keep theirs mapped
    broken.write_bytes(b"not a safetensors file")
    os.replace(broken, model / "model.safetensors")
    os.kill(introspect.worker_procs(llm)[1].pid, signal.SIGKILL)
    with pytest.raises(UserError, match="model.safetensors is not a readable safetensors file"):
        engine.step()
    assert engine.snapshot().restarts == 1 and introspect.worker_processes() == []
    with pytest.raises(WorkerError, match="shut down after an earlier failure"):
        engine.step()
    assert engine.snapshot().restarts == 1, "not retried"
    llm.close()


@pytest.mark.slow  # a Ray instance and its actors
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGSTOP], ids=["killed", "hung"])
def test_failed_ray_actor_is_replaced_with_new_actors_and_placement_group(tiny_models, sig):
    ray = pytest.importorskip("ray")  # conftest has set RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 (loopback only)
    ray.init(num_cpus=4, include_dashboard=False, _node_ip_address="127.0.0.1", configure_logging=False)
    try:
        cfg = tiny_engine_config(tiny_models["qwen2"], parallel={"tensor": 2, "launcher": "ray", "timeout_s": 5})
        with LLM(cfg, progress=False) as llm:
            want = stream_all(llm)
            pid = introspect.channel_hello(llm)[1]["pid"]
            old_actors = list(introspect.ray_actors(llm))
            got = stream_all(llm, at_step=6, action=kill(pid, sig))
            assert got == want
            assert introspect.ray_actors(llm) and introspect.ray_actors(llm)[1] not in old_actors
            assert introspect.channel_hello(llm)[1]["pid"] != pid
            assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
            states = [g["state"] for g in ray.util.placement_group_table().values()]
            assert states.count("CREATED") == 1 and states.count("REMOVED") == 1, states
        states = [g["state"] for g in ray.util.placement_group_table().values()]
        assert set(states) == {"REMOVED"}, "no placement group is left behind"
        assert [a for a in ray.util.list_named_actors()] == []
    finally:
        ray.shutdown()


@pytest.mark.slow  # worker processes, a live server
def test_server_stream_pauses_through_a_restart_and_completes(tiny_models):
    from llm_infer.entrypoints.server import AsyncEngine, build_app
    from llm_infer.entrypoints.server.serve import ServerThread

    cfg = tiny_engine_config(tiny_models["qwen2"], parallel={"tensor": 2, "timeout_s": 20})
    llm = LLM(cfg, progress=False)
    async_engine = AsyncEngine(llm)
    server = ServerThread(build_app(async_engine, "qwen2"))
    client = OpenAI(base_url=f"{server.url}/v1", api_key="none", max_retries=0)
    request = dict(model="qwen2", prompt="Hello world", max_tokens=120, temperature=1.0, seed=5,
                   extra_body={"ignore_eos": True})
    try:
        want = "".join(c.choices[0].text for c in client.completions.create(**request, stream=True))
        health: list[tuple[int, str]] = []
        done = threading.Event()

        def poll_health():
            while not done.is_set():
                r = httpx.get(f"{server.url}/health")
                health.append((r.status_code, r.text))
                time.sleep(0.05)

        poller = threading.Thread(target=poll_health)
        poller.start()
        pieces = []
        for i, chunk in enumerate(client.completions.create(**request, stream=True)):
            pieces.append(chunk.choices[0].text)
            if i == 10:
                os.kill(introspect.worker_procs(llm)[1].pid, signal.SIGKILL)
        time.sleep(0.2)
        done.set()
        poller.join()
        assert "".join(pieces) == want
        restarting = [text for status, text in health if status == 503]
        assert restarting and all("restarting the workers after a failure: worker rank 1 died" in t
                                  for t in restarting)
        assert health[-1][0] == 200
        metrics = httpx.get(f"{server.url}/metrics").text
        assert "llm_infer_worker_restarts_total 1.0" in metrics
        assert "llm_infer_recovered_requests_total 1.0" in metrics
    finally:
        server.stop()
        async_engine.shutdown()
        llm.close()
    assert introspect.worker_processes() == []
