"""The one place tests reach past the public API into the engine's internals.

Tests call the public API directly: `LLM.generate/chat/stream/logits/worker_info/close`,
`llm.engine.add_request/step/has_unfinished/abort/snapshot`, `llm.config`, `llm.tokenizer`,
`llm.model_config`. Everything else they inspect (the executor and its workers, the model
runner, the scheduler's and block manager's bookkeeping, live requests) is reached through a
function here, so a refactor that moves one of these changes this file and no test.

The functions return the internal objects themselves; what a test reads off them (a
`BlockManager`'s counters, a `Request`'s block table) is those classes' own interface, which
unit tests also use directly.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import psutil

from llm_infer.executor.processes import WORKER_MODULE

if TYPE_CHECKING:
    import subprocess

    import torch

    from llm_infer import LLM
    from llm_infer.executor.base import Executor
    from llm_infer.runtime.block_manager import BlockManager
    from llm_infer.runtime.engine import EngineStats
    from llm_infer.runtime.kv_cache import KVCache
    from llm_infer.runtime.model_runner import ModelRunner
    from llm_infer.runtime.request import Request
    from llm_infer.runtime.scheduler import Scheduler
    from llm_infer.runtime.speculative.planner import SpecStats


# -- the controller: engine bookkeeping ------------------------------------------------------


def engine_stats(llm: LLM) -> EngineStats:
    """Step counters: `steps`, `prefill_tokens`, `decode_tokens`, `last_step_timing`."""
    return llm.engine.stats


def max_model_len(llm: LLM) -> int:
    """The context length the engine enforces (prompt plus output)."""
    return llm.engine.max_model_len


def scheduler(llm: LLM) -> Scheduler:
    return llm.engine.scheduler


def eos_token_ids(llm: LLM) -> list[int]:
    """The ids that end a sequence (tokenizer's and model config's)."""
    return llm.engine.eos_token_ids


def block_manager(llm: LLM) -> BlockManager:
    return llm.engine.block_manager


def spec_stats(llm: LLM) -> SpecStats:
    """Speculation counters (proposed, accepted, steps, ...); the engine must speculate."""
    return llm.engine.spec.stats


def request(llm: LLM, request_id: str) -> Request:
    """The live (unfinished) request with this id (its first sample)."""
    return llm.engine._groups[request_id][0]


def requests(llm: LLM) -> list[Request]:
    """Every live request (its first sample), oldest first."""
    return [samples[0] for samples in llm.engine._groups.values()]


# -- the executor and the workers it runs ----------------------------------------------------


def executor(llm: LLM) -> Executor:
    return llm._executor


def worker_procs(llm: LLM) -> list[subprocess.Popen]:
    """The worker processes of a `parallel.launcher: local` engine, by rank."""
    return llm._executor.procs


def ray_actors(llm: LLM) -> list[Any]:
    """The Ray actor handles of a `parallel.launcher: ray` engine, by rank."""
    return llm._executor.actors


def channel_hello(llm: LLM) -> dict[int, dict[str, Any]]:
    """What each rank said when it connected to the controller ({rank: {"ip": ..., ...}})."""
    return llm._executor.channel.hello


def worker_processes() -> list[psutil.Process]:
    """Worker processes (`python -m WORKER_MODULE`) among this test process's descendants."""
    return [p for p in psutil.Process().children(recursive=True) if WORKER_MODULE in " ".join(p.cmdline())]


# -- the in-process worker (world size 1) ----------------------------------------------------


def runner(llm: LLM) -> ModelRunner:
    """The model runner of an engine whose single worker lives in this process."""
    return llm._executor.worker.runner


def decoder_layers(llm: LLM) -> torch.nn.ModuleList:
    """The decoder layers of the in-process worker's model."""
    return runner(llm).model.model.layers


def kv_cache(llm: LLM) -> KVCache:
    """The in-process worker's paged KV cache (`.layers`: one tensor per layer)."""
    return runner(llm).kv_cache


def draft_kv_cache(llm: LLM) -> KVCache:
    """The draft model's own KV cache (speculative method `draft` or `layers`)."""
    return runner(llm).drafter.cache


def use_reference_forward(llm: LLM) -> None:
    """Run the following steps through the layer-by-layer reference path instead of the one
    chosen at start-up (`worker_info()["forward"]` tells which that was)."""
    r = runner(llm)
    r.forward = r.reference
