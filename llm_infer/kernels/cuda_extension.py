"""Build (once, cached) and load the CUDA kernels on a machine with a GPU.

Compiled for the device's own architecture (e.g. sm_90 on an H100) with torch's
extension builder and ninja, into `$LLM_INFER_HOME/build/`, keyed by the sources,
the architecture and the torch/CUDA versions. A failed build is a one-line
warning and the torch path is used (or, with `kernels: cuda`, a clear error).
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import os
import sys
import warnings
from pathlib import Path
from types import ModuleType

import torch

from llm_infer.kernels.cpu_extension import cache_home

CSRC = Path(__file__).parent / "csrc" / "cuda"
SOURCES = ["cuda_bindings.cpp", "cache_ops.cu", "decode_attention.cu", "prefill_attention.cu", "awq_gemv.cu",
           "awq_gemm.cu", "rms_norm.cu"]
HEADERS = sorted(p.name for p in CSRC.iterdir() if p.suffix in (".h", ".cuh"))  # hashed into the build key


def _build_key(arch: str) -> str:
    h = hashlib.sha256()
    for name in SOURCES + HEADERS:
        h.update((CSRC / name).read_bytes())
    h.update(f"{arch} {torch.__version__} {torch.version.cuda} {sys.version} {CSRC}".encode())
    return h.hexdigest()[:16]


@functools.cache
def load_cuda_extension(device_index: int = 0) -> ModuleType | None:
    """The compiled module, or None (after a warning) when there is no GPU or the build fails."""
    if not torch.cuda.is_available() or os.environ.get("LLM_INFER_NO_CUDA_EXT"):
        return None
    major, minor = torch.cuda.get_device_capability(device_index)
    arch = f"{major}{minor}"
    key = _build_key(arch)
    build_dir = cache_home() / "build" / f"cuda-{key}"
    build_dir.mkdir(parents=True, exist_ok=True)
    try:
        from torch.utils.cpp_extension import load

        with open(build_dir / ".build.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            (build_dir / "lock").unlink(missing_ok=True)  # a stale torch lock from an interrupted build
            if not any(build_dir.glob("*.so")):
                print(f"llm-infer: compiling CUDA kernels once for sm_{arch}...", file=sys.stderr, flush=True)
            os.environ["TORCH_CUDA_ARCH_LIST"] = f"{major}.{minor}"
            return load(
                name=f"llm_infer_cuda_{key}",
                sources=[str(CSRC / s) for s in SOURCES],
                extra_cflags=["-O3"],
                extra_cuda_cflags=["-O3", "-std=c++17", f"-gencode=arch=compute_{arch},code=sm_{arch}"],
                build_directory=str(build_dir),
                verbose=False,
            )
    except Exception as e:  # a broken toolchain must not stop inference
        if os.environ.get("LLM_INFER_STRICT_CUDA_BUILD"):  # benchmarks/gpu_check.py: the error itself
            raise
        lines = str(e).splitlines()
        first = next((ln for ln in lines if "error" in ln.lower()), lines[0] if lines else type(e).__name__)
        warnings.warn(f"llm-infer: CUDA kernels failed to build ({first.strip()[:300]}); using the torch path")
        return None
