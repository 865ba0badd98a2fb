"""Engine configuration: the one place where configuration is parsed and validated.

A config comes from a YAML file, a dict, or an `EngineConfig`, plus dotted
overrides (`scheduler.max_num_seqs=8`). Every mistake (unknown key, wrong type,
value out of range) is a `ConfigError` with one line naming the key.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from llm_infer.errors import ConfigError

DTYPES = ("auto", "float32", "bfloat16", "float16")
DEVICES = ("auto", "cpu", "cuda")
LAUNCHERS = ("local", "ray")
BACKENDS = ("auto", "nccl", "gloo")
KERNELS = ("auto", "cuda", "torch")


@dataclass
class CacheConfig:
    block_size: int = 16
    # Either a fixed number of KV blocks, or a share of the memory left free
    # after the weights are loaded (CPU: MemAvailable; CUDA: free device memory).
    num_blocks: int | None = None
    memory_fraction: float = 0.1
    # Reuse the KV of full blocks whose token prefix was computed before (shared system prompts,
    # multi-turn chats). Not used with speculative method draft/layers (the draft's cache is not shared).
    prefix_caching: bool = True


@dataclass
class SchedulerConfig:
    max_num_seqs: int = 16
    max_num_batched_tokens: int = 2048
    # None: the model's max_position_embeddings.
    max_model_len: int | None = None


@dataclass
class ParallelConfig:
    tensor: int = 1
    pipeline: int = 1
    launcher: str = "local"
    backend: str = "auto"
    # Layers per pipeline stage; None splits evenly (remainder on the first stages).
    pipeline_layers: list[int] | None = None
    # For launcher=ray: "auto", an address, or None to start a local instance.
    ray_address: str | None = None
    # Seconds a collective or a worker reply may take before the run is declared dead.
    timeout_s: float = 120.0


@dataclass
class SpeculativeConfig:
    # null (off) | ngram (prompt lookup) | draft (a separate draft model) | layers (the target's first layers)
    method: str | None = None
    num_tokens: int = 4  # K: tokens proposed per step (the maximum when adaptive)
    adaptive: bool = False  # adjust K per sequence from its running acceptance rate
    draft_model: str | None = None  # method draft: a model folder or "default"
    draft_dtype: str = "auto"  # method draft: the draft's own dtype (its precision only affects acceptance)
    draft_layers: int = 8  # method layers: how many of the target's first layers draft
    ngram_max: int = 3  # method ngram: the longest suffix matched against earlier text
    ngram_min: int = 2  # method ngram: the shortest suffix that may propose (1-token matches mislead)


@dataclass
class QuantizationConfig:
    # int8: quantize the LM head at load time (one scale per vocabulary row); null keeps it as loaded.
    lm_head: str | None = None


@dataclass
class EngineConfig:
    model: str = "default"
    tokenizer: str | None = None
    dtype: str = "auto"
    device: str = "auto"
    seed: int = 0
    # CPU threads per worker; None: all cores divided among local workers.
    threads: int | None = None
    kernels: str = "auto"
    # Capture decode steps as CUDA graphs (one per batch-size bucket) when our CUDA kernels run.
    cuda_graphs: bool = True
    cache: CacheConfig = field(default_factory=CacheConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    quantization: QuantizationConfig = field(default_factory=QuantizationConfig)
    speculative: SpeculativeConfig = field(default_factory=SpeculativeConfig)

    @property
    def world_size(self) -> int:
        return self.parallel.tensor * self.parallel.pipeline


def load_config(
    config: str | Path | Mapping[str, Any] | EngineConfig | None = None,
    overrides: Mapping[str, Any] | list[str] | None = None,
) -> EngineConfig:
    """Build a validated `EngineConfig` from a YAML path, dict or config, plus overrides.

    `overrides` is either a mapping of dotted keys to values or a list of
    `dotted.key=value` strings (values parsed as YAML scalars, as on the CLI).
    """
    if config is None:
        data: dict[str, Any] = {}
    elif isinstance(config, EngineConfig):
        data = dataclasses.asdict(config)
    elif isinstance(config, Mapping):
        data = _deep_copy(config)
    else:
        data = _read_yaml(Path(config))
    for key, value in _parse_overrides(overrides).items():
        _set_dotted(data, key, value)
    cfg = _build(EngineConfig, data, prefix="")
    _validate(cfg)
    return cfg


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        raise ConfigError(f"{path}: not valid YAML{where}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys to values")
    return data


def _parse_overrides(overrides: Mapping[str, Any] | list[str] | None) -> dict[str, Any]:
    if overrides is None:
        return {}
    if isinstance(overrides, Mapping):
        return dict(overrides)
    parsed: dict[str, Any] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r} is not of the form dotted.key=value")
        try:
            parsed[key.strip()] = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            parsed[key.strip()] = raw
    return parsed


def _deep_copy(data: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _deep_copy(v) if isinstance(v, Mapping) else v for k, v in data.items()}


def _set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = data
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"cannot set {key!r}: {part!r} is not a section")
        node = child
    node[parts[-1]] = value


def _build(cls: type, data: Any, prefix: str) -> Any:
    where = prefix.rstrip(".") or "config"
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where} must be a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f" (did you mean {prefix + close[0]!r}?)" if close else ""
            raise ConfigError(f"unknown config key {prefix + str(key)!r}{hint}")
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            kwargs[key] = _build(hint, value, prefix=f"{prefix}{key}.")
        else:
            kwargs[key] = _check_type(f"{prefix}{key}", value, hint)
    return cls(**kwargs)


def _check_type(key: str, value: Any, hint: Any) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _check_type(key, value, arg)
            except ConfigError as e:
                errors.append(e)
        raise errors[0]
    if origin is list:
        (item_type,) = typing.get_args(hint)
        if not isinstance(value, list):
            raise ConfigError(f"{key} must be a list, got {value!r}")
        return [_check_type(f"{key}[{i}]", v, item_type) for i, v in enumerate(value)]
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint in (int, float) and isinstance(value, bool):
        raise ConfigError(f"{key} must be {hint.__name__}, got {value!r}")
    if not isinstance(value, hint):
        raise ConfigError(f"{key} must be {hint.__name__}, got {value!r}")
    return value


def _check_choice(key: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{key} must be one of {', '.join(choices)}; got {value!r}")


def _check_positive(key: str, value: int | None) -> None:
    if value is not None and value < 1:
        raise ConfigError(f"{key} must be at least 1, got {value}")


def _validate(cfg: EngineConfig) -> None:
    _check_choice("dtype", cfg.dtype, DTYPES)
    _check_choice("device", cfg.device, DEVICES)
    _check_choice("kernels", cfg.kernels, KERNELS)
    _check_choice("parallel.launcher", cfg.parallel.launcher, LAUNCHERS)
    _check_choice("parallel.backend", cfg.parallel.backend, BACKENDS)
    spec = cfg.speculative
    if spec.method is not None:
        _check_choice("speculative.method", spec.method, ("ngram", "draft", "layers"))
        if spec.method == "draft" and not spec.draft_model:
            raise ConfigError("speculative.method: draft needs speculative.draft_model (a model folder or default)")
        if spec.method != "ngram" and cfg.parallel.pipeline > 1:
            raise ConfigError(f"speculative.method: {spec.method} does not run with pipeline stages "
                              "(use ngram, or parallel.pipeline: 1)")
        if spec.method == "layers" and cfg.parallel.tensor > 1:
            raise ConfigError("speculative.method: layers runs the target's own layers on one rank, so it needs "
                              "parallel.tensor: 1 (use ngram or draft)")
    if not 1 <= spec.num_tokens <= 15:
        raise ConfigError(f"speculative.num_tokens must be in 1..15, got {spec.num_tokens}")
    _check_positive("speculative.draft_layers", spec.draft_layers)
    _check_choice("speculative.draft_dtype", spec.draft_dtype, DTYPES)
    _check_positive("speculative.ngram_max", spec.ngram_max)
    _check_positive("speculative.ngram_min", spec.ngram_min)
    if spec.ngram_min > spec.ngram_max:
        raise ConfigError(f"speculative.ngram_min ({spec.ngram_min}) must not exceed ngram_max ({spec.ngram_max})")
    if cfg.quantization.lm_head is not None:
        _check_choice("quantization.lm_head", cfg.quantization.lm_head, ("int8",))
    if not cfg.model:
        raise ConfigError("model must name a model folder or 'default'")
    _check_positive("threads", cfg.threads)
    _check_positive("cache.block_size", cfg.cache.block_size)
    _check_positive("cache.num_blocks", cfg.cache.num_blocks)
    if not 0.0 < cfg.cache.memory_fraction <= 1.0:
        raise ConfigError(f"cache.memory_fraction must be in (0, 1], got {cfg.cache.memory_fraction}")
    _check_positive("scheduler.max_num_seqs", cfg.scheduler.max_num_seqs)
    _check_positive("scheduler.max_num_batched_tokens", cfg.scheduler.max_num_batched_tokens)
    _check_positive("scheduler.max_model_len", cfg.scheduler.max_model_len)
    _check_positive("parallel.tensor", cfg.parallel.tensor)
    _check_positive("parallel.pipeline", cfg.parallel.pipeline)
    if cfg.parallel.timeout_s <= 0:
        raise ConfigError(f"parallel.timeout_s must be positive, got {cfg.parallel.timeout_s}")
    layers = cfg.parallel.pipeline_layers
    if layers is not None:
        if len(layers) != cfg.parallel.pipeline:
            raise ConfigError(
                f"parallel.pipeline_layers has {len(layers)} entries for {cfg.parallel.pipeline} pipeline stages"
            )
        for i, n in enumerate(layers):
            _check_positive(f"parallel.pipeline_layers[{i}]", n)
