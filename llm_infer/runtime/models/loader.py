"""Build a model and fill each parameter from safetensors through its own `weight_loader`.

The loader walks the parameters this rank holds, asks the model which
checkpoint tensors feed each one, and hands the parameter a lazy safetensors
slice: the parameter reads only its shard. Weights come only from safetensors.
A checkpoint of the bare decoder (`Qwen3Model`, as sentence-transformers folders such as
Qwen3-Embedding save it) names its tensors without the `model.` prefix: those are found too.
"""

from __future__ import annotations

import json
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from tqdm import tqdm

from llm_infer.errors import UserError
from llm_infer.parallel.weight_utils import WeightShapeError, default_weight_loader


class Checkpoint:
    """Tensor name -> lazy slice over a folder of single or sharded safetensors files."""

    def __init__(self, model_dir: str | Path):
        model_dir = Path(model_dir)
        index = model_dir / "model.safetensors.index.json"
        if index.is_file():
            weight_map: dict[str, str] = json.loads(index.read_text())["weight_map"]
            files = sorted(set(weight_map.values()))
        else:
            files = sorted(p.name for p in model_dir.glob("*.safetensors"))
            weight_map = {}
        if not files:
            raise UserError(f"no .safetensors weights in {model_dir} (only safetensors are loaded)")
        self._stack = ExitStack()
        self._handles = {}
        for name in files:
            path = model_dir / name
            if not path.is_file():
                raise UserError(f"{index.name} lists {name}, which is missing from {model_dir}")
            try:
                self._handles[name] = self._stack.enter_context(safe_open(str(path), framework="pt"))
            except Exception as e:  # a truncated or foreign file
                self._stack.close()
                raise UserError(f"{path} is not a readable safetensors file ({e})") from None
        if not weight_map:
            weight_map = {key: name for name, h in self._handles.items() for key in h.keys()}
        self.weight_map = weight_map

    def __contains__(self, name: str) -> bool:
        return name in self.weight_map

    def get_slice(self, name: str) -> Any:
        return self._handles[self.weight_map[name]].get_slice(name)

    def close(self) -> None:
        self._stack.close()


def load_weights(model: torch.nn.Module, model_dir: str | Path, progress: bool = True,
                 lm_head_optional: bool = False) -> None:
    """Fill every parameter of `model` from the checkpoint in `model_dir`. `lm_head_optional`
    (embedding models): a checkpoint without `lm_head.weight` gets the token embedding there
    instead (the LM head is then never used)."""
    ckpt = Checkpoint(model_dir)
    try:
        params = list(model.named_parameters())
        for name, param in tqdm(params, desc="Loading weights", unit="param", disable=not progress, leave=False):
            loader = getattr(param, "weight_loader", default_weight_loader)
            for ckpt_name, shard_id in model.checkpoint_names(name, ckpt):
                if ckpt_name == "lm_head.weight" and lm_head_optional and ckpt_name not in ckpt:
                    ckpt_name = "model.embed_tokens.weight"
                if ckpt_name not in ckpt and ckpt_name.removeprefix("model.") in ckpt:
                    ckpt_name = ckpt_name.removeprefix("model.")
                if ckpt_name == "lm_head.weight" and ckpt_name not in ckpt:
                    raise UserError(f"checkpoint {model_dir} has no LM head (lm_head.weight): it can only serve "
                                    "embeddings (model_task: embed)")
                if ckpt_name not in ckpt and getattr(param, "optional", False):  # e.g. GPTQ's g_idx
                    continue
                if ckpt_name not in ckpt:
                    raise UserError(f"checkpoint {model_dir} is missing tensor {ckpt_name}")
                try:
                    loader(param, ckpt.get_slice(ckpt_name), shard_id)
                except WeightShapeError as e:
                    raise UserError(f"tensor {ckpt_name} does not fit the model: {e}") from None
    finally:
        ckpt.close()
    for module in model.modules():
        post = getattr(module, "process_weights_after_loading", None)
        if post is not None:
            post()
