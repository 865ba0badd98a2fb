"""Tensor and pipeline parallelism on CPU: speed, communication share, pipeline bubble,
per-rank memory, and the controller's per-step overhead for each launcher.

Model: a random 0.5B-sized Qwen2 (hidden 896, 24 layers, 14 heads, 2 KV heads,
intermediate 4864, vocab 151936) in bf16, written once under benchmarks/.cache.
Layouts: TP=1 (one process, 2 threads), TP=2 and PP=2 (two processes, 1 thread
each), TP=2 under Ray. Each layout runs in its own subprocess; medians of --repeat.

    python benchmarks/parallel_cpu.py
    python benchmarks/parallel_cpu.py --overhead-only   # the control-overhead table alone (about a minute)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import CACHE, RESULTS, emit, spawn  # noqa: E402
LAYOUTS = {
    "TP=1 (2 threads)": {"tensor": 1, "pipeline": 1, "launcher": "local", "threads": 2},
    "TP=2 (1 thread each)": {"tensor": 2, "pipeline": 1, "launcher": "local", "threads": 1},
    "PP=2 (1 thread each)": {"tensor": 1, "pipeline": 2, "launcher": "local", "threads": 1},
    # The last stage also holds the 136M-parameter LM head (about 9 layers' worth of weights).
    "PP=2 layers 16+8": {"tensor": 1, "pipeline": 2, "launcher": "local", "threads": 1, "pipeline_layers": [16, 8]},
    "TP=2 Ray (1 thread each)": {"tensor": 2, "pipeline": 1, "launcher": "ray", "threads": 1},
}
OVERHEAD_LAUNCHERS = ["local,1,1", "local,2,1", "local,1,2", "ray,2,1"]  # launcher, tensor, pipeline


def ensure_model() -> Path:
    from tests.checkpoints import QWEN2_05B, make_checkpoint

    path = CACHE / "qwen2-0.5b-random-bf16"
    if not (path / "config.json").is_file():
        import torch

        print("writing the random 0.5B Qwen2 checkpoint once...", file=sys.stderr)
        make_checkpoint(path, "qwen2", dtype=torch.bfloat16, **QWEN2_05B)
    return path


class StepClock:
    """Wraps an executor to time each step from submit to collect, next to the worker's own time
    (it turns the workers' profiling on, which attaches that time to each step's output)."""

    def __init__(self, executor):
        executor.set_profiling(True)
        self.executor, self.samples = executor, []
        self._submit, self._collect, self._starts = executor.submit, executor.collect, []
        executor.submit, executor.collect = self.submit, self.collect

    def submit(self, plan):
        self._starts.append(time.perf_counter())
        self._submit(plan)

    def collect(self):
        out = self._collect()
        self.samples.append((time.perf_counter() - self._starts.pop(0), out.timing.worker_s, out.timing.comm_s))
        return out


def run_layout(name: str, model: Path, prompt_len: int, gen_len: int, batch: int, repeat: int) -> dict:
    from llm_infer import LLM, SamplingParams

    layout = dict(LAYOUTS[name])
    threads = layout.pop("threads")
    t0 = time.perf_counter()
    llm = LLM({"model": str(model), "dtype": "bfloat16", "threads": threads, "parallel": layout,
               "cache": {"num_blocks": 512}, "scheduler": {"max_model_len": 2048}}, progress=False)
    load_s = time.perf_counter() - t0
    executor = llm._executor
    memory = dict(enumerate(executor.collective_rpc("memory_mb")))  # after the KV cache is allocated
    clock = StepClock(executor)
    prompt = [(i * 7919) % 150000 + 10 for i in range(prompt_len)]
    greedy = SamplingParams(max_tokens=gen_len, temperature=0, ignore_eos=True)
    llm.generate([prompt[:16]], SamplingParams(max_tokens=4, temperature=0))
    prefill, decode1, decode_b, comm_share, overhead, bubble = [], [], [], [], [], []
    for _ in range(repeat):
        executor.worker_stats()
        t = time.perf_counter()
        out = llm.generate([prompt], SamplingParams(max_tokens=1, temperature=0))[0]
        prefill.append(prompt_len / (out.metrics.first_token_time - t))
        clock.samples.clear()
        executor.worker_stats()
        out = llm.generate([prompt[:32]], greedy)[0]
        decode1.append((gen_len - 1) / out.metrics.decode_time)
        stats = executor.worker_stats()
        comm_share.append(statistics.mean(s["comm_s"] / max(s["busy_s"] + 1e-9, 1e-9) for s in stats.values()))
        decode_steps = clock.samples[1:]
        overhead.append(statistics.median(wall - worker for wall, worker, _ in decode_steps))
        prompts = [[(i * 31 + j) % 150000 + 10 for j in range(32)] for i in range(batch)]
        executor.worker_stats()
        t = time.perf_counter()
        outs = llm.generate(prompts, greedy)
        wall = time.perf_counter() - t
        decode_b.append(sum(len(o.token_ids) for o in outs) / wall)
        stats = executor.worker_stats()
        stages = layout["pipeline"]
        if stages > 1:
            busy = [stats[r]["busy_s"] for r in sorted(stats)]
            bubble.append(1 - sum(busy) / (len(busy) * wall))
    llm.close()
    med = statistics.median
    return {
        "layout": name, "load_s": load_s, "prefill_tok_s": med(prefill), "decode_tok_s_batch1": med(decode1),
        f"throughput_tok_s_batch{batch}": med(decode_b), "comm_share_decode": med(comm_share),
        "control_overhead_ms": med(overhead) * 1e3, "pipeline_bubble_batch": med(bubble) if bubble else None,
        "memory_mb_per_rank": memory,
    }


def run_overhead(launcher: str, tp: int, pp: int, steps: int) -> dict:
    """Control overhead on a tiny model, where the forward is short and steps are many."""
    from llm_infer import LLM, SamplingParams
    from tests.checkpoints import make_checkpoint

    path = CACHE / "tiny-qwen2"
    if not (path / "config.json").is_file():
        make_checkpoint(path, "qwen2")
    llm = LLM({"model": str(path), "dtype": "float32", "threads": 1, "cache": {"block_size": 4, "num_blocks": 512},
               "parallel": {"tensor": tp, "pipeline": pp, "launcher": launcher}}, progress=False)
    clock = StepClock(llm._executor)
    llm.generate([[1, 2, 3]], SamplingParams(max_tokens=steps, temperature=0, ignore_eos=True))
    llm.close()
    samples = clock.samples[1:]
    return {"launcher": launcher, "tp": tp, "pp": pp, "steps": len(samples),
            "round_trip_ms": statistics.median(w for w, _, _ in samples) * 1e3,
            "worker_ms": statistics.median(k for _, k, _ in samples) * 1e3,
            "overhead_ms": statistics.median(w - k for w, k, _ in samples) * 1e3}


def _chart(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["layouts"]
    names = [r["layout"] for r in rows]
    metrics = [("decode_tok_s_batch1", "decode, batch 1 (tok/s)"),
               (f"throughput_tok_s_batch{report['batch']}", f"decode, batch {report['batch']} (tok/s)"),
               ("prefill_tok_s", f"prefill, {report['prompt_len']} tokens (tok/s)"),
               ("comm_share_decode", "share of decode time in communication")]
    fig, axes = plt.subplots(1, 4, figsize=(17, 3.6))
    for ax, (key, title) in zip(axes, metrics):
        bars = ax.barh(names, [r[key] for r in rows], color="#2a7")
        ax.bar_label(bars, fmt="%.2f" if key == "comm_share_decode" else "%.1f", padding=3)
        ax.set_title(title, fontsize=10)
        ax.invert_yaxis()
        if ax is not axes[0]:
            ax.set_yticklabels([])
    fig.suptitle("random 0.5B Qwen2, bf16, 2-core CPU (gloo)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prompt-len", type=int, default=256)
    p.add_argument("--gen-len", type=int, default=16)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--overhead-steps", type=int, default=200)
    p.add_argument("--overhead-only", action="store_true",
                   help="measure only the control overhead per step (tiny model, every launcher)")
    p.add_argument("--out", default=str(RESULTS / "parallel_cpu.json"))
    p.add_argument("--layout", help=argparse.SUPPRESS)
    p.add_argument("--overhead", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.layout:
        emit(run_layout(args.layout, ensure_model(), args.prompt_len, args.gen_len, args.batch, args.repeat))
        return
    if args.overhead:
        launcher, tp, pp = args.overhead.split(",")
        emit(run_overhead(launcher, int(tp), int(pp), args.overhead_steps))
        return
    overheads = [r for spec in tqdm(OVERHEAD_LAUNCHERS, desc="overhead")
                 if (r := spawn(__file__, ["--overhead", spec, "--overhead-steps", str(args.overhead_steps)]))]
    if args.overhead_only:
        _print_overheads(overheads)
        out = RESULTS / "control_overhead.json"
        revision = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                  cwd=Path(__file__).parent).stdout.strip()
        out.write_text(json.dumps({"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                                   "revision": revision, "cores": os.cpu_count(), "statistic": "median",
                                   "control_overhead_tiny_model": overheads}, indent=2))
        print(f"wrote {out}")
        return
    ensure_model()
    common = ["--prompt-len", str(args.prompt_len), "--gen-len", str(args.gen_len), "--batch", str(args.batch),
              "--repeat", str(args.repeat)]
    layouts = [r for name in tqdm(LAYOUTS, desc="layouts") if (r := spawn(__file__, ["--layout", name, *common]))]
    report = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "cores": os.cpu_count(),
              "prompt_len": args.prompt_len, "gen_len": args.gen_len, "batch": args.batch, "repeat": args.repeat,
              "statistic": "median", "layouts": layouts, "control_overhead_tiny_model": overheads}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    _chart(report, out.with_suffix(".png"))
    for r in layouts:
        print(f"{r['layout']:>26}: prefill {r['prefill_tok_s']:6.1f}  decode b1 {r['decode_tok_s_batch1']:5.2f}  "
              f"b{args.batch} {r[f'throughput_tok_s_batch{args.batch}']:6.2f} tok/s  comm {r['comm_share_decode']:.0%}"
              f"  ctl {r['control_overhead_ms']:.2f} ms  bubble {r['pipeline_bubble_batch']}  "
              f"memory {r['memory_mb_per_rank']}")
    _print_overheads(overheads)
    print(f"wrote {out}")


def _print_overheads(overheads: list[dict]) -> None:
    for r in overheads:
        print(f"overhead {r['launcher']} tp={r['tp']} pp={r['pp']}: {r['overhead_ms']:.3f} ms "
              f"(round trip {r['round_trip_ms']:.2f} ms, worker {r['worker_ms']:.2f} ms)")


if __name__ == "__main__":
    main()
