"""From a configuration to a model on a device: the facts derived once, and this rank's model.

`resolve_model` reads the model folder once (its `config.json`, the dtype to run in, the
context length to serve); the controller and every worker call it once and pass the
result down, so nothing below re-reads the folder. `build_model` then builds this rank's
part of the network and loads its weights (dense or quantized: `runtime/quant`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from llm_infer.errors import UserError
from llm_infer.kernels import dispatch
from llm_infer.runtime.models.decoder import CausalLM
from llm_infer.runtime.models.loader import load_weights
from llm_infer.runtime.models.model_config import ModelConfig
from llm_infer.runtime.models.resolve import resolve_model_dir
from llm_infer.runtime.models.sentence_transformers import resolve_task
from llm_infer.runtime.quant.config import quant_config

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_dtype(name: str, model_config: ModelConfig, device: torch.device) -> torch.dtype:
    """`auto` follows vLLM: half precision for full-precision checkpoints (bf16, or fp16 when the
    checkpoint is fp16 and the device is CUDA; CPU fp16 matmuls are slow)."""
    if name != "auto":
        return _DTYPES[name]
    if model_config.torch_dtype == "float16" and device.type == "cuda":
        return torch.float16
    return torch.bfloat16


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """`cpu`, `cuda` (the `local_rank`-th visible GPU) or `auto` (CUDA when available).
    Raises UserError when CUDA is asked for and there is none."""
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise UserError("device: cuda was requested but no CUDA device is available")
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device("cpu")


@dataclass(frozen=True)
class ResolvedModel:
    """What a model folder and the configuration decide together, read once."""

    model_dir: Path
    config: ModelConfig
    dtype: torch.dtype
    max_model_len: int  # tokens of context served (scheduler.max_model_len or the model's maximum)
    task: str = "generate"  # or `embed` (model_task; see sentence_transformers.resolve_task)


def resolve_model(model: str, dtype: str, device: torch.device, max_model_len: int | None = None,
                  task: str = "auto") -> ResolvedModel:
    """Resolve `model` (a folder or `default`) and read its config once (`task`: model_task).
    Raises UserError for a missing folder, an unreadable config or a max_model_len beyond the model's."""
    model_dir = resolve_model_dir(model)
    model_config = ModelConfig.from_dir(model_dir)
    return ResolvedModel(model_dir, model_config, resolve_dtype(dtype, model_config, device),
                         model_config.max_model_len(max_model_len), resolve_task(task, model_dir))


def build_model(resolved: ResolvedModel, device: torch.device, kernels: dispatch.Kernels, lm_head_int8: bool = False,
                progress: bool = True, pipeline_layers: list[int] | None = None) -> CausalLM:
    """This rank's part of the model (`pipeline_layers`: layers per stage, None splits evenly), its
    weights (dense, AWQ, GPTQ or FP8) loaded, in eval mode; `lm_head_int8` quantizes the LM head at load."""
    quant = quant_config(resolved.model_dir, resolved.config.quantization)
    method_for = (lambda prefix: quant.method_for(prefix, kernels)) if quant else None
    with torch.device(device):
        model = CausalLM(resolved.config, resolved.dtype, kernels, method_for, pipeline_layers=pipeline_layers,
                         lm_head_int8=lm_head_int8)
    # An embedding model may come without an LM head (a sentence-transformers folder): it is never used.
    load_weights(model, resolved.model_dir, progress=progress, lm_head_optional=resolved.task == "embed")
    return model.eval()
