"""Embeddings throughput: llm-infer's `LLM.embed` against transformers on the same model.

    python benchmarks/embeddings_cpu.py [--rounds 5] [--threads 2] [--inputs 32] [--tokens 128]

The default model (SmolLM2-135M-Instruct), `--inputs` prompts of exactly `--tokens` tokens each
(`bench_prompts`: no two share a first block), last-token pooling and L2 normalisation in both.
transformers runs `AutoModel` (the bare decoder: no LM head, as an embedding model is loaded) over
the whole batch in one forward under `torch.inference_mode`, then pools; llm-infer runs one
`LLM.embed` call (prefix caching off, so every round computes every prompt). Both in bf16 (the
default model's default dtype) and in fp32, in one process with the same torch thread count,
interleaved over the rounds; medians of inputs/s and tokens/s (and, as the machine may be shared,
the median of each round's back-to-back ratio and the ratio of the best runs). The vectors of the
two systems are compared too (cosine). Writes benchmarks/results/embeddings_cpu.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import RESULTS  # noqa: E402

DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32}


def transformers_embed(model, prompts: list[list[int]]) -> torch.Tensor:
    """Last-token pooling of the last hidden state, normalized: what llm-infer's `last` pooling computes."""
    with torch.inference_mode():
        hidden = model(torch.tensor(prompts)).last_hidden_state  # equal lengths: no padding needed
        return torch.nn.functional.normalize(hidden[:, -1].float(), dim=-1)


def ours_embed(llm, prompts: list[list[int]]) -> torch.Tensor:
    return torch.stack([o.embedding for o in llm.embed(prompts)])


def timed(fn, *args) -> tuple[float, torch.Tensor]:
    start = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - start, out


def cpu_isa() -> str:
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        return platform.machine()
    have = set(flags.split())
    wanted = ["avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16"]
    return " ".join(f for f in wanted if f in have)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--inputs", type=int, default=32)
    p.add_argument("--tokens", type=int, default=128)
    p.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=list(DTYPES))
    p.add_argument("--out", default=str(RESULTS / "embeddings_cpu.json"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    import transformers

    from llm_infer import LLM
    from llm_infer.entrypoints.bench import bench_prompts
    from llm_infer.runtime.models.default_model import ensure_default_model

    model_dir = ensure_default_model()
    systems = {}
    for name in args.dtypes:
        llm = LLM({"model": "default", "dtype": name, "threads": args.threads, "model_task": "generate",
                   "pooling": {"method": "last", "normalize": True}, "cache": {"prefix_caching": False}},
                  progress=False)
        ref = transformers.AutoModel.from_pretrained(model_dir, dtype=DTYPES[name]).eval()
        systems[name] = (llm, ref)
    prompts = bench_prompts(systems[args.dtypes[0]][0].tokenizer, args.tokens, args.inputs)
    for llm, ref in systems.values():  # warm-up (kernel builds, first-call allocations)
        ours_embed(llm, prompts[:4])
        transformers_embed(ref, prompts[:4])
    times: dict[str, dict[str, list[float]]] = {n: {"llm-infer": [], "transformers": []} for n in systems}
    agreement = {}
    for _ in tqdm(range(args.rounds), desc="rounds"):
        for name, (llm, ref) in systems.items():
            t_ours, ours = timed(ours_embed, llm, prompts)
            t_ref, theirs = timed(transformers_embed, ref, prompts)
            times[name]["llm-infer"].append(t_ours)
            times[name]["transformers"].append(t_ref)
            agreement[name] = torch.nn.functional.cosine_similarity(ours, theirs, dim=-1).min().item()
    for llm, _ in systems.values():
        llm.close()
    tokens = args.inputs * args.tokens
    summary = {}
    for name, by_system in times.items():
        med = {s: statistics.median(v) for s, v in by_system.items()}
        summary[name] = {s: {"inputs_per_s": args.inputs / t, "tokens_per_s": tokens / t, "median_s": t}
                         for s, t in med.items()}
        summary[name]["speedup"] = med["transformers"] / med["llm-infer"]
        # The machine is shared: each round's two runs back to back, as a ratio, and each system's best run.
        paired = [t / o for o, t in zip(by_system["llm-infer"], by_system["transformers"])]
        summary[name]["median_round_speedup"] = statistics.median(paired)
        summary[name]["best_run_speedup"] = min(by_system["transformers"]) / min(by_system["llm-infer"])
        summary[name]["min_cosine_vs_transformers"] = agreement[name]
    result = {"model": "default (SmolLM2-135M-Instruct)", "inputs": args.inputs, "tokens_per_input": args.tokens,
              "threads": args.threads, "torch_threads": torch.get_num_threads(), "cpu_isa": cpu_isa(),
              "pooling": "last, normalized", "rounds": args.rounds, "transformers": transformers.__version__,
              "torch": torch.__version__, "results": summary, "samples_s": times}
    Path(args.out).write_text(json.dumps(result, indent=2))
    for name, r in summary.items():
        print(f"{name:9s} llm-infer {r['llm-infer']['inputs_per_s']:6.1f} inputs/s "
              f"({r['llm-infer']['tokens_per_s']:6.0f} tok/s)  transformers {r['transformers']['inputs_per_s']:6.1f} "
              f"inputs/s ({r['transformers']['tokens_per_s']:6.0f} tok/s)  {r['speedup']:.2f}x  "
              f"(per round {r['median_round_speedup']:.2f}x, best runs {r['best_run_speedup']:.2f}x)  "
              f"min cosine {r['min_cosine_vs_transformers']:.5f}")


if __name__ == "__main__":
    main()
