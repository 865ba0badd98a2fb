"""Decode on a GPU end to end: the summary's tokens/s, a profile of the decode step, prefill
time to first token, and transformers' compiled baseline. The model is the random 1.5B-shaped
Qwen2 of `benchmarks/gpu_kernels.py` (`QWEN2_15B`) in bf16 and its round-to-nearest AWQ copy.

    PYTHONPATH=. python benchmarks/gpu_profile.py ours --out FILE [--budget-s 150] [--dry-run]
    PYTHONPATH=. python benchmarks/gpu_profile.py transformers --out FILE [--go-file F] [--dry-run]

`ours`, one engine per entry of CONFIGS (bf16 | AWQ, batch 1 | 32, CUDA graphs on | off, and one
for prefill), in that order while the budget lasts:
- graphs on: decode tokens/s, 64-token prompts, 128 new tokens, median of 3 runs (the summary);
- a decode window: the prompts are prefilled, then PROFILE_STEPS decode steps are run through
  `engine.step()`, once plainly (wall time per step) and once under torch.profiler with CPU and
  CUDA activity (kernels inside CUDA-graph replays are recorded one by one). Per decode step:
  wall time, GPU-busy time (the union of kernel, memcpy and memset intervals), GPU activities
  (kernels, memcpys, memsets), the top kernels (calls and us per step), the CUDA API calls the
  host makes, and the host gap: 100 x (1 - busy / unprofiled wall), the share of the step the GPU
  waits for the host;
- `bf16_prefill`: time to first token for 1 x 2048 and 8 x 512 prompt tokens (the wall time of a
  one-token generate on prompts no cache has seen, and the engine's own arrival-to-token time).

`transformers`: the same bf16 checkpoint in transformers: time to first token (`generate` of one
token, eager) on the same prompts, and decode with `generate(cache_implementation="static")`,
which compiles the forward itself (torch.compile, CUDA graphs). Its warm-up, an identical
generate, compiles and is not counted; decode tokens/s come from a logits processor that stamps
each step after a device synchronisation. With `--go-file` the timed runs wait until that file
exists, so that the compile (CPU work, minutes) can overlap GPU work that times nothing: gpu_check
starts it while the GPU tests run and lets it go once its own timings are done.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import traceback
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.gpu_kernels import awq_checkpoint, dense_checkpoint  # noqa: E402

PROMPT_TOKENS, NEW_TOKENS, SPEED_RUNS, PROFILE_STEPS = 64, 128, 3, 40
PREFILL = [(1, 2048), (8, 512)]  # prompts x tokens
# (name, model, batch, CUDA graphs), in priority order: the summary's figures (graphs on), prefill
# time to first token (its own engine, room for 2048-token prompts), the previous decode path as the
# baseline of this run (`_old`: OLD_PATH, as main was at the first GPU run), then the profile without graphs
CONFIGS = [("bf16_b1_graphs", "bf16", 1, True), ("bf16_b32_graphs", "bf16", 32, True),
           ("awq_b1_graphs", "awq", 1, True), ("awq_b32_graphs", "awq", 32, True),
           ("bf16_prefill", "bf16", 8, True),
           ("bf16_b1_graphs_old", "bf16", 1, True), ("bf16_b32_graphs_old", "bf16", 32, True),
           ("bf16_b1_eager", "bf16", 1, False), ("bf16_b32_eager", "bf16", 32, False),
           ("awq_b1_eager", "awq", 1, False), ("awq_b32_eager", "awq", 32, False)]
# The previous decode path: the CUDA extension's kernels and cuBLAS instead of the Triton kernels, and
# synchronous scheduling (each step planned after the last one's tokens reached the host).
OLD_PATH = {"env": {"LLM_INFER_NO_TRITON": "1"}, "scheduler": {"async_scheduling": "off"}}
CONFIG_S = 25  # an engine's start, warm-up and measurements take about this (AWQ batch 32 the most)
TOP_KERNELS = 15


def prompt_batch(batch: int, length: int = PROMPT_TOKENS, salt: int = 0) -> list[list[int]]:
    """`batch` distinct token-id prompts (a new `salt` gives prompts no cache has seen)."""
    return [[10 + (salt * 7919 + i * 131 + j * 17) % 100_000 for j in range(length)] for i in range(batch)]


def engine_config(model: Path, batch: int, graphs: bool, long_prompts: bool = False) -> dict:
    scheduler = {"max_num_seqs": batch, "max_model_len": 2048}
    if long_prompts:  # room for a 2048-token prompt and 8 x 512 tokens in one step
        scheduler.update(max_model_len=2304, max_num_batched_tokens=4096)
    return {"model": str(model), "dtype": "bfloat16", "device": "cuda", "kernels": "cuda", "cuda_graphs": graphs,
            "scheduler": scheduler, "cache": {"memory_fraction": 0.5}}


# -- ours ---------------------------------------------------------------------------------------


def decode_tok_s(llm, batch: int) -> dict:
    """Decode tokens/s: 64-token prompts, 128 new tokens, median of SPEED_RUNS runs."""
    from llm_infer import SamplingParams

    params = SamplingParams(max_tokens=NEW_TOKENS, temperature=0, ignore_eos=True)
    runs = []
    for _ in range(SPEED_RUNS):
        outs = llm.generate(prompt_batch(batch), params)
        runs.append(sum(len(o.token_ids) - 1 for o in outs) / max(o.metrics.decode_time for o in outs))
    return {"decode_tok_s": round(statistics.median(runs), 1), "runs": [round(r, 1) for r in runs]}


def decode_window(llm, batch: int, steps: int, profiler=None) -> tuple[float, int]:
    """Prefill `batch` prompts, then run their decode steps (until they finish after `steps`
    tokens) through `engine.step()`, inside `profiler` if given. (seconds, decode steps run)."""
    from llm_infer import SamplingParams

    engine = llm.engine
    params = SamplingParams(max_tokens=steps + 1, temperature=0, ignore_eos=True)
    ids = [engine.add_request(p, params) for p in prompt_batch(batch)]
    try:
        tokens: dict[str, int] = {}
        while len(tokens) < len(ids):  # prefill: every request has its first token
            tokens.update((o.request_id, len(o.token_ids)) for o in engine.step())
        torch.cuda.synchronize()
        with profiler or nullcontext():
            start = time.perf_counter()
            while engine.has_unfinished():
                engine.step()
            torch.cuda.synchronize()
            seconds = time.perf_counter() - start
    finally:
        for i in ids:
            engine.abort(i)
    return seconds, steps + 1 - min(tokens.values())


def merged_busy_us(intervals: list[tuple[float, float]]) -> float:
    """Length of the union of [start, end) intervals."""
    busy, end = 0.0, float("-inf")
    for s, e in sorted(intervals):
        if e > end:
            busy += e - max(s, end)
            end = e
    return busy


def summarize_trace(trace: dict, steps: int) -> dict:
    """Per decode step, from a Chrome trace of the profiled window: GPU activities, busy time,
    top kernels, CUDA API calls."""
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    gpu = [e for e in events if e.get("ph") == "X" and e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset")]
    api = [e for e in events if e.get("ph") == "X" and e.get("cat") in ("cuda_runtime", "cuda_driver")]
    by_name: dict[str, list[float]] = {}
    for e in gpu:
        by_name.setdefault(e["name"], []).append(float(e.get("dur", 0)))
    top = sorted(by_name.items(), key=lambda kv: -sum(kv[1]))[:TOP_KERNELS]
    calls: dict[str, list[float]] = {}
    for e in api:
        calls.setdefault(e["name"], []).append(float(e.get("dur", 0)))
    count = {cat: sum(e["cat"] == cat for e in gpu) for cat in ("kernel", "gpu_memcpy", "gpu_memset")}
    return {
        "gpu_ops_per_step": round(len(gpu) / steps, 1),
        "kernels_per_step": round(count["kernel"] / steps, 1),
        "memcpy_per_step": round(count["gpu_memcpy"] / steps, 1),
        "memset_per_step": round(count["gpu_memset"] / steps, 1),
        "kernel_us_per_step": round(sum(float(e.get("dur", 0)) for e in gpu) / steps, 1),
        "gpu_busy_us_per_step": round(merged_busy_us([(float(e["ts"]), float(e["ts"]) + float(e.get("dur", 0)))
                                                      for e in gpu]) / steps, 1),
        "top_kernels": [{"name": name[:110], "calls_per_step": round(len(d) / steps, 2),
                         "us_per_step": round(sum(d) / steps, 1)} for name, d in top],
        "cuda_api_per_step": [{"name": name, "calls_per_step": round(len(d) / steps, 2),
                               "us_per_step": round(sum(d) / steps, 1)}
                              for name, d in sorted(calls.items(), key=lambda kv: -sum(kv[1]))[:8]],
    }


def profile_decode(llm, batch: int) -> dict:
    """The decode window plainly, then under torch.profiler; per-step figures (see the module doc)."""
    from torch.profiler import ProfilerActivity, profile

    wall_s, steps = decode_window(llm, batch, PROFILE_STEPS)
    prof = profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA])
    profiled_s, profiled_steps = decode_window(llm, batch, PROFILE_STEPS, prof)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "trace.json"
        prof.export_chrome_trace(str(path))
        trace = json.loads(path.read_text())
    result = {"decode_steps": profiled_steps, "step_ms": round(1e3 * wall_s / steps, 3),
              "step_ms_profiled": round(1e3 * profiled_s / profiled_steps, 3),
              "tok_s_window": round(batch * steps / wall_s, 1), **summarize_trace(trace, profiled_steps)}
    busy_ms = result["gpu_busy_us_per_step"] / 1e3
    result["host_gap_pct"] = round(100 * max(0.0, 1 - busy_ms / result["step_ms"]), 1)
    result["host_gap_pct_profiled"] = round(100 * max(0.0, 1 - busy_ms / result["step_ms_profiled"]), 1)
    return result


def prefill_ttft(llm) -> list[dict]:
    """Time to first token for PREFILL's prompt shapes: one-token generates on prompts no cache
    has seen, median of 3 after a warm-up; wall time of the call and the engine's own TTFT."""
    from llm_infer import SamplingParams

    rows = []
    for batch, length in PREFILL:
        walls, ttfts = [], []
        for salt in range(1, 5):
            prompts = prompt_batch(batch, length, salt=salt * 1000 + length)
            start = time.perf_counter()
            outs = llm.generate(prompts, SamplingParams(max_tokens=1, temperature=0, ignore_eos=True))
            if salt > 1:  # the first is the warm-up
                walls.append(time.perf_counter() - start)
                ttfts.append(max(o.metrics.ttft for o in outs))
        rows.append({"prompts": batch, "tokens": length, "ttft_ms": round(1e3 * statistics.median(walls), 2),
                     "engine_ttft_ms": round(1e3 * statistics.median(ttfts), 2)})
    return rows


def measure_config(model: Path, batch: int, graphs: bool, prefill: bool = False, old: bool = False) -> dict:
    """One engine: with `prefill`, time to first token only; else decode tokens/s (graphs on) and
    the decode profile; `old`: the previous decode path (OLD_PATH)."""
    import os

    from llm_infer import LLM, SamplingParams

    start = time.monotonic()
    cfg = engine_config(model, batch, graphs, long_prompts=prefill)
    if old:
        cfg["scheduler"].update(OLD_PATH["scheduler"])
    saved = {k: os.environ.get(k) for k in OLD_PATH["env"]}
    os.environ.update(OLD_PATH["env"] if old else {})
    try:
        llm = LLM(cfg, progress=False)  # kernels are chosen while the engine starts
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    with llm:
        result: dict[str, Any] = {"worker": llm.worker_info(), "start_s": round(time.monotonic() - start, 1)}
        if prefill:
            result["prefill"] = prefill_ttft(llm)
        else:
            llm.generate(prompt_batch(batch, salt=99), SamplingParams(max_tokens=8, temperature=0, ignore_eos=True))
            if graphs:
                result.update(decode_tok_s(llm, batch))
            result.update(profile_decode(llm, batch))
    torch.cuda.empty_cache()
    return result


def run_ours(out: Path, budget_s: float) -> None:
    start = time.monotonic()
    report: dict[str, Any] = {"prompt_tokens": PROMPT_TOKENS, "new_tokens": NEW_TOKENS,
                              "profile_steps": PROFILE_STEPS, "configs": {}, "skipped": []}

    def save() -> None:
        out.write_text(json.dumps(report, indent=2))

    t0 = time.monotonic()
    models = {"bf16": dense_checkpoint()}
    models["awq"] = awq_checkpoint(models["bf16"])
    report["checkpoints_s"] = round(time.monotonic() - t0, 1)
    save()
    for name, kind, batch, graphs in CONFIGS:
        left = budget_s - (time.monotonic() - start)
        if left < CONFIG_S:
            report["skipped"].append({"config": name, "reason": f"{left:.0f} s left, a config needs ~{CONFIG_S} s"})
            save()
            continue
        print(f"[decode] {name} ({left:.0f} s left)", flush=True)
        t0 = time.monotonic()
        try:
            result = measure_config(models[kind], batch, graphs, prefill=name.endswith("_prefill"),
                                    old=name.endswith("_old"))
        except Exception as e:  # recorded; the next configuration still runs
            result = {"error": f"{type(e).__name__}: {e}"[:2000], "traceback": traceback.format_exc()[-3000:]}
            torch.cuda.empty_cache()
        result["seconds"] = round(time.monotonic() - t0, 1)
        report["configs"][name] = result
        save()


# -- transformers -------------------------------------------------------------------------------


def step_clock():
    """A logits processor that records the time of each generation step (after a device sync)."""
    from transformers import LogitsProcessor

    class StepClock(LogitsProcessor):
        def __init__(self):
            self.times: list[float] = []

        def __call__(self, input_ids, scores):
            torch.cuda.synchronize()
            self.times.append(time.perf_counter())
            return scores

    return StepClock()


def hf_static_kwargs(batch: int) -> tuple[torch.Tensor, dict]:
    ids = torch.tensor(prompt_batch(batch), device="cuda")
    return ids, dict(max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=0,
                     cache_implementation="static")


def hf_decode_timed(hf, batch: int, runs: int = 3) -> dict:
    """Decode tokens/s of `runs` static-cache generates (after the warm-up), from the step stamps
    (the prefill excluded); the median."""
    from transformers import LogitsProcessorList

    ids, kwargs = hf_static_kwargs(batch)
    speeds = []
    for _ in range(runs):
        clock = step_clock()
        hf.generate(ids, logits_processor=LogitsProcessorList([clock]), **kwargs)
        speeds.append(batch * (len(clock.times) - 1) / (clock.times[-1] - clock.times[0]))
    return {"decode_tok_s": round(statistics.median(speeds), 1), "runs": [round(r, 1) for r in speeds]}


def hf_ttft(hf) -> list[dict]:
    """Eager `generate` of one token on PREFILL's prompt shapes, median of 3 after a warm-up."""
    rows = []
    for batch, length in PREFILL:
        ids = torch.tensor(prompt_batch(batch, length), device="cuda")
        times = []
        for i in range(4):
            torch.cuda.synchronize()
            start = time.perf_counter()
            hf.generate(ids, max_new_tokens=1, do_sample=False, pad_token_id=0)
            torch.cuda.synchronize()
            if i:
                times.append(time.perf_counter() - start)
        rows.append({"prompts": batch, "tokens": length, "ttft_ms": round(1e3 * statistics.median(times), 2)})
    return rows


def run_transformers(out: Path, go_file: Path | None, wait_s: float) -> None:
    """One model instance per batch size, so that each keeps its own static cache and compiled
    graphs (a cache re-made for another batch would change the static addresses the compiled
    forward was captured with): compile both, wait for `go_file`, then time both and the TTFT."""
    import transformers

    report: dict[str, Any] = {"transformers": transformers.__version__, "phase": "loading"}

    def save() -> None:
        out.write_text(json.dumps(report, indent=2))

    def failed(e: Exception) -> dict:
        return {"error": f"{type(e).__name__}: {e}"[:2000], "traceback": traceback.format_exc()[-3000:]}

    save()
    models = {}
    for batch in (1, 32):
        report["phase"] = f"compiling batch {batch}"
        save()
        t0 = time.monotonic()
        try:
            models[batch] = transformers.AutoModelForCausalLM.from_pretrained(dense_checkpoint(),
                                                                              dtype=torch.bfloat16).cuda().eval()
            ids, kwargs = hf_static_kwargs(batch)
            with torch.no_grad():
                models[batch].generate(ids, **kwargs)  # the warm-up: compiles, captures; not counted
            torch.cuda.synchronize()
            report[f"static_b{batch}"] = {"warm_s": round(time.monotonic() - t0, 1)}
        except Exception as e:
            report[f"static_b{batch}"] = failed(e)
            models.pop(batch, None)
        save()
    if go_file is not None:
        report["phase"] = "waiting"
        save()
        deadline = time.monotonic() + wait_s
        while not go_file.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
    report["phase"] = "timing"
    save()
    for batch, hf in models.items():
        try:
            with torch.no_grad():
                report[f"static_b{batch}"].update(hf_decode_timed(hf, batch))
        except Exception as e:
            report[f"static_b{batch}"].update(failed(e))
        save()
    try:
        with torch.no_grad():
            report["prefill_eager"] = hf_ttft(models[1] if 1 in models else transformers.AutoModelForCausalLM
                                              .from_pretrained(dense_checkpoint(), dtype=torch.bfloat16).cuda().eval())
    except Exception as e:
        report["prefill_eager"] = failed(e)
    report["phase"] = "done"
    save()


# -- plan ---------------------------------------------------------------------------------------


def dry_run(what: str, out: Path) -> None:
    """The plan without CUDA; every engine configuration validated."""
    from llm_infer.config import load_config

    plan: dict[str, Any] = {"dry_run": True, "what": what}
    if what == "ours":
        for _, _, batch, graphs in CONFIGS:
            for long_prompts in (False, True):
                load_config(engine_config(Path("x"), batch, graphs, long_prompts))
        plan.update(configs_planned=[c[0] for c in CONFIGS], prompt_tokens=PROMPT_TOKENS, new_tokens=NEW_TOKENS,
                    speed_runs=SPEED_RUNS, profile_steps=PROFILE_STEPS, prefill=PREFILL)
    else:
        import transformers  # noqa: F401  (on the GPU machine)

        plan.update(static_batches=[1, 32], new_tokens=NEW_TOKENS, prefill=PREFILL)
    out.write_text(json.dumps(plan, indent=2))
    print(json.dumps(plan))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["ours", "transformers"])
    p.add_argument("--out", required=True, help="JSON file (rewritten as results come in)")
    p.add_argument("--budget-s", type=float, default=150, help="ours: start no configuration after this")
    p.add_argument("--go-file", type=Path, default=None, help="transformers: time only once this file exists")
    p.add_argument("--wait-s", type=float, default=600, help="transformers: wait at most this long for --go-file")
    p.add_argument("--dry-run", action="store_true", help="the plan, configs validated; no CUDA")
    args = p.parse_args()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.dry_run:
        dry_run(args.what, out)
    elif args.what == "ours":
        run_ours(out, args.budget_s)
    else:
        run_transformers(out, args.go_file, args.wait_s)


if __name__ == "__main__":
    main()
