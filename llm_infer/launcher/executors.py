"""Pick the executor for a configuration: the one place that maps `parallel.launcher` to workers."""

from __future__ import annotations

from llm_infer.config import EngineConfig
from llm_infer.runtime.executor import Executor


def make_executor(config: EngineConfig, progress: bool = True) -> Executor:
    if config.parallel.launcher == "ray":
        from llm_infer.launcher.ray_executor import RayExecutor

        return RayExecutor(config)
    if config.world_size == 1:
        from llm_infer.launcher.inprocess_executor import InProcessExecutor

        return InProcessExecutor(config, progress=progress)
    from llm_infer.launcher.process_executor import ProcessExecutor

    return ProcessExecutor(config)
