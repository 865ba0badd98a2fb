"""Pick the executor for a configuration."""

from __future__ import annotations

from llm_infer.config import EngineConfig
from llm_infer.errors import ConfigError
from llm_infer.runtime.executor import Executor
from llm_infer.runtime.models.model_config import ModelConfig


def make_executor(config: EngineConfig, model_config: ModelConfig, progress: bool = True) -> Executor:
    if config.world_size == 1 and config.parallel.launcher == "local":
        from llm_infer.launcher.inprocess_executor import InProcessExecutor

        return InProcessExecutor(config, progress=progress)
    raise ConfigError("parallel: only tensor=1, pipeline=1, launcher=local is supported so far")
