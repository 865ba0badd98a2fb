"""LoRA adapters in PEFT's format: read and checked once, before any request uses them.

A PEFT adapter folder holds `adapter_config.json` and `adapter_model.safetensors` (PEFT's
`save_pretrained`). For every adapted projection the file has
`base_model.model.model.layers.{i}.{self_attn|mlp}.{proj}.lora_A.weight` `[r, in_features]` and
`...lora_B.weight` `[out_features, r]`; the layer computes `W x + scale * B (A x)` with
`scale = lora_alpha / r`, or `lora_alpha / sqrt(r)` with `use_rslora`. `rank_pattern` and
`alpha_pattern` override `r` and `lora_alpha` for the modules whose name ends with one of their
keys (a regular expression, matched as PEFT matches it: `(.*\\.)?{key}$` against
`model.layers.{i}.self_attn.q_proj`; the first key that matches wins).

Supported targets: q/k/v/o_proj and gate/up/down_proj of dense layers. Anything else (embeddings,
the LM head, DoRA, trained biases, `modules_to_save`, `fan_in_fan_out`) is refused with a
`UserError` of one line naming the file and, where one is at fault, the tensor. Only the
safetensors headers are read here (`read_adapter`); workers read the data (`open_tensors`).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safetensors import safe_open

from llm_infer.errors import UserError
from llm_infer.runtime.models.model_config import ModelConfig

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP = ("gate_proj", "up_proj", "down_proj")
_TENSOR = re.compile(r"base_model\.model\.model\.layers\.(\d+)\.(self_attn|mlp)\.(\w+)\.lora_([AB])\.weight")
_UNSUPPORTED_TARGETS = ("embed_tokens", "lm_head")
_FLOAT_DTYPES = ("F32", "F16", "BF16", "F64")


@dataclass(frozen=True)
class LoRAModule:
    """One adapted projection: its decoder layer, checkpoint name (`q_proj`...), rank and scale."""

    layer: int
    name: str
    rank: int
    scale: float

    @property
    def prefix(self) -> str:
        part = "self_attn" if self.name in ATTENTION else "mlp"
        return f"base_model.model.model.layers.{self.layer}.{part}.{self.name}"


@dataclass(frozen=True)
class LoRAAdapter:
    """A checked adapter: where it lives and what it adapts (no tensor data)."""

    path: Path
    modules: tuple[LoRAModule, ...]

    @property
    def weights_file(self) -> Path:
        return self.path / WEIGHTS_FILE

    @property
    def rank(self) -> int:
        return max(m.rank for m in self.modules)


def _fail(where: Path, message: str) -> UserError:
    return UserError(f"LoRA adapter {where}: {message}")


def _pattern_value(patterns: dict[str, Any], module_name: str, default: Any, where: Path) -> Any:
    for key, value in patterns.items():
        try:
            if re.match(rf"(.*\.)?{key}$", module_name):
                return value
        except re.error as e:
            raise _fail(where, f"pattern key {key!r} is not a regular expression ({e})") from None
    return default


def _read_config(path: Path) -> dict[str, Any]:
    file = path / CONFIG_FILE
    if not path.is_dir():
        raise UserError(f"LoRA adapter {path}: no such folder")
    if not file.is_file():
        raise _fail(file, "missing (a PEFT adapter folder has adapter_config.json and adapter_model.safetensors)")
    try:
        config = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise _fail(file, f"not valid JSON ({e})") from None
    if not isinstance(config, dict):
        raise _fail(file, "must be a JSON object")
    checks = [
        (config.get("peft_type", "LORA") == "LORA", f"peft_type {config.get('peft_type')!r} is not LORA"),
        (isinstance(config.get("r"), int) and not isinstance(config["r"], bool) and config["r"] >= 1,
         "r must be an integer >= 1"),
        (isinstance(config.get("lora_alpha", 8), (int, float)) and not isinstance(config.get("lora_alpha"), bool),
         "lora_alpha must be a number"),
        (not config.get("use_dora"), "use_dora (DoRA) is not supported"),
        (config.get("bias", "none") == "none", f"bias {config.get('bias')!r}: trained biases are not supported"),
        (not config.get("modules_to_save"), "modules_to_save is not supported (only LoRA weights are loaded)"),
        (not config.get("fan_in_fan_out"), "fan_in_fan_out is not supported"),
        (isinstance(config.get("rank_pattern") or {}, dict), "rank_pattern must be an object"),
        (isinstance(config.get("alpha_pattern") or {}, dict), "alpha_pattern must be an object"),
    ]
    for ok, message in checks:
        if not ok:
            raise _fail(file, message)
    targets = config.get("target_modules") or []
    targets = [targets] if isinstance(targets, str) else targets
    for target in _UNSUPPORTED_TARGETS:
        if any(isinstance(t, str) and re.search(rf"(^|\.|\b){target}", t) for t in targets):
            raise _fail(file, f"target module {target} is not supported (q/k/v/o_proj and gate/up/down_proj are)")
    return config


def read_adapter(path: str | Path, model: ModelConfig, max_rank: int) -> LoRAAdapter:
    """Check the adapter at `path` against the base model `model` and `lora.max_rank`: its config,
    every tensor's name, shape and dtype (headers only). Raises UserError naming the file and tensor.
    The adapter's path is made absolute here: workers (other processes, other machines under Ray)
    reopen it."""
    try:
        return _read_adapter(Path(path).expanduser().resolve(), model, max_rank)
    except OSError as e:  # a name too long, a permission denied, a file vanishing while read
        raise UserError(f"LoRA adapter {path}: {e.strerror or e}") from None


def _read_adapter(path: Path, model: ModelConfig, max_rank: int) -> LoRAAdapter:
    config = _read_config(path)
    file = path / WEIGHTS_FILE
    if not file.is_file():
        raise _fail(file, "missing (only safetensors adapters are loaded)")
    try:
        with safe_open(str(file), framework="pt") as f:
            shapes = {name: (tuple(f.get_slice(name).get_shape()), f.get_slice(name).get_dtype()) for name in f.keys()}
    except Exception as e:  # a truncated or foreign file
        raise _fail(file, f"not a readable safetensors file ({e})") from None
    pairs: dict[tuple[int, str], dict[str, tuple[int, ...]]] = {}
    for name, (shape, dtype) in shapes.items():
        match = _TENSOR.fullmatch(name)
        if match is None:
            what = next((t for t in _UNSUPPORTED_TARGETS if t in name), None)
            reason = (f"target module {what} is not supported" if what else
                      "unexpected tensor (expected base_model.model.model.layers.N.<self_attn|mlp>.<proj>.lora_A/B.weight)")
            raise _fail(file, f"tensor {name}: {reason}")
        layer, part, proj, which = int(match[1]), match[2], match[3], match[4]
        if proj not in (ATTENTION if part == "self_attn" else MLP):
            raise _fail(file, f"tensor {name}: module {part}.{proj} is not supported "
                        "(q/k/v/o_proj and gate/up/down_proj are)")
        if layer >= model.num_layers:
            raise _fail(file, f"tensor {name}: layer {layer} does not exist (the model has {model.num_layers})")
        if part == "mlp" and model.moe is not None and model.moe.is_sparse(layer):
            raise _fail(file, f"tensor {name}: layer {layer} is a mixture-of-experts layer; adapters of its "
                        "experts are not supported")
        if dtype not in _FLOAT_DTYPES:
            raise _fail(file, f"tensor {name}: dtype {dtype} is not a float type")
        if len(shape) != 2:
            raise _fail(file, f"tensor {name}: shape {list(shape)} is not 2-D")
        pairs.setdefault((layer, proj), {})[which] = shape
    if not pairs:
        raise _fail(file, "holds no LoRA tensors")
    modules = []
    for (layer, proj), found in sorted(pairs.items()):
        module = LoRAModule(layer, proj, 0, 0.0)
        for which in "AB":
            if which not in found:
                raise _fail(file, f"tensor {module.prefix}.lora_{which}.weight is missing")
        in_features, out_features = _features(model, proj)
        rank = found["A"][0]
        expected = {"A": [rank, in_features], "B": [out_features, rank]}
        for which in "AB":
            if list(found[which]) != expected[which]:
                raise _fail(file, f"tensor {module.prefix}.lora_{which}.weight has shape {list(found[which])}, "
                            f"expected {expected[which]}")
        module_name = module.prefix.removeprefix("base_model.model.")
        declared = _pattern_value(config.get("rank_pattern") or {}, module_name, config["r"], path / CONFIG_FILE)
        if rank != declared:
            raise _fail(file, f"tensor {module.prefix}.lora_A.weight has rank {rank}, the config says {declared}")
        if rank > max_rank:
            raise _fail(file, f"tensor {module.prefix}.lora_A.weight has rank {rank}, above lora.max_rank "
                        f"({max_rank})")
        alpha = _pattern_value(config.get("alpha_pattern") or {}, module_name, config.get("lora_alpha", 8),
                               path / CONFIG_FILE)
        if not isinstance(alpha, (int, float)) or isinstance(alpha, bool):
            raise _fail(path / CONFIG_FILE, f"alpha of {module_name} must be a number")
        scale = alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank
        modules.append(LoRAModule(layer, proj, rank, float(scale)))
    return LoRAAdapter(path, tuple(modules))


def _features(model: ModelConfig, proj: str) -> tuple[int, int]:
    """(in_features, out_features) of a checkpoint projection of the base model."""
    q, kv, hidden, inter = model.num_heads * model.head_dim, model.num_kv_heads * model.head_dim, \
        model.hidden_size, model.intermediate_size
    return {"q_proj": (hidden, q), "k_proj": (hidden, kv), "v_proj": (hidden, kv), "o_proj": (q, hidden),
            "gate_proj": (hidden, inter), "up_proj": (hidden, inter), "down_proj": (inter, hidden)}[proj]


def open_tensors(adapter: LoRAAdapter):
    """The adapter's safetensors file opened lazily (`get_slice(name)`); a context manager."""
    return safe_open(str(adapter.weights_file), framework="pt")
