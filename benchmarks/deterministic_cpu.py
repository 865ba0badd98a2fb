"""What deterministic mode costs: decode tok/s at batch 1 and 16 and prefill tok/s, with
`deterministic: true` against the default kernels, both engines in one process, interleaved
over the rounds; medians. Goal: at most 15% slower decode and 35% slower prefill.

    python benchmarks/deterministic_cpu.py [--rounds 5] [--threads 2]        # the default model, bf16
    python benchmarks/deterministic_cpu.py --model DIR --prompt-len 32 --gen-len 8 --rounds 1 \\
        --out /tmp/det.json                                                    # a small check

128-token prompts (prefill: one prompt alone, and 8 at once), 64 new tokens (ignore_eos), prefix
caching off so every round computes its prompts. Writes benchmarks/results/deterministic_cpu.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import RESULTS  # noqa: E402
from benchmarks.sampling_cpu import decode_rate  # noqa: E402

MODES = {"default": False, "deterministic": True}


def prefill_rate(llm, prompts: list[list[int]]) -> float:
    """Prompt tokens per second of wall time for prompts that each produce one token."""
    from llm_infer import SamplingParams

    start = time.perf_counter()
    llm.generate(prompts, SamplingParams(max_tokens=1, temperature=0))
    return sum(len(p) for p in prompts) / (time.perf_counter() - start)


KINDS = ["prefill batch 1", "prefill batch 8", "decode batch 1", "decode batch 16"]


def measure_kinds(llm, prompts: list[list[int]], gen_len: int) -> dict[str, float]:
    """One sample of each of KINDS (tok/s): prefill of 1 and 8 prompts, decode of 1 and 16 (16 prompts)."""
    return {"prefill batch 1": prefill_rate(llm, prompts[:1]), "prefill batch 8": prefill_rate(llm, prompts[:8]),
            "decode batch 1": decode_rate(llm, prompts[:1], {}, gen_len),
            "decode batch 16": decode_rate(llm, prompts, {}, gen_len)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="default")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--prompt-len", type=int, default=128)
    p.add_argument("--gen-len", type=int, default=64)
    p.add_argument("--out", default=str(RESULTS / "deterministic_cpu.json"))
    args = p.parse_args()
    from llm_infer import LLM
    from llm_infer.entrypoints.bench import bench_prompts

    engines = {name: LLM({"model": args.model, "dtype": "bfloat16", "threads": args.threads, "deterministic": on,
                          "cache": {"prefix_caching": False}, "scheduler": {"max_num_seqs": 16}}, progress=False)
               for name, on in MODES.items()}
    prompts = bench_prompts(engines["default"].tokenizer, args.prompt_len, 16)
    for llm in engines.values():
        llm.generate(prompts[:2], None)  # warm-up
    kinds = KINDS
    samples = {name: {k: [] for k in kinds} for name in MODES}
    for _ in range(args.rounds):
        for name, llm in engines.items():
            for k, v in measure_kinds(llm, prompts, args.gen_len).items():
                samples[name][k].append(v)
    for llm in engines.values():
        llm.close()
    med = {name: {k: statistics.median(v) for k, v in by_kind.items()} for name, by_kind in samples.items()}
    slowdown = {k: 1 - med["deterministic"][k] / med["default"][k] for k in kinds}
    result = {"model": args.model, "dtype": "bfloat16", "threads": args.threads, "prompt_len": args.prompt_len,
              "gen_len": args.gen_len, "rounds": args.rounds, "tok_s": med, "slower_by": slowdown,
              "goal": {"decode": 0.15, "prefill": 0.35}, "samples": samples}
    Path(args.out).write_text(json.dumps(result, indent=2))
    for k in kinds:
        print(f"{k:16s} default {med['default'][k]:8.1f} tok/s  deterministic {med['deterministic'][k]:8.1f} tok/s"
              f"  ({slowdown[k]:+.1%} slower)")


if __name__ == "__main__":
    main()
