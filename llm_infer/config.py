"""Engine configuration: the one place where configuration is parsed and validated.

A config comes from a YAML file, a dict, or an `EngineConfig`, plus dotted
overrides (`scheduler.max_num_seqs=8`). The sections are pydantic dataclasses:
choices are `Literal`s, ranges `Field` bounds, unknown keys are refused, and the
rules that relate keys live in one validator. `load_config` turns pydantic's
report into a `ConfigError` with one line naming the key.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import typing
from pathlib import Path
from typing import Annotated, Any, Iterator, Literal, Mapping

import yaml
from pydantic import (ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr, TypeAdapter, ValidationError,
                      model_validator)
from pydantic.dataclasses import dataclass
from pydantic.fields import FieldInfo

from llm_infer.errors import ConfigError

Dtype = Literal["auto", "float32", "bfloat16", "float16"]
# Unknown keys are refused; Strict* types keep bools from passing as ints and strings as numbers.
_SECTION = ConfigDict(extra="forbid")


@dataclass(config=_SECTION)
class CacheConfig:
    """The KV cache: block size, and a fixed block count or a share of free memory."""

    block_size: StrictInt = Field(16, ge=1, description="tokens per KV block")
    num_blocks: StrictInt | None = Field(None, ge=1, description="fixed block count; null: sized by memory_fraction")
    memory_fraction: StrictFloat = Field(0.1, gt=0, le=1, description="share of the memory free after the weights "
                                         "(CPU: MemAvailable; CUDA: free device memory) given to the KV cache")
    prefix_caching: StrictBool = Field(True, description="reuse the KV blocks of prompt prefixes computed before "
                                       "(see Prefix caching)")


@dataclass(config=_SECTION)
class SchedulerConfig:
    """How many sequences and tokens one engine step may carry."""

    max_num_seqs: StrictInt = Field(16, ge=1, description="sequences in the running batch")
    max_num_batched_tokens: StrictInt = Field(2048, ge=1, description="tokens per step; longer prompts are "
                                              "prefilled in chunks")
    max_model_len: StrictInt | None = Field(None, ge=1, description="null: the model's context "
                                        "(`max_position_embeddings`, stretched by RoPE scaling)")
    async_scheduling: Literal["auto", "on", "off"] = Field(
        "auto", description="plan step N+1 while step N runs (`auto`: on a GPU in one process; applies while "
        "no request needs the host between steps: no speculation, logit processing, grammar or logprobs)")


@dataclass(config=_SECTION)
class ParallelConfig:
    """Tensor and pipeline layout, and how the workers are started and reached."""

    tensor: StrictInt = Field(1, ge=1, description="tensor-parallel ranks per stage")
    pipeline: StrictInt = Field(1, ge=1, description="pipeline stages")
    launcher: Literal["local", "ray"] = Field("local", description="`local` (in-process for one rank, child "
                                              "processes otherwise) or `ray`")
    backend: Literal["auto", "nccl", "gloo"] = Field("auto", description="`auto` (NCCL on CUDA, gloo on CPU), "
                                                     "`nccl`, `gloo`")
    pipeline_layers: list[Annotated[StrictInt, Field(ge=1)]] | None = Field(
        None, strict=True, description="layers per stage, e.g. `[16, 8]`; null splits evenly, remainder first")
    expert_parallel: StrictBool = Field(False, description="mixture-of-experts models: the tensor-parallel ranks "
                                        "hold whole experts (contiguous ranges) instead of a slice of every expert; "
                                        "attention stays tensor-parallel")
    ray_address: StrictStr | None = Field(None, description="`auto`, `host:port`, or null for a private local Ray "
                                          "on 127.0.0.1")
    timeout_s: StrictFloat = Field(120.0, gt=0, description="collectives and worker replies; past it the rank is "
                                   "declared hung (see Faults)")
    max_restarts: StrictInt = Field(3, ge=0, description="worker-set restarts allowed within `restart_window_s` after "
                                    "a worker dies or hangs; beyond them the run stops with the rank named (0: never)")
    restart_window_s: StrictFloat = Field(600.0, gt=0, description="the window `max_restarts` counts restarts in, "
                                          "seconds")


@dataclass(config=_SECTION)
class SpeculativeConfig:
    """Speculative decoding: who proposes tokens, and how many per step."""

    method: Literal["ngram", "draft", "layers"] | None = Field(None, description="`ngram`, `draft`, `layers` "
                                                               "(see Speculative decoding)")
    num_tokens: StrictInt = Field(4, ge=1, le=15, description="K proposals per step (the maximum when adaptive)")
    adaptive: StrictBool = Field(False, description="adapt K per sequence from its running acceptance rate")
    draft_model: StrictStr | None = Field(None, description="method `draft`: a model folder (may be AWQ) or "
                                          "`default`")
    draft_dtype: Dtype = Field("auto", description="method `draft`: the draft's own dtype (its precision only "
                               "affects acceptance)")
    draft_layers: StrictInt = Field(8, ge=1, description="method `layers`: the target's first N layers draft")
    ngram_min: StrictInt = Field(2, ge=1, description="method `ngram`: the shortest suffix that may propose")
    ngram_max: StrictInt = Field(3, ge=1, description="method `ngram`: the longest suffix matched against "
                                 "earlier text")


@dataclass(config=_SECTION)
class QuantizationConfig:
    """Quantization applied at load time."""

    lm_head: Literal["int8"] | None = Field(None, description="`int8`: quantize the LM head at load (one scale "
                                            "per vocabulary row)")


@dataclass(config=_SECTION)
class ChatConfig:
    """How chat replies are parsed into reasoning, content and tool calls (README: Chat: tools,
    reasoning and templates)."""

    reasoning_parser: Literal["auto", "qwen3"] | None = Field(
        "auto", description="`qwen3`: `<think>` text becomes `reasoning_content`; `auto`: qwen3 when the chat "
        "template mentions `</think>`; null: off")
    tool_call_parser: Literal["auto", "hermes"] | None = Field(
        "auto", description="`hermes`: `<tool_call>` JSON blocks become `tool_calls`; `auto`: hermes when the chat "
        "template mentions `<tool_call>` or does not handle tools (they are then offered in a Hermes-format "
        "system prompt of ours); null: off")


@dataclass(config=_SECTION)
class PoolingConfig:
    """How embedding requests pool the last hidden states (README: Embeddings)."""

    method: Literal["auto", "last", "mean", "cls"] = Field(
        "auto", description="`last` (the last prompt token's, Qwen3-Embedding's), `mean`, `cls` (the first "
        "token's); `auto`: the sentence-transformers pooling config of the model folder, else `last`")
    normalize: StrictBool = Field(True, description="scale embeddings to unit L2 norm")


@dataclass(config=_SECTION)
class LoRAConfig:
    """LoRA adapters served over the base model (README: LoRA adapters)."""

    enabled: StrictBool = Field(False, description="serve PEFT LoRA adapters (`lora_modules`, `add_lora`, "
                                "`SamplingParams(lora=...)`)")
    max_rank: StrictInt = Field(16, ge=1, le=512, description="the largest adapter rank accepted; every device "
                                "slot is sized for it")
    max_loras: StrictInt = Field(4, ge=1, le=256, description="adapter slots on the device: distinct adapters "
                                 "one step may run")
    max_cpu_loras: StrictInt | None = Field(None, ge=1, description="adapters kept loaded in host memory per "
                                            "worker (least recently used reloaded from disk); null: max_loras")
    runtime_updates: StrictBool = Field(False, description="open POST /v1/load_lora_adapter and "
                                        "/v1/unload_lora_adapter (they read any folder the server can read)")


@dataclass(config=_SECTION)
class EngineConfig:
    """The whole configuration: top-level keys, then one section per concern."""

    model: StrictStr = Field("default", min_length=1, description="Hugging Face folder (config.json + "
                             "safetensors), or `default`")
    tokenizer: StrictStr | None = Field(None, description="tokenizer folder (default: the model's)")
    dtype: Dtype = "auto"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    seed: StrictInt = Field(0, description="seeds requests that bring none")
    threads: StrictInt | None = Field(None, ge=1, description="CPU threads per worker; null: all cores divided "
                                      "among local workers")
    kernels: Literal["auto", "cuda", "torch"] = Field("auto", description="`auto` (our compiled kernels where "
                                                      "built), `torch` (reference), `cuda`")
    cuda_graphs: StrictBool = Field(True, description="capture decode steps as CUDA graphs (CUDA, our kernels, "
                                    "one process, dense models)")
    deterministic: StrictBool = Field(False, description="batch-invariant CPU kernels: a request's tokens and "
                                      "logits never depend on its batch, chunking or cache hits (see Deterministic "
                                      "mode)")
    model_task: Literal["auto", "generate", "embed"] = Field(
        "auto", description="`embed`: serve embeddings only (generation routes answer 400); `generate`: both; "
        "`auto`: `embed` for a sentence-transformers folder (modules.json), else `generate`")
    cache: CacheConfig = Field(default_factory=CacheConfig)
    scheduler: SchedulerConfig = Field(default_factory=SchedulerConfig)
    parallel: ParallelConfig = Field(default_factory=ParallelConfig)
    quantization: QuantizationConfig = Field(default_factory=QuantizationConfig)
    speculative: SpeculativeConfig = Field(default_factory=SpeculativeConfig)
    chat: ChatConfig = Field(default_factory=ChatConfig)
    pooling: PoolingConfig = Field(default_factory=PoolingConfig)
    lora: LoRAConfig = Field(default_factory=LoRAConfig)

    @property
    def world_size(self) -> int:
        """Ranks in all: tensor ranks per stage times pipeline stages."""
        return self.parallel.tensor * self.parallel.pipeline

    @model_validator(mode="after")
    def _rules_across_keys(self) -> EngineConfig:
        """Every rule that relates two keys, in one place (each failure is one line)."""
        spec, parallel = self.speculative, self.parallel
        if spec.method == "draft" and not spec.draft_model:
            raise ValueError("speculative.method: draft needs speculative.draft_model (a model folder or default)")
        if spec.method in ("draft", "layers") and parallel.pipeline > 1:
            raise ValueError(f"speculative.method: {spec.method} does not run with pipeline stages "
                             "(use ngram, or parallel.pipeline: 1)")
        if spec.method == "layers" and parallel.tensor > 1:
            raise ValueError("speculative.method: layers runs the target's own layers on one rank, so it needs "
                             "parallel.tensor: 1 (use ngram or draft)")
        if self.deterministic and self.quantization.lm_head is not None:
            raise ValueError("deterministic: true does not cover quantization.lm_head: int8 (its kernel changes with "
                             "the row count); use one or the other")
        if self.deterministic and self.kernels != "auto":
            raise ValueError(f"deterministic: true needs kernels: auto (the C++ CPU kernels), not {self.kernels}")
        if spec.ngram_min > spec.ngram_max:
            raise ValueError(f"speculative.ngram_min ({spec.ngram_min}) must not exceed ngram_max ({spec.ngram_max})")
        if self.lora.enabled and spec.method in ("draft", "layers"):
            raise ValueError(f"lora.enabled does not run with speculative.method: {spec.method} (the drafter "
                             "has no adapters); use ngram")
        if self.lora.max_cpu_loras is not None and self.lora.max_cpu_loras < self.lora.max_loras:
            raise ValueError(f"lora.max_cpu_loras ({self.lora.max_cpu_loras}) must be at least lora.max_loras "
                             f"({self.lora.max_loras})")
        layers = parallel.pipeline_layers
        if layers is not None and len(layers) != parallel.pipeline:
            raise ValueError(f"parallel.pipeline_layers has {len(layers)} entries for {parallel.pipeline} "
                             "pipeline stages")
        return self


_ENGINE_CONFIG = TypeAdapter(EngineConfig)


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
    try:
        return _ENGINE_CONFIG.validate_python(data)
    except ValidationError as e:
        raise ConfigError(_one_line(e.errors()[0])) from None


def config_table() -> str:
    """The README's key table (key | default | meaning), rendered from the schema."""
    rows = ["| key | default | meaning |", "| --- | --- | --- |"]
    for key, info in _leaves(EngineConfig, ""):
        meaning = info.description or ", ".join(f"`{c}`" for c in _choices(info.annotation))
        default = info.default if isinstance(info.default, str) else json.dumps(info.default)
        rows.append(f"| `{key}` | `{default}` | {meaning} |")
    return "\n".join(rows)


def _leaves(section: type, prefix: str) -> Iterator[tuple[str, FieldInfo]]:
    for name, info in section.__pydantic_fields__.items():
        if dataclasses.is_dataclass(info.annotation):
            yield from _leaves(info.annotation, f"{prefix}{name}.")
        else:
            yield prefix + name, info


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


# -- pydantic's error -> one line naming the dotted key ---------------------------------------

_TYPE_NAMES = {"int_type": "int", "float_type": "float", "bool_type": "bool", "string_type": "str",
               "list_type": "a list"}
_BOUNDS = ("ge", "gt", "le", "lt")


def _one_line(error: Mapping[str, Any]) -> str:
    """pydantic's error as one line: the dotted key, what it must be, what it got."""
    loc, kind, value = error["loc"], error["type"], error["input"]
    if kind == "invalid_key":  # a YAML key that is not a string (`1: x`) names itself
        loc = (*loc[:-1], str(loc[-1]))
    key = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".")
    section, info = _locate(loc)
    if kind in ("unexpected_keyword_argument", "invalid_key"):
        prefix = key[: len(key) - len(str(loc[-1]))]
        close = difflib.get_close_matches(str(loc[-1]), list(section.__pydantic_fields__), n=1) if section else []
        hint = f" (did you mean {prefix + close[0]!r}?)" if close else ""
        return f"unknown config key {key!r}{hint}"
    if kind == "value_error":  # a rule across keys: its message is the line
        return str(error["ctx"]["error"])
    if kind == "literal_error" and info is not None:
        return f"{key} must be one of {', '.join(_choices(info.annotation))}; got {value!r}"
    if kind in _TYPE_NAMES:
        return f"{key} must be {_TYPE_NAMES[kind]}, got {value!r}"
    if kind == "dataclass_type":
        return f"{key} must be a mapping, got {type(value).__name__}"
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        limits = {**error.get("ctx", {}), **(_limits(info) if info else {})}
        return f"{key} must be {_range(limits)}, got {value}"
    if kind == "string_too_short":
        return f"{key} must not be empty"
    return f"{key}: {error['msg']}"


def _locate(loc: tuple[int | str, ...]) -> tuple[type | None, FieldInfo | None]:
    """The section holding the last key of `loc` and that key's field (None inside a list)."""
    section: type | None = EngineConfig
    parent, info = None, None
    for part in loc:
        parent = section
        info = section.__pydantic_fields__.get(part) if section and isinstance(part, str) else None
        section = info.annotation if info and dataclasses.is_dataclass(info.annotation) else None
    return parent, info


def _choices(annotation: Any) -> list[str]:
    if typing.get_origin(annotation) is Literal:
        return list(typing.get_args(annotation))
    return [c for arg in typing.get_args(annotation) for c in _choices(arg)]


def _limits(info: FieldInfo) -> dict[str, Any]:
    return {name: getattr(m, name) for m in info.metadata for name in _BOUNDS if hasattr(m, name)}


def _range(limits: Mapping[str, Any]) -> str:
    """`at least 1`, `greater than 0`, `in (0, 1]`, ... from Field bounds."""
    low = ("[", limits["ge"]) if "ge" in limits else ("(", limits["gt"]) if "gt" in limits else None
    high = ("]", limits["le"]) if "le" in limits else (")", limits["lt"]) if "lt" in limits else None
    if low and high:
        return f"in {low[0]}{low[1]}, {high[1]}{high[0]}"
    if low:
        return f"at least {low[1]}" if low[0] == "[" else f"greater than {low[1]}"
    return f"at most {high[1]}" if high[0] == "]" else f"less than {high[1]}"
