"""Random PEFT LoRA adapters for the tests, and the oracle: the base checkpoint with an adapter merged.

`write_adapter` writes what PEFT's `save_pretrained` writes (adapter_config.json and
adapter_model.safetensors, tensors named `base_model.model.model.layers.N.<part>.<proj>.lora_A/B.weight`),
with B random (PEFT starts B at zero, which would test nothing). `merge_adapter` computes, on its own,
W + scale * B @ A for every adapted projection (scale alpha / r, or alpha / sqrt(r) with rslora;
patterns looked up by suffix, first key first) and saves a plain checkpoint transformers loads.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

ALL_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _shapes(config: dict) -> dict[str, tuple[int, int]]:
    """(in, out) of each projection, from a transformers config.json."""
    hidden, inter = config["hidden_size"], config["intermediate_size"]
    heads, kv = config["num_attention_heads"], config["num_key_value_heads"]
    head_dim = config.get("head_dim") or hidden // heads
    return {"q_proj": (hidden, heads * head_dim), "k_proj": (hidden, kv * head_dim), "v_proj": (hidden, kv * head_dim),
            "o_proj": (heads * head_dim, hidden), "gate_proj": (hidden, inter), "up_proj": (hidden, inter),
            "down_proj": (inter, hidden)}


def _lookup(patterns: dict, name: str, default):
    return next((v for k, v in patterns.items() if name.endswith(k)), default)


def write_adapter(path: Path, model_dir: Path, *, r: int = 4, alpha: float = 8.0, targets=ALL_TARGETS,
                  seed: int = 0, rank_pattern: dict | None = None, alpha_pattern: dict | None = None,
                  use_rslora: bool = False, layers: list[int] | None = None, dtype=torch.float32,
                  std: float = 0.2) -> Path:
    """A random adapter of `model_dir`'s model at `path` (`layers`: None for all)."""
    config = json.loads((model_dir / "config.json").read_text())
    shapes = _shapes(config)
    g = torch.Generator().manual_seed(seed)
    tensors = {}
    for layer in layers if layers is not None else range(config["num_hidden_layers"]):
        for proj in targets:
            part = "self_attn" if proj in ALL_TARGETS[:4] else "mlp"
            name = f"model.layers.{layer}.{part}.{proj}"
            rank = _lookup(rank_pattern or {}, name, r)
            fan_in, fan_out = shapes[proj]
            tensors[f"base_model.model.{name}.lora_A.weight"] = (torch.randn(rank, fan_in, generator=g)
                                                                 * std / math.sqrt(fan_in)).to(dtype)
            tensors[f"base_model.model.{name}.lora_B.weight"] = (torch.randn(fan_out, rank, generator=g) * std).to(dtype)
    path.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path / "adapter_model.safetensors"))
    (path / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "r": r, "lora_alpha": alpha, "target_modules": list(targets), "bias": "none",
        "use_rslora": use_rslora, "rank_pattern": rank_pattern or {}, "alpha_pattern": alpha_pattern or {},
        "lora_dropout": 0.0, "fan_in_fan_out": False, "task_type": "CAUSAL_LM"}))
    return path


def merge_adapter(model_dir: Path, adapter_dir: Path, out: Path) -> Path:
    """`model_dir`'s checkpoint with the adapter folded into its weights, at `out`."""
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    lora = load_file(str(adapter_dir / "adapter_model.safetensors"))
    weights = {}
    for file in model_dir.glob("*.safetensors"):
        weights.update(load_file(str(file)))
    for key, a in lora.items():
        if ".lora_A." not in key:
            continue
        name = key.removeprefix("base_model.model.").removesuffix(".lora_A.weight")
        b = lora[key.replace("lora_A", "lora_B")]
        rank = a.shape[0]
        alpha = _lookup(config.get("alpha_pattern") or {}, name, config["lora_alpha"])
        scale = alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank
        w = weights[f"{name}.weight"]
        weights[f"{name}.weight"] = (w.double() + scale * b.double() @ a.double()).to(w.dtype)
    out.mkdir(parents=True, exist_ok=True)
    for file in model_dir.iterdir():
        if file.suffix != ".safetensors" and file.is_file():
            shutil.copy(file, out / file.name)
    save_file(weights, str(out / "model.safetensors"), metadata={"format": "pt"})
    return out
