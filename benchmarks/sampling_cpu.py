"""What the sampling surface costs: decode tok/s with logprobs (top-5), with penalties and a
logit bias, and both, against all off; and `n=4` against four separate requests.

    python benchmarks/sampling_cpu.py [--rounds 3] [--threads 2]

The default model in bf16 on CPU, 128-token prompts, 64 new tokens (ignore_eos), batch 1
and 16; every configuration runs in the same process on the same engine, interleaved over
the rounds; medians. Writes benchmarks/results/sampling_cpu.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import RESULTS  # noqa: E402

CONFIGS = {
    "off": {},
    "logprobs top-5": {"logprobs": 5},
    "penalties + bias": {"presence_penalty": 0.5, "frequency_penalty": 0.5, "repetition_penalty": 1.1,
                         "logit_bias": {13: -2.0, 30: 1.0}},
    "logprobs + penalties": {"logprobs": 5, "presence_penalty": 0.5, "frequency_penalty": 0.5,
                             "repetition_penalty": 1.1},
}


def decode_rate(llm, prompts: list[list[int]], extra: dict, gen_len: int) -> float:
    from llm_infer import SamplingParams

    params = SamplingParams(max_tokens=gen_len, temperature=0.8, seed=1, ignore_eos=True, **extra)
    start = time.perf_counter()
    outs = llm.generate(prompts, params)
    first = max(o.metrics.first_token_time for o in outs)
    end = time.perf_counter()
    assert start < first
    return sum(len(o.token_ids) - 1 for o in outs) / (end - first)


def n_versus_separate(llm, prompt: list[int], gen_len: int) -> dict:
    from llm_infer import SamplingParams

    runs = {}
    for name, prompts, params in [
        ("n=4", [prompt], SamplingParams(max_tokens=gen_len, temperature=0.8, seed=1, ignore_eos=True, n=4)),
        ("4 requests", [prompt] * 4, [SamplingParams(max_tokens=gen_len, temperature=0.8, seed=1 + i,
                                                     ignore_eos=True) for i in range(4)]),
    ]:
        before = llm.engine.stats.prefill_tokens
        start = time.perf_counter()
        llm.generate(prompts, params)
        runs[name] = {"wall_s": time.perf_counter() - start, "prefill_tokens": llm.engine.stats.prefill_tokens - before}
    return runs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--gen-len", type=int, default=64)
    p.add_argument("--out", default=str(RESULTS / "sampling_cpu.json"))
    args = p.parse_args()
    from llm_infer import LLM
    from llm_infer.entrypoints.bench import bench_prompts

    # Prefix caching off: every round computes its prompts, and the n=4 comparison counts real prefills.
    llm = LLM({"model": "default", "dtype": "bfloat16", "threads": args.threads,
               "cache": {"prefix_caching": False}, "scheduler": {"max_num_seqs": 16}}, progress=False)
    prompts = bench_prompts(llm.tokenizer, 128, 16)
    llm.generate(prompts[:2], None)  # warm-up
    samples: dict[str, dict[str, list[float]]] = {name: {"batch 1": [], "batch 16": []} for name in CONFIGS}
    n_runs = []
    for _ in tqdm(range(args.rounds), desc="rounds"):
        for name, extra in CONFIGS.items():
            samples[name]["batch 1"].append(decode_rate(llm, prompts[:1], extra, args.gen_len))
            samples[name]["batch 16"].append(decode_rate(llm, prompts, extra, args.gen_len))
        n_runs.append(n_versus_separate(llm, prompts[3], args.gen_len))
    llm.close()
    med = {name: {b: statistics.median(v) for b, v in by_batch.items()} for name, by_batch in samples.items()}
    summary = {name: {b: {"decode_tok_s": rate, "vs_off": rate / med["off"][b]} for b, rate in by_batch.items()}
               for name, by_batch in med.items()}
    n_summary = {name: {"wall_s": statistics.median(r[name]["wall_s"] for r in n_runs),
                        "prefill_tokens": n_runs[0][name]["prefill_tokens"]} for name in n_runs[0]}
    result = {"model": "default (SmolLM2-135M-Instruct)", "dtype": "bfloat16", "threads": args.threads,
              "torch_threads": torch.get_num_threads(), "prompt_len": 128, "gen_len": args.gen_len,
              "rounds": args.rounds, "decode": summary, "n4_vs_separate": n_summary, "samples": samples}
    Path(args.out).write_text(json.dumps(result, indent=2))
    for name, by_batch in summary.items():
        print(f"{name:22s} " + "  ".join(f"{b}: {r['decode_tok_s']:7.1f} tok/s ({r['vs_off']:.3f}x)"
                                          for b, r in by_batch.items()))
    for name, r in n_summary.items():
        print(f"{name:12s} wall {r['wall_s']:.2f} s, prefill tokens {r['prefill_tokens']}")


if __name__ == "__main__":
    main()
