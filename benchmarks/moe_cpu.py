"""Mixture-of-experts on CPU: ours vs transformers, weight bytes per decoded token, and tensor vs
expert parallelism.

Model: a random Qwen3-MoE shaped like a scaled-down Qwen3-30B-A3B (hidden 1024, 16 layers,
64 experts, top-8, moe_intermediate_size 256, 16 heads / 4 KV heads, head_dim 64, vocab
151936) in bf16, written once under benchmarks/.cache. Each measurement runs in its own
subprocess; medians of --repeat.

- ours (2 threads) and transformers (2 threads): prefill tok/s over a --prompt-len prompt and
  batch-1 greedy decode tok/s over --gen-len tokens.
- bytes of weights a decoded token reads: ours (the router in fp32, only the selected
  experts) against the activated-parameter minimum (bf16), and the total for contrast; with
  ours' decode rate this gives the achieved weight bandwidth.
- TP=2 vs expert-parallel TP=2 (two processes, 1 thread each): prefill and decode tok/s, the
  share of decode time in communication, memory per rank.

    python benchmarks/moe_cpu.py                       # the full run (about 15 minutes on 2 cores)
    python benchmarks/moe_cpu.py --tiny --out /tmp/moe.json   # a seconds-long check that it runs
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import CACHE, RESULTS, emit, spawn  # noqa: E402

SHAPE = dict(hidden_size=1024, num_hidden_layers=16, num_experts=64, num_experts_per_tok=8, moe_intermediate_size=256,
             intermediate_size=3072, num_attention_heads=16, num_key_value_heads=4, head_dim=64, vocab_size=151936,
             max_position_embeddings=4096, norm_topk_prob=True)
TINY_SHAPE = dict(SHAPE, hidden_size=128, num_hidden_layers=2, num_experts=8, num_experts_per_tok=2,
                  moe_intermediate_size=32, intermediate_size=256, num_attention_heads=4, num_key_value_heads=2,
                  head_dim=32, vocab_size=512)
LAYOUTS = {"TP=2 (1 thread each)": False, "EP=2 (1 thread each)": True}


def ensure_model(tiny: bool) -> Path:
    from tests.checkpoints import make_checkpoint

    path = CACHE / ("qwen3-moe-tiny-bf16" if tiny else "qwen3-moe-30b-a3b-scaled-bf16")
    if not (path / "config.json").is_file():
        import torch

        print(f"writing the random Qwen3-MoE checkpoint once into {path} ...", file=sys.stderr)
        make_checkpoint(path, "qwen3_moe", dtype=torch.bfloat16, **(TINY_SHAPE if tiny else SHAPE))
    return path


def weight_bytes(shape: dict) -> dict:
    """Bytes of weights one decoded token reads (bf16 = 2 bytes), from the architecture."""
    h, layers, e, k, i = (shape[n] for n in ("hidden_size", "num_hidden_layers", "num_experts",
                                            "num_experts_per_tok", "moe_intermediate_size"))
    heads, kv, d, vocab = shape["num_attention_heads"], shape["num_key_value_heads"], shape["head_dim"], shape["vocab_size"]
    attention = h * (heads + 2 * kv) * d + heads * d * h + 2 * d  # q/k/v, o, q/k norms
    norms, expert, router = 2 * h, 3 * h * i, e * h
    per_layer_min = attention + norms + router + k * expert
    minimum = 2 * (layers * per_layer_min + h + h + vocab * h)  # embedding row, final norm, LM head
    ours = minimum + 2 * layers * router  # the router weight is kept in fp32
    total = 2 * (layers * (attention + norms + router + e * expert) + 2 * vocab * h + h)
    return {"activated_minimum": minimum, "ours": ours, "all_parameters": total}


def _prompt(n: int, vocab: int) -> list[int]:
    return [(j * 7919) % (vocab - 10) + 10 for j in range(n)]


def run_ours(model: Path, prompt_len: int, gen_len: int, repeat: int, tensor: int, expert_parallel: bool,
             threads: int) -> dict:
    from llm_infer import LLM, SamplingParams

    llm = LLM({"model": str(model), "dtype": "bfloat16", "threads": threads, "cache": {"num_blocks": 256},
               "scheduler": {"max_model_len": 2048},
               "parallel": {"tensor": tensor, "expert_parallel": expert_parallel}}, progress=False)
    executor = llm._executor
    memory = dict(enumerate(executor.collective_rpc("memory_mb")))
    executor.set_profiling(True)
    prompt = _prompt(prompt_len, llm.model_config.vocab_size)
    greedy = SamplingParams(max_tokens=gen_len, temperature=0, ignore_eos=True)
    llm.generate([prompt[:16]], SamplingParams(max_tokens=4, temperature=0))
    prefill, decode, comm = [], [], []
    for r in range(repeat):
        t = time.perf_counter()
        out = llm.generate([[r + 1] + prompt[1:]], SamplingParams(max_tokens=1, temperature=0))[0]  # no prefix hit
        prefill.append(prompt_len / (out.metrics.first_token_time - t))
        executor.worker_stats()
        out = llm.generate([prompt[:32]], greedy)[0]
        decode.append((gen_len - 1) / out.metrics.decode_time)
        stats = executor.worker_stats().values()
        comm.append(statistics.mean(s["comm_s"] / max(s["busy_s"], 1e-9) for s in stats))
    info = llm.worker_info()
    llm.close()
    med = statistics.median
    return {"system": "llm-infer", "tensor": tensor, "expert_parallel": expert_parallel, "threads": threads,
            "kernels": info.get("kernels"), "forward": info.get("forward"), "prefill_tok_s": med(prefill),
            "decode_tok_s": med(decode), "comm_share_decode": med(comm) if tensor > 1 else 0.0,
            "memory_mb_per_rank": memory}


def run_transformers(model: Path, prompt_len: int, gen_len: int, repeat: int, threads: int) -> dict:
    import torch
    import transformers

    from benchmarks.common import peak_rss_mb

    torch.set_num_threads(threads)
    hf = transformers.AutoModelForCausalLM.from_pretrained(model, dtype=torch.bfloat16).eval()
    prompt = torch.tensor([_prompt(prompt_len, hf.config.vocab_size)])
    prefill, decode = [], []
    with torch.no_grad():
        hf.generate(prompt[:, :16], max_new_tokens=4, do_sample=False)
        for _ in range(repeat):
            t = time.perf_counter()
            hf(prompt)
            prefill.append(prompt_len / (time.perf_counter() - t))
            short = prompt[:, :32]
            t = time.perf_counter()
            hf.generate(short, max_new_tokens=1, do_sample=False, min_new_tokens=1)
            first = time.perf_counter() - t
            t = time.perf_counter()
            hf.generate(short, max_new_tokens=gen_len, min_new_tokens=gen_len, do_sample=False)
            decode.append((gen_len - 1) / (time.perf_counter() - t - first))
    med = statistics.median
    return {"system": "transformers", "threads": threads, "prefill_tok_s": med(prefill), "decode_tok_s": med(decode),
            "peak_rss_mb": peak_rss_mb()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prompt-len", type=int, default=256)
    p.add_argument("--gen-len", type=int, default=32)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--tiny", action="store_true", help="a tiny model, to check the script runs")
    p.add_argument("--out", default=str(RESULTS / "moe_cpu.json"))
    p.add_argument("--run", help=argparse.SUPPRESS)  # ours,TENSOR,EP,THREADS | transformers,THREADS
    args = p.parse_args()
    model = ensure_model(args.tiny)
    if args.run:
        kind, *rest = args.run.split(",")
        if kind == "ours":
            tensor, ep, threads = int(rest[0]), rest[1] == "1", int(rest[2])
            emit(run_ours(model, args.prompt_len, args.gen_len, args.repeat, tensor, ep, threads))
        else:
            emit(run_transformers(model, args.prompt_len, args.gen_len, args.repeat, int(rest[0])))
        return
    common = ["--prompt-len", str(args.prompt_len), "--gen-len", str(args.gen_len), "--repeat", str(args.repeat)]
    common += ["--tiny"] if args.tiny else []
    runs = {"llm-infer (2 threads)": "ours,1,0,2", "transformers (2 threads)": "transformers,2",
            **{name: f"ours,2,{int(ep)},1" for name, ep in LAYOUTS.items()}}
    results = {}
    for name, spec in tqdm(runs.items(), desc="moe_cpu"):
        results[name] = spawn(__file__, ["--run", spec, *common])
    shape = TINY_SHAPE if args.tiny else SHAPE
    bytes_ = weight_bytes(shape)
    ours = results["llm-infer (2 threads)"]
    if ours:
        bytes_["achieved_weight_gb_s"] = bytes_["ours"] * ours["decode_tok_s"] / 1e9
    report = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "cores": os.cpu_count(),
              "model": shape, "dtype": "bfloat16", "prompt_len": args.prompt_len, "gen_len": args.gen_len,
              "repeat": args.repeat, "statistic": "median", "runs": results, "weight_bytes_per_decoded_token": bytes_}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    for name, r in results.items():
        if r:
            print(f"{name:>26}: prefill {r['prefill_tok_s']:7.1f} tok/s  decode {r['decode_tok_s']:6.2f} tok/s"
                  + (f"  comm {r['comm_share_decode']:.0%}  memory {r['memory_mb_per_rank']}" if "comm_share_decode"
                     in r else ""))
    print(f"weight bytes per decoded token: {bytes_}")
    plot(report, out.with_suffix(".png"))
    print(f"wrote {out} and {out.with_suffix('.png')}")


def plot(report: dict, path: Path) -> None:
    """Prefill and decode tok/s of each run, side by side (the README's chart)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = {name: r for name, r in report["runs"].items() if r}
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, key, title in ((axes[0], "prefill_tok_s", "prefill"), (axes[1], "decode_tok_s", "decode")):
        bars = ax.barh(list(runs), [r[key] for r in runs.values()], color="#4c72b0")
        ax.bar_label(bars, fmt="%.1f", padding=3)
        ax.set_title(f"{title} (tok/s)")
        ax.invert_yaxis()
        ax.margins(x=0.2)
    axes[1].set_yticklabels([])
    fig.suptitle(f"Qwen3-MoE scaled-down 30B-A3B, bf16, {report['cores']} CPU cores")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
