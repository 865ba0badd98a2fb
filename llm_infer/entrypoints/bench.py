"""`llm-infer bench`: TTFT, prefill and decode speed at batch 1 and batched, as JSON."""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import time
from pathlib import Path
from typing import Any, Callable

import torch
from tqdm import tqdm

from llm_infer.errors import UserError
from llm_infer.runtime.sampling_params import SamplingParams

PASSAGE = (
    "The history of computing is a story of abstraction. Early machines were programmed by rewiring "
    "panels; stored-program computers let instructions live in memory beside data. Compilers turned "
    "formulas into machine code, operating systems shared one machine among many users, and networks "
    "joined machines into systems larger than any one of them. Each layer hid the details of the one "
    "below, so that people could think about problems instead of circuits. "
)


def bench_prompts(tokenizer, prompt_len: int, count: int, first: int = 0) -> list[list[int]]:
    """`count` prompts of exactly `prompt_len` tokens from a fixed passage, numbered from `first`:
    each begins with its own number, so no two share a first KV block and prefix caching never
    turns a measured prefill into a cache hit (the first measurements of `bench` did: a warm-up
    and repeats of the same prompts made prefill look 7-27x faster)."""
    passage = tokenizer.encode(PASSAGE, add_special_tokens=False)
    ids = passage * (prompt_len // len(passage) + 2)  # from any offset within the passage: prompt_len left
    out = []
    for k in range(first, first + count):
        head = tokenizer.encode(f"{k}. ", add_special_tokens=False)
        out.append((head + ids[k % len(passage):])[:prompt_len])
    return out


def measure(llm, prompts: list[list[int]], gen_len: int) -> dict[str, float]:
    params = SamplingParams(max_tokens=gen_len, temperature=0, ignore_eos=True)
    start = time.perf_counter()
    outputs = llm.generate(prompts, params)
    end = time.perf_counter()
    first = max(o.metrics.first_token_time for o in outputs)
    prefill_tokens = sum(len(p) for p in prompts)
    decode_tokens = sum(len(o.token_ids) - 1 for o in outputs)
    return {
        "ttft_s": statistics.median(o.metrics.ttft for o in outputs),
        "prefill_tok_s": prefill_tokens / (first - start),
        "decode_tok_s": decode_tokens / (end - first),
        "total_s": end - start,
    }


def perplexity(llm, text: str, window: int) -> dict[str, float]:
    """Perplexity of `text` over non-overlapping windows (the first token of each is context only)."""
    ids = llm.tokenizer.encode(text, add_special_tokens=False)
    window = min(window, llm.engine.max_model_len - 1)
    if len(ids) < 2:
        raise UserError("the perplexity text needs at least two tokens")
    nll, count = 0.0, 0
    for start in tqdm(range(0, len(ids) - 1, window), desc="perplexity", unit="window"):
        chunk = ids[start : start + window]
        if len(chunk) < 2:
            break
        logits = llm.logits(chunk)
        targets = torch.tensor(chunk[1:])
        nll += float(torch.nn.functional.cross_entropy(logits[:-1], targets, reduction="sum"))
        count += len(chunk) - 1
    return {"perplexity": float(torch.exp(torch.tensor(nll / count))), "tokens": count, "window": window}


def run_ppl(args: argparse.Namespace, make_llm: Callable[..., Any]) -> int:
    path = Path(args.ppl)
    if not path.is_file():
        raise UserError(f"perplexity text not found: {path}")
    llm = make_llm(args)
    try:
        result = {"model": llm.config.model, "dtype": llm.worker_info()["dtype"], "file": str(path),
                  **perplexity(llm, path.read_text(errors="replace"), args.ppl_window)}
    finally:
        llm.close()
    print(f"perplexity {result['perplexity']:.3f} over {result['tokens']} tokens (window {result['window']})")
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")
    return 0


def run_bench(args: argparse.Namespace, make_llm: Callable[..., Any]) -> int:
    if args.ppl:
        return run_ppl(args, make_llm)
    if args.prompt_len < 1 or args.gen_len < 2 or args.batch < 1 or args.repeat < 1:
        raise UserError("--prompt-len, --batch and --repeat must be >= 1 and --gen-len >= 2")
    llm = make_llm(args)
    try:
        numbered = iter(range(0, 10**9, args.batch + 1))  # fresh prompts for every measurement
        measure(llm, bench_prompts(llm.tokenizer, args.prompt_len, 1, next(numbered)), 4)  # warm-up
        runs: dict[str, list[dict[str, float]]] = {"batch_1": [], f"batch_{args.batch}": []}
        for _ in tqdm(range(args.repeat), desc="bench", unit="round"):
            first = next(numbered)
            runs["batch_1"].append(measure(llm, bench_prompts(llm.tokenizer, args.prompt_len, 1, first),
                                           args.gen_len))
            runs[f"batch_{args.batch}"].append(
                measure(llm, bench_prompts(llm.tokenizer, args.prompt_len, args.batch, first + 1), args.gen_len))
        hits = llm.engine.snapshot().prefix_hit_tokens
        result = {
            "model": llm.config.model,
            "dtype": llm.worker_info()["dtype"],
            "device": llm.config.device,
            "threads": torch.get_num_threads(),
            "prompt_len": args.prompt_len,
            "gen_len": args.gen_len,
            "repeat": args.repeat,
            "machine": platform.processor() or platform.machine(),
            "results": {name: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for name, rs in runs.items()},
            "prefix_hit_tokens": hits,  # 0: every prefill was computed
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        }
    finally:
        llm.close()
    for name, r in result["results"].items():
        print(f"{name:>9}: TTFT {r['ttft_s'] * 1e3:7.1f} ms | prefill {r['prefill_tok_s']:8.1f} tok/s | "
              f"decode {r['decode_tok_s']:7.1f} tok/s")
    print(f"peak RSS {result['peak_rss_mb']:.0f} MB, {result['threads']} threads")
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")
    return 0
