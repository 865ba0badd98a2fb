"""Helpers shared by the benchmark scripts: run a measurement in a fresh subprocess, time
decode and prefill the same way for every system, and draw bar charts."""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / "benchmarks" / ".cache"
RESULTS = ROOT / "benchmarks" / "results"
CHAT = [{"role": "user", "content": "Explain KV caching in two sentences."}]
# What torch runs on a CPU without AVX-512, imposed on one that has it (set before torch loads): its
# bf16 matmul is then ATen's own instead of oneDNN's, fp32 MKL's AVX2 kernels. The AVX2 build's
# benchmarks compare against this on an AVX-512 host (`--isa avx2`).
TORCH_AS_ON_AVX2 = {"ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}


def rerun_as_on_avx2(threads: int, flag: str = "--torch-capped") -> None:
    """A benchmark of the AVX2 build (`--isa avx2`) on a CPU with AVX-512: run this script again, in
    a process that has TORCH_AS_ON_AVX2 from the start, with `flag` added; exits with its status.
    Returns (nothing to do) on a CPU without AVX-512 or in the process it started."""
    from llm_infer.kernels.cpu_extension import cpu_features

    if flag in sys.argv or "avx512f" not in cpu_features():
        return
    env = dict(os.environ, **TORCH_AS_ON_AVX2, LLM_INFER_CPU_ISA="avx2", OMP_NUM_THREADS=str(threads))
    sys.exit(subprocess.run([sys.executable, *sys.argv, flag], env=env).returncode)


def spawn(script: str, args: list[str], threads: int | None = None, timeout: int = 3600) -> dict | None:
    """Run `script args` in a new process and return the JSON it prints after `RESULT `."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0")
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    proc = subprocess.run([sys.executable, script, *args], capture_output=True, text=True, env=env, timeout=timeout)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    print(f"{Path(script).name} {' '.join(args)} failed (exit {proc.returncode}): "
          f"{proc.stderr.strip().splitlines()[-3:]}", file=sys.stderr)
    return None


def emit(result: dict) -> None:
    print("RESULT " + json.dumps(result), flush=True)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def summarize(ttfts: list[float], totals: list[float], prompt_len: int, gen_len: int) -> dict:
    """Medians: TTFT, prefill tok/s (prompt / TTFT) and decode tok/s (tokens after the first)."""
    ttft = statistics.median(ttfts)
    decode = statistics.median((gen_len - 1) / (t - f) for t, f in zip(totals, ttfts))
    return {"ttft_s": ttft, "prefill_tok_s": prompt_len / ttft, "decode_tok_s": decode, "peak_rss_mb": peak_rss_mb()}


def chat_prompt_ids() -> list[int]:
    from llm_infer.runtime.models.default_model import ensure_default_model
    from llm_infer.runtime.tokenizer import Tokenizer

    return Tokenizer(ensure_default_model()).encode_chat(CHAT)


def time_engine(config: dict, gen_len: int, repeat: int) -> dict:
    """This engine on the chat prompt: batch-1 greedy decode, `repeat` timed runs after a warm-up."""
    import time

    from llm_infer import LLM, SamplingParams

    llm = LLM(config, progress=False)
    prompt = chat_prompt_ids()
    params = SamplingParams(max_tokens=gen_len, temperature=0, ignore_eos=True)
    llm.generate([prompt], SamplingParams(max_tokens=4, temperature=0))
    ttfts, totals = [], []
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = llm.generate([prompt], params)[0]
        totals.append(time.perf_counter() - t0)
        ttfts.append(out.metrics.first_token_time - t0)
    result = summarize(ttfts, totals, len(prompt), gen_len)
    result["kernels"] = llm._executor.worker.runner.kernels.name
    result["text"] = out.text
    llm.close()
    return result


def time_llama_cpp(gguf: str, n_batch: int, threads: int, gen_len: int, repeat: int) -> dict:
    """llama.cpp (llama-cpp-python) on the same prompt tokens, same thread count."""
    import time

    import llama_cpp

    llm = llama_cpp.Llama(model_path=gguf, n_ctx=1024, n_threads=threads, n_threads_batch=threads,
                          n_batch=n_batch, n_ubatch=n_batch, verbose=False)
    prompt = chat_prompt_ids()

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
    result = summarize(ttfts, totals, len(prompt), gen_len)
    result["n_batch"] = n_batch
    return result


def bar_chart(path: Path, title: str, panels: list[tuple[str, list[str], list[float], str]]) -> None:
    """panels: (title, labels, values, number format); highlights llm-infer bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 0.45 * max(len(p[1]) for p in panels) + 1.6))
    axes = axes if len(panels) > 1 else [axes]
    for ax, (panel_title, labels, values, fmt) in zip(axes, panels):
        bars = ax.barh(labels, values, color=["#2a7" if "llm-infer" in lb else "#888" for lb in labels])
        ax.bar_label(bars, fmt=fmt, padding=3)
        ax.set_title(panel_title, fontsize=10)
        ax.invert_yaxis()
        ax.margins(x=0.15)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
