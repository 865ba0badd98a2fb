"""A non-editable install carries its kernels: build the wheel, install it into a fresh venv
with no checkout on the path, and run `llm-infer env` and `llm-infer generate` from another
directory; the compiled CPU kernels must be the ones in use."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
import yaml

from tests.conftest import tiny_engine_config

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow  # a wheel build, a fresh venv, a C++ build


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=900, **kw)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    # From a clean copy: a `build/` folder left in the checkout would hide what the packaging omits.
    source = tmp_path_factory.mktemp("src") / "llm-infer"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".git", ".venv", "build", "*.egg-info", "results",
                                                                 "__pycache__", ".cache", "dist"))
    # No build isolation: the build uses this environment's setuptools, so the test needs no index.
    built = run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(out),
                 str(source)])
    assert built.returncode == 0, built.stderr[-3000:]
    (path,) = out.glob("llm_infer-*.whl")
    return path


def test_wheel_carries_every_kernel_source(wheel: Path):
    names = set(zipfile.ZipFile(wheel).namelist())
    csrc = ROOT / "llm_infer" / "kernels" / "csrc"
    sources = {p.relative_to(ROOT).as_posix() for p in csrc.rglob("*") if p.is_file()}
    assert sources and sources <= names, sorted(sources - names)


def test_installed_wheel_uses_compiled_kernels_from_another_directory(wheel: Path, tmp_path: Path, tiny_models):
    venv = tmp_path / "venv"
    assert run([sys.executable, "-m", "venv", str(venv)]).returncode == 0
    python = str(venv / "bin" / "python")
    site = Path(run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip())
    installed = run([python, "-m", "pip", "install", "--no-deps", "--no-index", str(wheel)])
    assert installed.returncode == 0, installed.stderr[-3000:]
    # The dependencies (torch, ...) come from this environment, appended after the venv's own
    # site-packages; `.pth` files there (this checkout's editable install) are not processed.
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    config = elsewhere / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny_engine_config(tiny_models["qwen2"])))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "LLM_INFER_NO_CPU_EXT")}
    env.update(LLM_INFER_HOME=str(tmp_path / "home"), PATH=f"{venv / 'bin'}{os.pathsep}{env['PATH']}")
    cli = str(venv / "bin" / "llm-infer")

    report = run([cli, "env", "--json"], cwd=elsewhere, env=env)
    assert report.returncode == 0, report.stderr[-3000:]
    info = json.loads(report.stdout)
    assert Path(info["llm-infer"]["location"]).is_relative_to(venv), info["llm-infer"]
    cpu = info["kernels"]["cpu (bf16, fp32)"]
    assert cpu["set"] == "compiled C++", cpu
    assert Path(cpu["build"]).is_relative_to(tmp_path / "home" / "build")

    gen = run([cli, "generate", "--config", str(config), "--raw", "--prompt", "Hello", "--max-tokens", "4",
               "--ignore-eos"], cwd=elsewhere, env=env)
    assert gen.returncode == 0, gen.stderr[-3000:]
    assert "torch reference" not in gen.stderr and "failed to build" not in gen.stderr, gen.stderr
    assert gen.stdout.strip()
