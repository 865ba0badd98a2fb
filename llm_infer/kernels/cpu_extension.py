"""Build (once, cached) and load the C++ CPU kernels.

Compiled for the host CPU (`-march=native`) with OpenMP, into
`$LLM_INFER_HOME/build/`, keyed by the sources, the CPU's flags and the torch
version. Without a C++ compiler (or on any build failure) a one-line warning is
printed and the torch reference path is used.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import os
import shutil
import sys
import warnings
from pathlib import Path
from types import ModuleType

import torch

from llm_infer.paths import llm_infer_home

CSRC = Path(__file__).parent / "csrc" / "cpu"
SOURCES = ["cpu_bindings.cpp", "gemv.cpp", "awq_gemv.cpp", "elementwise.cpp", "attention.cpp", "decode_stack.cpp",
           "int8_gemv.cpp", "moe.cpp"]


cache_home = llm_infer_home  # the kernel builds live under cache_home() / "build"


def _cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return line
    except OSError:
        pass
    return ""


def _build_key() -> str:
    h = hashlib.sha256()
    for name in SOURCES + ["cpu_kernels.h", "decode_stack.h"]:
        h.update((CSRC / name).read_bytes())
    h.update(str(CSRC).encode())  # torch's build files record source paths
    h.update(_cpu_flags().encode())
    h.update(torch.__version__.encode())
    h.update(sys.version.encode())
    return h.hexdigest()[:16]


# Why the last load_cpu_extension() returned None (shown by `llm-infer env`).
unavailable_reason: str | None = None


def build_path() -> Path:
    """Where the kernels of these sources for this CPU and torch are (or would be) built."""
    return cache_home() / "build" / f"cpu-{_build_key()}"


def ensure_ninja_on_path() -> None:
    """torch's extension builder runs `ninja` from PATH; the `ninja` wheel (a dependency) puts it in
    its own folder, which is not on PATH when the interpreter is run without activating its venv."""
    if shutil.which("ninja") is not None:
        return
    try:
        import ninja
    except ImportError:
        return
    os.environ["PATH"] = f"{ninja.BIN_DIR}{os.pathsep}{os.environ.get('PATH', '')}"


def _unavailable(reason: str) -> None:
    global unavailable_reason
    unavailable_reason = reason
    warnings.warn(f"llm-infer: {reason}; the CPU kernels fall back to the torch reference (slower decode)")


@functools.cache
def load_cpu_extension() -> ModuleType | None:
    """The compiled module, or None (after a warning, reason in `unavailable_reason`) when it cannot be built."""
    global unavailable_reason
    if os.environ.get("LLM_INFER_NO_CPU_EXT"):
        unavailable_reason = "disabled by LLM_INFER_NO_CPU_EXT"
        return None
    if shutil.which(os.environ.get("CXX", "c++")) is None:
        _unavailable("no C++ compiler found")
        return None
    ensure_ninja_on_path()
    build_dir = build_path()
    key = build_dir.name.removeprefix("cpu-")
    build_dir.mkdir(parents=True, exist_ok=True)
    try:
        from torch.utils.cpp_extension import load

        # Our own lock, released by the OS if its holder dies: torch's lock file is not, and one
        # left by an interrupted build would make every later run wait forever.
        with open(build_dir / ".build.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            (build_dir / "lock").unlink(missing_ok=True)
            if not any(build_dir.glob("*.so")):
                print("llm-infer: compiling CPU kernels once (40-80 s on 2 cores)...", file=sys.stderr, flush=True)
            return load(
                name=f"llm_infer_cpu_{key}",
                sources=[str(CSRC / s) for s in SOURCES],
                extra_cflags=["-O3", "-march=native", "-fopenmp", "-fno-math-errno"],
                extra_ldflags=["-fopenmp"],
                build_directory=str(build_dir),
                verbose=False,
            )
    except Exception as e:  # a broken toolchain must not stop inference
        text = str(e) + "\n" + str(getattr(e, "__cause__", "") or "")
        lines = text.splitlines()
        first = next((ln for ln in lines if "error:" in ln), None) or next(
            (ln for ln in lines if "error" in ln.lower()), lines[0] if lines else type(e).__name__)
        _unavailable(f"CPU kernels failed to build ({first.strip()[:300]})")
        return None
