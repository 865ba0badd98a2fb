"""This engine vs transformers (vs llama.cpp when llama-cpp-python is installed) on CPU.

Same model (the embedded SmolLM2-135M-Instruct), same chat prompt, same dtype and
thread count, one invocation. Each system runs in its own subprocess so its peak
RSS is its own and a crash in one does not take the others down. Reports the
median of --repeat runs: TTFT, prefill tok/s, batch-1 decode tok/s.

    python benchmarks/compare_cpu.py --threads 2 --dtypes bfloat16,float32
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tqdm import tqdm  # noqa: E402

from benchmarks.common import RESULTS, bar_chart, chat_prompt_ids, emit, spawn, summarize, time_engine, time_llama_cpp  # noqa: E402


def run_transformers(dtype: str, threads: int, gen_len: int, repeat: int) -> dict:
    import torch
    import transformers

    from llm_infer.runtime.models.default_model import ensure_default_model

    torch.set_num_threads(threads)
    model = transformers.AutoModelForCausalLM.from_pretrained(ensure_default_model(), dtype=getattr(torch, dtype))
    model.eval()
    ids = torch.tensor([chat_prompt_ids()])
    kwargs = dict(do_sample=False, pad_token_id=2)
    model.generate(ids, max_new_tokens=4, **kwargs)
    ttfts, totals = [], []
    for _ in range(repeat):
        t0 = time.perf_counter()
        model.generate(ids, max_new_tokens=1, **kwargs)
        ttfts.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        model.generate(ids, max_new_tokens=gen_len, min_new_tokens=gen_len, **kwargs)
        totals.append(time.perf_counter() - t0)
    return summarize(ttfts, totals, ids.shape[1], gen_len)


def worker(args: argparse.Namespace) -> None:
    if args.worker == "engine":
        emit(time_engine({"model": "default", "dtype": args.dtype, "threads": args.threads}, args.gen_len, args.repeat))
    elif args.worker == "transformers":
        emit(run_transformers(args.dtype, args.threads, args.gen_len, args.repeat))
    else:
        from llm_infer.runtime.models.default_model import find_default_gguf

        emit(time_llama_cpp(str(find_default_gguf()), args.n_batch, args.threads, args.gen_len, args.repeat))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dtypes", default="bfloat16,float32")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--gen-len", type=int, default=64)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--out", default=str(RESULTS / "compare_cpu.json"))
    p.add_argument("--worker", choices=["engine", "transformers", "llama_cpp"], help=argparse.SUPPRESS)
    p.add_argument("--dtype", default="bfloat16", help=argparse.SUPPRESS)
    p.add_argument("--n-batch", type=int, default=512, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)

    def run(system: str, dtype: str = "bfloat16", n_batch: int = 512) -> dict | None:
        return spawn(__file__, ["--worker", system, "--dtype", dtype, "--threads", str(args.threads), "--gen-len",
                                str(args.gen_len), "--repeat", str(args.repeat), "--n-batch", str(n_batch)],
                     args.threads)

    rows: list[dict] = []
    jobs = [(s, d) for d in args.dtypes.split(",") for s in ("engine", "transformers")]
    for system, dtype in tqdm(jobs + [("llama_cpp", "q4_1")], desc="systems"):
        if system == "llama_cpp":
            try:
                import llama_cpp  # noqa: F401
            except ImportError:
                continue
            # batched prompt evaluation crashes on some CPUs: fall back to token by token
            result = run(system, n_batch=512) or run(system, n_batch=1)
            label = f"llama.cpp Q4_1 (n_batch={result['n_batch']})" if result else ""
        else:
            result = run(system, dtype)
            label = f"{'llm-infer' if system == 'engine' else 'transformers'} {dtype}"
        if result is not None:
            rows.append({"label": label, "system": system, "dtype": dtype, **result})
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    report = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "machine": {"processor": platform.processor() or platform.machine(), "cores": os.cpu_count()},
              "threads": args.threads, "gen_len": args.gen_len, "repeat": args.repeat, "statistic": "median",
              "rows": rows}
    for d in args.dtypes.split(","):
        ours = next((r for r in rows if r["system"] == "engine" and r["dtype"] == d), None)
        theirs = next((r for r in rows if r["system"] == "transformers" and r["dtype"] == d), None)
        if ours and theirs:
            report[f"decode_speedup_vs_transformers_{d}"] = ours["decode_tok_s"] / theirs["decode_tok_s"]
    import json

    out.write_text(json.dumps(report, indent=2))
    labels = [r["label"] for r in rows]
    bar_chart(out.with_suffix(".png"), "SmolLM2-135M-Instruct on CPU, same prompt, dtype and threads",
              [("decode, batch 1 (tok/s)", labels, [r["decode_tok_s"] for r in rows], "%.0f"),
               ("prefill (tok/s)", labels, [r["prefill_tok_s"] for r in rows], "%.0f")])
    for r in rows:
        print(f"{r['label']:>34}: TTFT {r['ttft_s'] * 1e3:7.1f} ms  prefill {r['prefill_tok_s']:7.1f} tok/s  "
              f"decode {r['decode_tok_s']:6.1f} tok/s  RSS {r['peak_rss_mb']:.0f} MB")
    print(f"wrote {out} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
