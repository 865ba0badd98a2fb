"""The folder `llm-infer quantize` writes: the options that choose the format, config.json's
`quantization_config` for each format, and the write itself (into a temporary folder renamed at
the end, with the tokenizer files beside the weights)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

from llm_infer.errors import UserError
from llm_infer.runtime.quant.gptq_search import DAMP

FP8_BLOCK = 128  # weight_block_size of the FP8 checkpoints written (as Qwen's)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json",
                   "special_tokens_map.json")


@dataclass
class QuantizeOptions:
    group_size: int = 128
    method: str = "awq"  # or "rtn" (both AWQ's format), "gptq" (GPTQ's algorithm and format), "fp8"
    clip: bool = True
    bits: int = 4  # gptq: 4 or 8
    grid: int = 20
    search_tokens: int = 2048  # calibration tokens used by the scale search
    clip_tokens: int = 256


def dense_dtype(opt: QuantizeOptions) -> torch.dtype:
    """The dtype of the tensors left unquantized: bf16 beside FP8 (as Qwen's FP8 checkpoints), else fp16."""
    return torch.bfloat16 if opt.method == "fp8" else torch.float16


def quantization_config(opt: QuantizeOptions) -> dict:
    """config.json's `quantization_config` of what `quantize_model` writes."""
    if opt.method == "fp8":
        return {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
                "weight_block_size": [FP8_BLOCK, FP8_BLOCK], "modules_to_not_convert": None}
    if opt.method == "gptq":
        return {"quant_method": "gptq", "bits": opt.bits, "group_size": opt.group_size, "sym": False,
                "desc_act": False, "damp_percent": DAMP, "true_sequential": False, "static_groups": False,
                "checkpoint_format": "gptq"}
    return {"quant_method": "awq", "bits": 4, "group_size": opt.group_size, "zero_point": True, "version": "gemm",
            "modules_to_not_convert": None}


def write_folder(model_dir: Path, out_dir: Path, tensors: dict[str, torch.Tensor], opt: QuantizeOptions) -> None:
    """Into a temporary folder beside `out_dir`, renamed at the end: never a half-written model."""
    out_dir = Path(out_dir)
    if out_dir.exists():
        raise UserError(f"output folder {out_dir} already exists; choose a new one")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".tmp-{out_dir.name}-"))
    try:
        config = json.loads((Path(model_dir) / "config.json").read_text())
        config["quantization_config"] = quantization_config(opt)
        config["torch_dtype"] = str(dense_dtype(opt)).removeprefix("torch.")
        config.pop("dtype", None)
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        for name in TOKENIZER_FILES:
            if (Path(model_dir) / name).is_file():
                shutil.copy(Path(model_dir) / name, tmp / name)
        os.chmod(tmp, 0o755)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
