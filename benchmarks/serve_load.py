"""`llm-infer serve` under load: Poisson arrivals of streaming requests against the HTTP server.

Each configuration runs in its own process: the server (uvicorn in a thread, the engine in
another) on 127.0.0.1 and the clients (asyncio + httpx, streaming) in the same process, so
the client's own CPU use is part of what is measured on this 2-core machine. Every
configuration gets the same arrival times and prompts (seeded), greedy decoding and
`ignore_eos`, so each request generates exactly --max-tokens tokens.

- continuous batching (scheduler.max_num_seqs=16) vs one request at a time (max_num_seqs=1),
  distinct prompts, prefix caching off;
- a shared ~300-token system prompt + short distinct user messages, with prefix caching on vs off.

Requests still open --drain seconds after the last arrival are cancelled (the server aborts
them) and counted as unfinished. Reports p50/p99 TTFT (scheduled arrival to first text) and
TPOT ((last - first token time) / (tokens - 1)), output tokens/s and completed requests/s.

    python benchmarks/serve_load.py [--rate 4] [--duration 40] [--max-tokens 32] [--threads 2]
    python benchmarks/serve_load.py --quick     # ~1 minute smoke run (results under results/tmp/)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tqdm import tqdm  # noqa: E402

from benchmarks.common import RESULTS, ROOT, emit, peak_rss_mb, spawn  # noqa: E402

CONFIGS = {  # name: (label, workload, config overrides)
    "batching": ("continuous batching (16 seqs)", "distinct",
                 ["scheduler.max_num_seqs=16", "cache.prefix_caching=false"]),
    "one_at_a_time": ("one request at a time", "distinct",
                      ["scheduler.max_num_seqs=1", "cache.prefix_caching=false"]),
    "prefix_on": ("shared system prompt, prefix caching on", "shared",
                  ["scheduler.max_num_seqs=16", "cache.prefix_caching=true"]),
    "prefix_off": ("shared system prompt, prefix caching off", "shared",
                   ["scheduler.max_num_seqs=16", "cache.prefix_caching=false"]),
}
TEXT = (ROOT / "benchmarks" / "data" / "heldout.txt").read_text().split()


def arrivals(rate: float, duration: float, seed: int) -> list[float]:
    """Poisson process: exponential gaps with mean 1/rate, within [0, duration)."""
    rng, t, times = random.Random(seed), 0.0, []
    while True:
        t += rng.expovariate(rate)
        if t >= duration:
            return times
        times.append(t)


def request_bodies(workload: str, n: int, max_tokens: int, seed: int) -> list[tuple[str, dict]]:
    """(path, body) per request: distinct ~60-word completions, or chats sharing a ~300-token system prompt."""
    rng = random.Random(seed)
    common = {"max_tokens": max_tokens, "temperature": 0, "ignore_eos": True, "stream": True,
              "stream_options": {"include_usage": True}}
    if workload == "distinct":
        out = []
        for i in range(n):
            start = rng.randrange(len(TEXT) - 60)
            out.append(("/v1/completions", {**common, "prompt": f"Passage {i}: " + " ".join(TEXT[start:start + 60])}))
        return out
    system = "You answer questions about this story.\n\n" + " ".join(TEXT[:240])
    return [("/v1/chat/completions", {**common, "messages": [
        {"role": "system", "content": system},
        {"role": "user", "content": f"Question {i}: what does the story say about '{rng.choice(TEXT[:240])}'?"}]})
        for i in range(n)]


async def one_request(client, path: str, body: dict, start: float, at: float) -> dict:
    """Send at `at` seconds after `start`; time the stream's first and last text."""
    import httpx

    sent = start + at  # the scheduled arrival: a late client loop counts against TTFT too
    await asyncio.sleep(max(0.0, sent - time.perf_counter()))
    first, last, usage, error = None, None, None, None
    try:
        async with client.stream("POST", path, json=body) as r:
            if r.status_code != 200:
                return {"at": at, "error": f"HTTP {r.status_code}: {(await r.aread())[:200]!r}"}
            async for line in r.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if chunk.get("usage"):
                    usage = chunk["usage"]
                for choice in chunk.get("choices", []):
                    if choice.get("text") or (choice.get("delta") or {}).get("content"):
                        last = time.perf_counter()
                        first = first or last
    except asyncio.CancelledError:
        return {"at": at, "unfinished": True, "tokens_seen": first is not None}
    except httpx.HTTPError as e:
        error = repr(e)
    if usage is None or first is None:
        return {"at": at, "error": error or "the stream ended without text or usage"}
    tokens = usage["completion_tokens"]
    return {"at": at, "ttft_s": first - sent, "tpot_s": (last - first) / (tokens - 1) if tokens > 1 else None,
            "prompt_tokens": usage["prompt_tokens"], "completion_tokens": tokens, "done_s": last - start}


async def drive(url: str, bodies: list[tuple[str, dict]], times: list[float], duration: float,
                drain: float) -> tuple[list[dict], float]:
    import httpx

    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    async with httpx.AsyncClient(base_url=url, timeout=None, limits=limits) as client:
        start = time.perf_counter()
        tasks = [asyncio.create_task(one_request(client, p, b, start, t)) for (p, b), t in zip(bodies, times)]
        _, pending = await asyncio.wait(tasks, timeout=duration + drain)
        for task in pending:
            task.cancel()
        results = await asyncio.gather(*tasks)
        return list(results), time.perf_counter() - start


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, round(q / 100 * (len(values) - 1)))]


def worker(args: argparse.Namespace) -> None:
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    from llm_infer.entrypoints.llm import LLM
    from llm_infer.entrypoints.server import AsyncEngine, build_app
    from llm_infer.entrypoints.server.serve import ServerThread, served_model_name

    label, workload, overrides = CONFIGS[args.worker]
    llm = LLM(args.config, overrides=[*overrides, f"threads={args.threads}"], progress=False)
    engine = AsyncEngine(llm)
    server = ServerThread(build_app(engine, served_model_name(llm)))
    try:
        times = arrivals(args.rate, args.duration, args.seed)
        bodies = request_bodies(workload, len(times) + 2, args.max_tokens, args.seed)
        warm = [(p, {**b, "max_tokens": 4}) for p, b in bodies[-2:]]  # not the measured prompts
        asyncio.run(drive(server.url, warm, [0.0, 0.0], 0, 120))
        records, elapsed = asyncio.run(drive(server.url, bodies[:-2], times, args.duration, args.drain))
        metrics = {s.name: s.value for f in text_string_to_metric_families(httpx.get(f"{server.url}/metrics").text)
                   for s in f.samples if not s.labels}
    finally:
        server.stop()
        engine.shutdown()
        llm.close()
    done = [r for r in records if "ttft_s" in r]
    ttft = [r["ttft_s"] for r in done]
    tpot = [r["tpot_s"] for r in done if r["tpot_s"] is not None]
    tokens = sum(r["completion_tokens"] for r in done)

    def ms(v: float | None) -> float | None:
        return None if v is None else v * 1e3

    emit({"name": args.worker, "label": label, "workload": workload, "overrides": overrides,
          "requests": len(records), "completed": len(done),
          "unfinished": sum(1 for r in records if r.get("unfinished")),
          "errors": [r["error"] for r in records if "error" in r][:5],
          "elapsed_s": elapsed, "output_tok_s": tokens / elapsed, "completed_req_s": len(done) / elapsed,
          "ttft_p50_ms": ms(percentile(ttft, 50)), "ttft_p99_ms": ms(percentile(ttft, 99)),
          "tpot_p50_ms": ms(percentile(tpot, 50)), "tpot_p99_ms": ms(percentile(tpot, 99)),
          "mean_prompt_tokens": statistics.mean(r["prompt_tokens"] for r in done) if done else None,
          "prefix_cache_hit_rate": metrics.get("llm_infer_prefix_cache_hit_rate"),
          "peak_rss_mb": peak_rss_mb(), "records": records})


def _num(v: float | None) -> str:
    return "-" if v is None else f"{v:.0f}"


def chart(path: Path, rows: list[dict], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [r["label"] for r in rows]
    y = range(len(rows))
    fig, axes = plt.subplots(1, 3, figsize=(16, 0.6 * len(rows) + 1.8), sharey=True)
    for ax, metric in zip(axes[:2], ("ttft", "tpot")):
        for offset, q, color in ((-0.2, "p50", "#2a7"), (0.2, "p99", "#888")):
            values = [r[f"{metric}_{q}_ms"] or 0 for r in rows]
            bars = ax.barh([i + offset for i in y], values, height=0.4, color=color, label=q)
            ax.bar_label(bars, fmt="%.0f", padding=3, fontsize=8)
        ax.set_title(f"{metric.upper()} (ms{', log scale' if metric == 'ttft' else ''})", fontsize=10)
        ax.legend(fontsize=8)
    axes[0].set_xscale("log")  # queueing makes one-at-a-time TTFT 100x the others
    bars = axes[2].barh(list(y), [r["output_tok_s"] for r in rows], color="#2a7")
    axes[2].bar_label(bars, fmt="%.0f", padding=3, fontsize=8)
    axes[2].set_title("output tokens/s", fontsize=10)
    axes[0].set_yticks(list(y), labels)
    axes[0].invert_yaxis()
    for ax in axes:
        ax.margins(x=0.2)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(ROOT / "configs" / "local.yaml"))
    p.add_argument("--rate", type=float, default=4.0, help="mean arrivals per second (Poisson)")
    p.add_argument("--duration", type=float, default=40.0, help="seconds of arrivals per configuration")
    p.add_argument("--drain", type=float, default=30.0, help="seconds after the last arrival before cancelling")
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--only", nargs="*", choices=list(CONFIGS), help="run only these configurations")
    p.add_argument("--quick", action="store_true", help="a ~1-minute smoke run: 8 s at 2 req/s, 16 tokens")
    p.add_argument("--out", default=None, help="JSON path (default results/serve_load.json; --quick: results/tmp/)")
    p.add_argument("--worker", choices=list(CONFIGS), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.quick:
        args.rate, args.duration, args.drain, args.max_tokens = 2.0, 8.0, 5.0, 16
    if args.worker:
        return worker(args)
    out = Path(args.out or (RESULTS / "tmp" / "serve_load_quick.json" if args.quick else RESULTS / "serve_load.json"))
    common = ["--config", args.config, "--rate", str(args.rate), "--duration", str(args.duration), "--drain",
              str(args.drain), "--max-tokens", str(args.max_tokens), "--threads", str(args.threads),
              "--seed", str(args.seed)]
    rows = []
    for name in tqdm([n for n in CONFIGS if not args.only or n in args.only], desc="configurations"):
        result = spawn(__file__, ["--worker", name, *common], args.threads,
                       timeout=int(args.duration + args.drain + 600))
        if result is not None:
            rows.append(result)
    out.parent.mkdir(parents=True, exist_ok=True)
    report = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "machine": {"processor": platform.processor() or platform.machine(), "cores": os.cpu_count()},
              "config": args.config, "threads": args.threads, "rate_req_s": args.rate, "duration_s": args.duration,
              "drain_s": args.drain, "max_tokens": args.max_tokens, "seed": args.seed, "quick": args.quick,
              "note": "server and clients share one process; TTFT from the scheduled arrival", "rows": rows}
    out.write_text(json.dumps(report, indent=2))
    if rows:
        chart(out.with_suffix(".png"), rows, f"llm-infer serve, Poisson {args.rate:g} req/s for {args.duration:g} s, "
                                             f"{args.max_tokens} tokens each, {args.threads} threads")
    print(f"{'configuration':>42} | done/sent | TTFT p50/p99 ms | TPOT p50/p99 ms |  tok/s | req/s | prefix hits")
    for r in rows:
        ttft, tpot = (f"{_num(r[f'{m}_p50_ms']):>6} /{_num(r[f'{m}_p99_ms']):>6}" for m in ("ttft", "tpot"))
        hit = r["prefix_cache_hit_rate"]
        print(f"{r['label']:>42} | {r['completed']:4d}/{r['requests']:<4d} | {ttft} | {tpot} | "
              f"{r['output_tok_s']:6.1f} | {r['completed_req_s']:5.2f} | {'-' if hit is None else f'{hit:.0%}'}")
    print(f"wrote {out}" + (f" and {out.with_suffix('.png')}" if rows else ""))


if __name__ == "__main__":
    main()
