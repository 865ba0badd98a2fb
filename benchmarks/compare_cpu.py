"""This engine vs transformers (vs llama.cpp when llama-cpp-python is installed) on CPU.

Same model (the embedded SmolLM2-135M-Instruct), same chat prompt, same dtype and
thread count, one invocation. Each system runs in its own subprocess so its peak
RSS is its own and a crash in one does not take the others down. Reports the
median of --repeat runs: TTFT, prefill tok/s, batch-1 decode tok/s.

    python benchmarks/compare_cpu.py --threads 2 --dtypes bfloat16,float32 [--isa native|avx2]

`--isa avx2` runs our AVX2 build (`LLM_INFER_CPU_ISA=avx2`); on a CPU with AVX-512 every system's
torch is then capped to what an AVX2-only CPU runs (`common.TORCH_AS_ON_AVX2`), unless
`--torch-uncapped`. Writes benchmarks/results/compare_cpu[_avx2].json.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tqdm import tqdm  # noqa: E402

from benchmarks.common import (RESULTS, TORCH_AS_ON_AVX2, bar_chart, chat_prompt_ids, emit, spawn,  # noqa: E402
                               summarize, time_engine, time_llama_cpp)


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


def isa_paths(build: str) -> dict[str, str] | None:
    from llm_infer.kernels.cpu_extension import load_cpu_extension

    ext = load_cpu_extension(build)
    return ext.isa_paths() if ext is not None else None


def median_row(label: str, runs: list[dict]) -> dict:
    """One system's rounds: the median of each number, the last round's text, every round's decode."""
    row = {"label": label, **runs[-1]}
    for key, value in runs[-1].items():
        if isinstance(value, float):
            row[key] = statistics.median(run[key] for run in runs)
    row["decode_tok_s_rounds"] = [run["decode_tok_s"] for run in runs]
    return row


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
    p.add_argument("--repeat", type=int, default=5, help="timed runs per system and round")
    p.add_argument("--rounds", type=int, default=1, help="each system once per round, order alternating")
    p.add_argument("--isa", choices=["native", "avx2"], default="native", help="our kernels' build")
    p.add_argument("--torch-uncapped", action="store_true", help="--isa avx2: torch as this CPU runs it")
    p.add_argument("--out", default=None)
    p.add_argument("--worker", choices=["engine", "transformers", "llama_cpp"], help=argparse.SUPPRESS)
    p.add_argument("--dtype", default="bfloat16", help=argparse.SUPPRESS)
    p.add_argument("--n-batch", type=int, default=512, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)
    from llm_infer.kernels.cpu_extension import cpu_features

    os.environ["LLM_INFER_CPU_ISA"] = args.isa  # the workers inherit the environment
    capped = args.isa == "avx2" and not args.torch_uncapped and "avx512f" in cpu_features()
    if capped:
        os.environ.update(TORCH_AS_ON_AVX2)
    args.out = args.out or str(RESULTS / f"compare_cpu{'' if args.isa == 'native' else '_' + args.isa}.json")

    def run(system: str, dtype: str = "bfloat16", n_batch: int = 512) -> dict | None:
        return spawn(__file__, ["--worker", system, "--dtype", dtype, "--threads", str(args.threads), "--gen-len",
                                str(args.gen_len), "--repeat", str(args.repeat), "--n-batch", str(n_batch)],
                     args.threads)

    jobs = [(s, d) for d in args.dtypes.split(",") for s in ("engine", "transformers")]
    try:
        import llama_cpp  # noqa: F401

        jobs.append(("llama_cpp", "q4_1"))
    except ImportError:
        pass
    n_batch = 512
    by_label: dict[str, list[dict]] = {}
    for r in tqdm(range(args.rounds), desc="rounds"):
        for system, dtype in jobs if r % 2 == 0 else jobs[::-1]:  # alternate the order between rounds
            if system == "llama_cpp":
                result = run(system, n_batch=n_batch)
                if result is None and n_batch != 1:
                    n_batch = 1  # batched prompt evaluation crashes on some CPUs: token by token
                    result = run(system, n_batch=1)
                label = f"llama.cpp Q4_1 (n_batch={result['n_batch']})" if result else ""
            else:
                result = run(system, dtype)
                label = f"{'llm-infer' if system == 'engine' else 'transformers'} {dtype}"
            if result is not None:
                by_label.setdefault(label, []).append({"system": system, "dtype": dtype, **result})
    rows = [median_row(label, runs) for label, runs in by_label.items()]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    report = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "machine": {"processor": platform.processor() or platform.machine(), "cores": os.cpu_count()},
              "build": args.isa, "isa_paths": isa_paths(args.isa), "torch_capped_to": "AVX2" if capped else "this CPU",
              "threads": args.threads, "gen_len": args.gen_len, "repeat": args.repeat, "rounds": args.rounds,
              "statistic": "median over rounds of each round's median of --repeat runs",
              "rows": rows}
    for d in args.dtypes.split(","):
        ours = next((r for r in rows if r["system"] == "engine" and r["dtype"] == d), None)
        theirs = next((r for r in rows if r["system"] == "transformers" and r["dtype"] == d), None)
        llama = next((r for r in rows if r["system"] == "llama_cpp"), None)
        for name, other in (("transformers", theirs), ("llama_cpp", llama)):
            if ours and other:
                report[f"decode_speedup_vs_{name}_{d}"] = ours["decode_tok_s"] / other["decode_tok_s"]
                report[f"decode_speedup_vs_{name}_{d}_per_round"] = [
                    a / b for a, b in zip(ours["decode_tok_s_rounds"], other["decode_tok_s_rounds"])]
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
