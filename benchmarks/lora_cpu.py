"""What LoRA adapters cost on CPU: decode tok/s of a batch of 16 requests spread over 1, 4 and 16
different rank-16 adapters (every projection: q/k/v/o, gate/up/down; all 30 layers), and over 16
adapters of the attention projections only, against the same 16 requests on the base model.

    python benchmarks/lora_cpu.py [--rounds 5] [--threads 2] [--gen 48]

The default model in bf16 on CPU, 64-token prompts, `--gen` new tokens (ignore_eos), greedy. One
engine with `lora.enabled` (16 slots, max_rank 16) runs every configuration, interleaved over the
rounds (the base rows run with no adapter token in the step, so LoRA is skipped entirely, as with
`lora.enabled: false`); medians of the rounds' decode rates, and the first quartile of all decode
steps' times (on a shared machine other load only ever slows a step down: the fast quartile is
the least disturbed). The load average at the start and end is recorded. Random adapters are written once to benchmarks/.cache/lora.
Writes benchmarks/results/lora_cpu.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import CACHE, RESULTS  # noqa: E402

BATCH = 16
ALL = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
ATTENTION = ALL[:4]


def decode_steps(llm, prompts: list[list[int]], loras: list[str | None], gen_len: int) -> list[float]:
    """Seconds of each decode step (every request one token) of one batch, after its prefill."""
    from llm_infer import SamplingParams

    engine = llm.engine
    for prompt, lora in zip(prompts, loras):
        engine.add_request(prompt, SamplingParams(max_tokens=gen_len, temperature=0, ignore_eos=True, lora=lora))
    times = []
    while engine.has_unfinished():
        decoding = engine.stats.decode_tokens
        start = time.perf_counter()
        engine.step()
        if engine.stats.decode_tokens - decoding == len(prompts):
            times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--gen", type=int, default=48)
    parser.add_argument("--prompt-len", type=int, default=64)
    parser.add_argument("--out", default=str(RESULTS / "lora_cpu.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load_start = os.getloadavg()

    from llm_infer import LLM
    from llm_infer.entrypoints.bench import bench_prompts
    from llm_infer.kernels.cpu_extension import cpu_features
    from llm_infer.runtime.models.default_model import ensure_default_model
    from tests.lora_adapters import write_adapter

    model_dir = ensure_default_model()
    adapters = {}
    for prefix, targets in (("a", ALL), ("q", ATTENTION)):
        for i in range(BATCH):
            path = CACHE / "lora" / f"r16-{prefix}{i}"
            if not (path / "adapter_model.safetensors").is_file():
                write_adapter(path, model_dir, r=16, alpha=32, seed=100 + i, dtype=torch.bfloat16, std=0.05,
                              targets=targets)
            adapters[f"{prefix}{i}"] = path
    config = {"model": "default", "dtype": "bfloat16", "device": "cpu", "threads": args.threads,
              "cache": {"prefix_caching": False},
              "scheduler": {"max_num_seqs": BATCH, "max_model_len": args.prompt_len + args.gen + 8},
              "lora": {"enabled": True, "max_loras": BATCH, "max_rank": 16, "max_cpu_loras": 2 * BATCH}}
    llm = LLM(config, progress=False, lora_modules=adapters)
    prompts = bench_prompts(llm.tokenizer, args.prompt_len, BATCH)
    systems = {
        "base": [None] * BATCH,
        "1 adapter": ["a0"] * BATCH,
        "4 adapters": [f"a{i % 4}" for i in range(BATCH)],
        "16 adapters": [f"a{i}" for i in range(BATCH)],
        "16 adapters, q/k/v/o only": [f"q{i}" for i in range(BATCH)],
    }
    for loras in systems.values():  # warm-up: every adapter read once, the kernel built
        decode_steps(llm, prompts, loras, 3)
    rates: dict[str, list[float]] = {name: [] for name in systems}
    steps: dict[str, list[float]] = {name: [] for name in systems}
    for r in range(args.rounds):
        for name, loras in systems.items():
            times = decode_steps(llm, prompts, loras, args.gen)
            rates[name].append(BATCH * len(times) / sum(times))
            steps[name] += times
        print(f"round {r + 1}: " + ", ".join(f"{n} {v[-1]:.1f}" for n, v in rates.items()), flush=True)
    base = statistics.median(rates["base"])
    base_step = statistics.quantiles(steps["base"], n=4)[0]
    result = {
        "model": "SmolLM2-135M-Instruct (default), bfloat16", "batch": BATCH, "prompt_len": args.prompt_len,
        "gen_len": args.gen, "threads": args.threads, "rounds": args.rounds, "rank": 16,
        "targets": "q/k/v/o_proj, gate/up/down_proj (q/k/v/o_proj only where named), all layers", "cpu": platform.processor() or platform.machine(),
        "isa": "avx512_bf16" if "avx512_bf16" in cpu_features() else "avx2",
        "lora_kernel": llm.worker_info()["kernels"], "decode_tok_s": {},
    }
    for name, values in rates.items():
        med = statistics.median(values)
        p25 = statistics.quantiles(steps[name], n=4)[0]
        result["decode_tok_s"][name] = {"median": med, "best": max(values), "rounds": values, "vs_base": med / base,
                                        "step_ms_p25": 1e3 * p25, "step_p25_vs_base": base_step / p25}
    result["load_average"] = [load_start, os.getloadavg()]
    llm.close()
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["decode_tok_s"], indent=2))


if __name__ == "__main__":
    main()
