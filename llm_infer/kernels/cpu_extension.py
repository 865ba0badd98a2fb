"""Build (once, cached) and load the C++ CPU kernels, for the instruction sets of this CPU.

Variants (`VARIANTS`): `native` is compiled for the host CPU (`-march=native`: its AVX-512
paths where it has AVX-512, else its AVX2 ones); `avx2` for any x86-64 CPU with AVX2, FMA and
F16C (`-march=x86-64-v3`), so an AVX-512 machine can build and test the AVX2 paths too. The
variant used is `$LLM_INFER_CPU_ISA` (`native` or `avx2`), else `native`. Each builds with
OpenMP into `$LLM_INFER_HOME/build/`, keyed by the sources, the variant, the CPU's flags and the
torch version. A CPU without AVX2 and FMA gets no build: its scalar loops would be slower than
torch's own kernels, so the torch path runs, after a one-line warning. Without a C++ compiler
(or on any build failure) the same. `ext.isa_paths()` names the path each kernel file was
compiled with.
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

# Variant -> the compiler's target flags (see the module docstring).
VARIANTS = {"native": ["-march=native"], "avx2": ["-march=x86-64-v3"]}
# CPU flags (/proc/cpuinfo) a variant needs beyond what the compiler targets on its own.
_NEEDS = {"native": {"avx2", "fma"}, "avx2": {"avx2", "fma", "f16c", "bmi2"}}


def _cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return line
    except OSError:
        pass
    return ""


def cpu_features() -> set[str]:
    """The host CPU's feature flags (empty where /proc/cpuinfo is not readable)."""
    flags = _cpu_flags()
    return set(flags.split(":", 1)[1].split()) if ":" in flags else set()


def host_variants() -> list[str]:
    """The variants this CPU runs, best first: `native`, and `avx2` where it is not the same thing
    (a CPU with AVX-512 runs the AVX2 build as well, and the tests check both)."""
    features = cpu_features()
    found = [v for v in VARIANTS if _NEEDS[v] <= features]
    if "avx2" in found and "avx512f" not in features:
        found.remove("avx2")  # native is the AVX2 build here
    return found


def selected_variant() -> str:
    """`$LLM_INFER_CPU_ISA`, else `native`. Raises ValueError for an unknown name."""
    name = os.environ.get("LLM_INFER_CPU_ISA", "native")
    if name not in VARIANTS:
        raise ValueError(f"LLM_INFER_CPU_ISA={name!r}: expected one of {', '.join(VARIANTS)}")
    return name


def _build_key(variant: str) -> str:
    h = hashlib.sha256()
    for name in SOURCES + sorted(p.name for p in CSRC.glob("*.h")):  # every header: a change rebuilds
        h.update((CSRC / name).read_bytes())
    h.update(str(CSRC).encode())  # torch's build files record source paths
    h.update(" ".join(VARIANTS[variant]).encode())
    h.update(_cpu_flags().encode())
    h.update(torch.__version__.encode())
    h.update(sys.version.encode())
    return h.hexdigest()[:16]


# Why the last load_cpu_extension() returned None (shown by `llm-infer env`).
unavailable_reason: str | None = None


def build_path(variant: str | None = None) -> Path:
    """Where the kernels of these sources for this CPU, variant and torch are (or would be) built."""
    variant = variant or selected_variant()
    return cache_home() / "build" / f"cpu-{variant}-{_build_key(variant)}"


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


def missing_features(variant: str) -> set[str]:
    """The CPU features `variant`'s code needs that this CPU lacks (empty: it can run it)."""
    return _NEEDS[variant] - cpu_features()


def build_locked(name: str, sources: list[Path], variant: str, build_dir: Path, notice: str | None = None) -> ModuleType:
    """Compile (once) and import the extension `name` from `sources` with `variant`'s flags in
    `build_dir`, under a lock that concurrent processes share; `notice` is printed to stderr
    before a build that has no library yet. Raises whatever the build raises."""
    from torch.utils.cpp_extension import load

    ensure_ninja_on_path()
    build_dir.mkdir(parents=True, exist_ok=True)
    # Our own lock, released by the OS if its holder dies: torch's lock file is not, and one
    # left by an interrupted build would make every later run wait forever.
    with open(build_dir / ".build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        (build_dir / "lock").unlink(missing_ok=True)
        if notice and not any(build_dir.glob("*.so")):
            print(notice, file=sys.stderr, flush=True)
        return load(name=name, sources=[str(s) for s in sources],
                    extra_cflags=["-O3", *VARIANTS[variant], "-fopenmp", "-fno-math-errno"],
                    extra_ldflags=["-fopenmp"], build_directory=str(build_dir), verbose=False)


def load_cpu_extension(variant: str | None = None) -> ModuleType | None:
    """The compiled module of `variant` (None: `selected_variant()`), or None (after a warning,
    reason in `unavailable_reason`) when it cannot be built or this CPU cannot run it."""
    return _load(variant or selected_variant())


@functools.cache
def _load(variant: str) -> ModuleType | None:
    global unavailable_reason
    if os.environ.get("LLM_INFER_NO_CPU_EXT"):
        unavailable_reason = "disabled by LLM_INFER_NO_CPU_EXT"
        return None
    missing = missing_features(variant)
    if missing:
        _unavailable(f"this CPU lacks {', '.join(sorted(missing))} (the C++ kernels need AVX2 and FMA: without them "
                     "they would be slower than torch's)")
        return None
    if shutil.which(os.environ.get("CXX", "c++")) is None:
        _unavailable("no C++ compiler found")
        return None
    build_dir = build_path(variant)
    key = build_dir.name.removeprefix("cpu-").replace("-", "_")
    try:
        return build_locked(f"llm_infer_cpu_{key}", [CSRC / s for s in SOURCES], variant, build_dir,
                            "llm-infer: compiling CPU kernels once (40-80 s on 2 cores)...")
    except Exception as e:  # a broken toolchain must not stop inference
        text = str(e) + "\n" + str(getattr(e, "__cause__", "") or "")
        lines = text.splitlines()
        first = next((ln for ln in lines if "error:" in ln), None) or next(
            (ln for ln in lines if "error" in ln.lower()), lines[0] if lines else type(e).__name__)
        _unavailable(f"CPU kernels failed to build ({first.strip()[:300]})")
        return None
