"""Our C++ kernels (`kernels: auto`) against torch's own (`kernels: torch`: oneDNN/ATen matmuls,
torch attention and norms) on one build of ours, in one process, interleaved over the rounds;
medians: decode tok/s at batch 1 and 16, prefill tok/s of one and of 8 prompts.

    python benchmarks/kernels_cpu.py [--isa native|avx2] [--rounds 5] [--threads 2]

`--isa avx2` runs our AVX2 build; on a CPU with AVX-512 torch is then held to what an AVX2-only
CPU runs (`common.TORCH_AS_ON_AVX2`) unless `--torch-uncapped`. The default model in bf16,
128-token prompts, 64 new tokens, prefix caching off. Writes
benchmarks/results/kernels_cpu[_avx2].json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import RESULTS, rerun_as_on_avx2  # noqa: E402
from benchmarks.deterministic_cpu import KINDS, measure_kinds  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--isa", choices=["native", "avx2"], default="native")
    p.add_argument("--torch-uncapped", action="store_true", help="--isa avx2: torch as this CPU runs it")
    p.add_argument("--model", default="default")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--prompt-len", type=int, default=128)
    p.add_argument("--gen-len", type=int, default=64)
    p.add_argument("--out", default=None)
    p.add_argument("--torch-capped", action="store_true", help=argparse.SUPPRESS)  # set by the re-run
    args = p.parse_args()
    if args.isa == "avx2" and not args.torch_uncapped:
        rerun_as_on_avx2(args.threads)
    os.environ["LLM_INFER_CPU_ISA"] = args.isa
    from llm_infer import LLM
    from llm_infer.entrypoints.bench import bench_prompts
    from llm_infer.kernels.cpu_extension import load_cpu_extension

    engines = {kernels: LLM({"model": args.model, "dtype": args.dtype, "threads": args.threads, "kernels": kernels,
                             "cache": {"prefix_caching": False}, "scheduler": {"max_num_seqs": 16}}, progress=False)
               for kernels in ("auto", "torch")}
    prompts = bench_prompts(engines["auto"].tokenizer, args.prompt_len, 16)
    for llm in engines.values():
        llm.generate(prompts[:2], None)  # warm-up
    samples = {name: {k: [] for k in KINDS} for name in engines}
    for r in range(args.rounds):
        for name in engines if r % 2 == 0 else list(engines)[::-1]:
            for k, v in measure_kinds(engines[name], prompts, args.gen_len).items():
                samples[name][k].append(v)
    for llm in engines.values():
        llm.close()
    med = {name: {k: statistics.median(v) for k, v in by_kind.items()} for name, by_kind in samples.items()}
    result = {"build": args.isa, "isa_paths": load_cpu_extension(args.isa).isa_paths(),
              "torch_capped_to": "AVX2" if args.torch_capped else "this CPU", "model": args.model,
              "dtype": args.dtype, "threads": args.threads, "prompt_len": args.prompt_len, "gen_len": args.gen_len,
              "rounds": args.rounds, "statistic": "median", "tok_s": med,
              "ours_over_torch": {k: med["auto"][k] / med["torch"][k] for k in KINDS}, "samples": samples}
    out = Path(args.out or RESULTS / f"kernels_cpu{'' if args.isa == 'native' else '_' + args.isa}.json")
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"build {args.isa}, {args.threads} threads, torch held to {result['torch_capped_to']}, {args.dtype}:")
    for k in KINDS:
        print(f"{k:16s} ours {med['auto'][k]:8.1f} tok/s  torch {med['torch'][k]:8.1f} tok/s  "
              f"({result['ours_over_torch'][k]:.2f}x)")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
