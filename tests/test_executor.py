"""The one RPC to the workers: the same answers in-process and over the channel, a failed call
named by rank, and step timing only while profiling is on."""

from __future__ import annotations

import pytest

from llm_infer import LLM, SamplingParams
from llm_infer.errors import WorkerError
from llm_infer.executor.base import ALL
from tests import introspect
from tests.conftest import tiny_engine_config

PROMPT = [257, 72, 101, 108, 108, 111, 44, 32, 119, 111]
GREEDY = SamplingParams(max_tokens=8, temperature=0, ignore_eos=True)


@pytest.mark.parametrize("tensor", [1, pytest.param(2, marks=pytest.mark.slow)], ids=["in-process", "processes"])
def test_collective_rpc_replies_and_profiling(tiny_models, tensor):
    with LLM(tiny_engine_config(tiny_models["qwen2"], parallel={"tensor": tensor}), progress=False) as llm:
        executor = introspect.executor(llm)
        memory = executor.collective_rpc("memory_mb")  # ALL: a list in rank order
        assert len(memory) == tensor and all(m["peak_rss"] > 0 for m in memory)
        assert executor.collective_rpc("memory_mb", reply_rank=tensor - 1).keys() == memory[-1].keys()
        assert executor.collective_rpc("set_profiling", False, reply_rank=None) is None
        with pytest.raises(ValueError, match="reply_rank must be a rank below"):
            executor.collective_rpc("stats", reply_rank=tensor)

        # Profiling off (the default): no timing on the outputs, nothing counted.
        want = llm.generate([PROMPT], GREEDY)[0].token_ids
        assert introspect.engine_stats(llm).last_step_timing is None
        assert executor.worker_stats() == {r: {"busy_s": 0.0, "comm_s": 0.0} for r in range(tensor)}

        executor.set_profiling(True)
        assert llm.generate([PROMPT], GREEDY)[0].token_ids == want
        timing = introspect.engine_stats(llm).last_step_timing
        assert 0 <= timing.comm_s <= timing.worker_s
        stats = executor.worker_stats()
        assert sorted(stats) == list(range(tensor)) and all(s["busy_s"] > 0 for s in stats.values())
        if tensor > 1:
            assert timing.comm_s > 0 and all(s["comm_s"] > 0 for s in stats.values())
        assert executor.collective_rpc("stats", reply_rank=ALL) == [{"busy_s": 0.0, "comm_s": 0.0}] * tensor


@pytest.mark.slow  # worker processes
def test_a_failed_call_names_the_rank_and_stops_the_group(tiny_models):
    # No restarts: the engine would otherwise replace the stopped group at the next step.
    llm = LLM(tiny_engine_config(tiny_models["qwen2"], parallel={"tensor": 2, "max_restarts": 0}), progress=False)
    with pytest.raises(WorkerError, match=r"worker rank [01] failed: AttributeError: .*'no_such_method'"):
        introspect.executor(llm).collective_rpc("no_such_method")
    assert all(p.poll() is not None for p in introspect.worker_procs(llm))
    with pytest.raises(WorkerError, match="shut down after an earlier failure"):
        llm.generate([PROMPT], GREEDY)
    llm.close()


@pytest.mark.slow  # worker processes
def test_workers_leave_ctrl_c_to_the_controller(tiny_models):
    """Ctrl-C in a terminal signals the whole process group: the workers ignore SIGINT (no
    tracebacks of their own; the controller stops them), so one that gets it keeps serving."""
    import signal

    with LLM(tiny_engine_config(tiny_models["qwen2"], parallel={"pipeline": 2, "max_restarts": 0}),
             progress=False) as llm:
        want = llm.generate([PROMPT], GREEDY)[0].token_ids
        for proc in introspect.worker_procs(llm):
            proc.send_signal(signal.SIGINT)
        assert llm.generate([PROMPT], GREEDY)[0].token_ids == want
        assert all(p.poll() is None for p in introspect.worker_procs(llm))
