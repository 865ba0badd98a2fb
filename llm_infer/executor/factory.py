"""Pick the executor for a configuration: the one place that maps `parallel.launcher` to workers."""

from __future__ import annotations

from llm_infer.config import EngineConfig
from llm_infer.executor.base import Executor


def make_executor(config: EngineConfig, progress: bool = True) -> Executor:
    """Ray actors for `launcher: ray`; else the Worker in this process (one rank) or child processes."""
    if config.parallel.launcher == "ray":
        from llm_infer.executor.ray_actors import RayExecutor

        return RayExecutor(config)
    if config.world_size == 1:
        from llm_infer.executor.inprocess import InProcessExecutor

        return InProcessExecutor(config, progress=progress)
    from llm_infer.executor.processes import ProcessExecutor

    return ProcessExecutor(config)
