"""This engine vs transformers (vs llama.cpp when llama-cpp-python is installed) on CPU.

Same model (the embedded SmolLM2-135M-Instruct), same chat prompt, same dtype and
thread count, one invocation. Each system runs in its own subprocess so its peak
RSS is its own and a crash in one does not take the others down. Reports the
median of --repeat runs: TTFT, prefill tok/s, batch-1 decode tok/s.

    python benchmarks/compare_cpu.py --threads 2 --dtypes bfloat16,float32
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
MESSAGES = [{"role": "user", "content": "Explain KV caching in two sentences."}]


def _prompt_ids() -> list[int]:
    from llm_infer.runtime.models.gguf_convert import ensure_default_model
    from llm_infer.runtime.tokenizer import Tokenizer

    return Tokenizer(ensure_default_model()).encode_chat(MESSAGES)


def _summary(ttfts: list[float], totals: list[float], prompt_len: int, gen_len: int) -> dict:
    ttft = statistics.median(ttfts)
    decode = statistics.median((gen_len - 1) / (t - f) for t, f in zip(totals, ttfts))
    return {"ttft_s": ttft, "prefill_tok_s": prompt_len / ttft, "decode_tok_s": decode,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def run_engine(dtype: str, threads: int, gen_len: int, repeat: int) -> dict:
    from llm_infer import LLM, SamplingParams

    llm = LLM({"model": "default", "dtype": dtype, "threads": threads}, progress=False)
    prompt = _prompt_ids()
    params = SamplingParams(max_tokens=gen_len, temperature=0, ignore_eos=True)
    llm.generate([prompt], SamplingParams(max_tokens=4, temperature=0))
    ttfts, totals = [], []
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = llm.generate([prompt], params)[0]
        totals.append(time.perf_counter() - t0)
        ttfts.append(out.metrics.first_token_time - t0)
    result = _summary(ttfts, totals, len(prompt), gen_len)
    result["kernels"] = llm._executor.worker.runner.kernels.name
    result["text"] = out.text
    return result


def run_transformers(dtype: str, threads: int, gen_len: int, repeat: int) -> dict:
    import torch
    import transformers

    from llm_infer.runtime.models.gguf_convert import ensure_default_model

    torch.set_num_threads(threads)
    model = transformers.AutoModelForCausalLM.from_pretrained(ensure_default_model(), dtype=getattr(torch, dtype))
    model.eval()
    ids = torch.tensor([_prompt_ids()])
    kwargs = dict(do_sample=False, pad_token_id=2)
    model.generate(ids, max_new_tokens=4, **kwargs)
    ttfts, totals = [], []
    for _ in range(repeat):
        t0 = time.perf_counter()
        model.generate(ids, max_new_tokens=1, **kwargs)
        ttfts.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        out = model.generate(ids, max_new_tokens=gen_len, min_new_tokens=gen_len, **kwargs)
        totals.append(time.perf_counter() - t0)
    result = _summary(ttfts, totals, ids.shape[1], gen_len)
    result["text"] = out[0, ids.shape[1]:].tolist()
    return result


def run_llama_cpp(n_batch: int, threads: int, gen_len: int, repeat: int) -> dict:
    import llama_cpp

    from llm_infer.runtime.models.gguf_convert import find_default_gguf

    llm = llama_cpp.Llama(model_path=str(find_default_gguf()), n_ctx=1024, n_threads=threads,
                          n_threads_batch=threads, n_batch=n_batch, n_ubatch=n_batch, verbose=False)
    prompt = _prompt_ids()

    def generate(n: int) -> None:
        llm.reset()
        for i, _ in enumerate(llm.generate(prompt, temp=0.0, top_k=1, reset=True)):
            if i + 1 == n:
                break

    generate(4)
    ttfts, totals = [], []
    for _ in range(repeat):
        t0 = time.perf_counter()
        generate(1)
        ttfts.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        generate(gen_len)
        totals.append(time.perf_counter() - t0)
    result = _summary(ttfts, totals, len(prompt), gen_len)
    result["n_batch"] = n_batch
    return result


def _worker(args: argparse.Namespace) -> None:
    if args.worker == "engine":
        result = run_engine(args.dtype, args.threads, args.gen_len, args.repeat)
    elif args.worker == "transformers":
        result = run_transformers(args.dtype, args.threads, args.gen_len, args.repeat)
    else:
        result = run_llama_cpp(args.n_batch, args.threads, args.gen_len, args.repeat)
    print("RESULT " + json.dumps(result))


def _spawn(system: str, args: argparse.Namespace, dtype: str = "", n_batch: int = 512) -> dict | None:
    cmd = [sys.executable, __file__, "--worker", system, "--dtype", dtype or "bfloat16", "--threads",
           str(args.threads), "--gen-len", str(args.gen_len), "--repeat", str(args.repeat), "--n-batch", str(n_batch)]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), PYTHONPATH=str(ROOT))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    print(f"{system} {dtype} failed (exit {proc.returncode}): {proc.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
    return None


def _chart(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [r["label"] for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, key, title in ((axes[0], "decode_tok_s", "decode, batch 1 (tok/s)"),
                           (axes[1], "prefill_tok_s", "prefill (tok/s)")):
        values = [r[key] for r in rows]
        bars = ax.barh(labels, values, color=["#2a7" if "llm-infer" in lb else "#888" for lb in labels])
        ax.bar_label(bars, fmt="%.0f", padding=3)
        ax.set_title(title)
        ax.invert_yaxis()
    fig.suptitle("SmolLM2-135M-Instruct on CPU, same prompt, dtype and threads")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dtypes", default="bfloat16,float32")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--gen-len", type=int, default=64)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "compare_cpu.json"))
    p.add_argument("--worker", choices=["engine", "transformers", "llama_cpp"], help=argparse.SUPPRESS)
    p.add_argument("--dtype", default="bfloat16", help=argparse.SUPPRESS)
    p.add_argument("--n-batch", type=int, default=512, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return _worker(args)

    jobs = [(s, d) for d in args.dtypes.split(",") for s in ("engine", "transformers")]
    rows: list[dict] = []
    for system, dtype in tqdm(jobs + [("llama_cpp", "q4_1")], desc="systems"):
        if system == "llama_cpp":
            try:
                import llama_cpp  # noqa: F401
            except ImportError:
                continue
            result = _spawn(system, args, n_batch=512)
            if result is None:  # batched prompt evaluation crashes on some CPUs: evaluate token by token
                result = _spawn(system, args, n_batch=1)
            label = f"llama.cpp Q4_1 (n_batch={result['n_batch']})" if result else None
        else:
            result = _spawn(system, args, dtype)
            label = f"{'llm-infer' if system == 'engine' else 'transformers'} {dtype}"
        if result is not None:
            rows.append({"label": label, "system": system, "dtype": dtype, **result})
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"processor": platform.processor() or platform.machine(), "cores": os.cpu_count()},
        "threads": args.threads, "gen_len": args.gen_len, "repeat": args.repeat, "statistic": "median",
        "rows": rows,
    }
    for d in args.dtypes.split(","):
        ours = next((r for r in rows if r["system"] == "engine" and r["dtype"] == d), None)
        theirs = next((r for r in rows if r["system"] == "transformers" and r["dtype"] == d), None)
        if ours and theirs:
            report[f"decode_speedup_vs_transformers_{d}"] = ours["decode_tok_s"] / theirs["decode_tok_s"]
    out.write_text(json.dumps(report, indent=2))
    _chart(rows, out.with_suffix(".png"))
    for r in rows:
        print(f"{r['label']:>34}: TTFT {r['ttft_s'] * 1e3:7.1f} ms  prefill {r['prefill_tok_s']:7.1f} tok/s  "
              f"decode {r['decode_tok_s']:6.1f} tok/s  RSS {r['peak_rss_mb']:.0f} MB")
    print(f"wrote {out} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
