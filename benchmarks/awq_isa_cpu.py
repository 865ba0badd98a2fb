"""AWQ int4 + int8 LM head decode on each CPU build variant, beside llama.cpp's Q4_1 of the same
GGUF (and with `--bf16`, our bf16 and transformers' bf16): batch 1, the chat prompt, greedy,
same threads, one run.

    python benchmarks/awq_isa_cpu.py [--threads 2] [--rounds 15] [--bf16] [--torch-avx2 --variants avx2]

Systems, all in this one process and timed call by call in turn (the order alternating between
rounds), so that a machine shared with other work slows each of them alike: llm-infer on the
int4 copy of the default model (`llm-infer quantize --method rtn|awq --group-size 64`, made once
under benchmarks/.cache) with `quantization.lm_head: int8`, in bf16, once per build variant this
CPU runs (`native`; `avx2` too on an AVX-512 CPU); and llama.cpp (llama-cpp-python, as built for
this CPU: its AVX-512 kernels on an AVX-512 CPU) on the original Q4_1 GGUF (its head is Q8_0).
`--torch-avx2` holds torch's own kernels to AVX2 (`common.TORCH_AS_ON_AVX2`) for the whole
process, as on an AVX2-only CPU; `--variants` picks the builds of ours.
A round is one timed generation of `--gen-len` tokens per system (decode tok/s = tokens after
the first / time after the first); the figures are medians over rounds, and the median over
rounds of each round's ratio to llama.cpp.
Writes benchmarks/results/awq_isa_cpu.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import CACHE, RESULTS, TORCH_AS_ON_AVX2, chat_prompt_ids  # noqa: E402


def int4_model(method: str) -> Path:
    path = CACHE / f"smollm2-{method}-g64"
    if not (path / "config.json").is_file():
        subprocess.run([sys.executable, "-m", "llm_infer.entrypoints.cli", "quantize", "--model", "default",
                        "--out", str(path), "--group-size", "64", "--method", method], check=True)
    return path


def engine_system(model: Path | str, variant: str, threads: int, gen_len: int, int8_head: bool = True):
    from llm_infer import LLM, SamplingParams

    os.environ["LLM_INFER_CPU_ISA"] = variant  # read when the engine loads its kernels
    config = {"model": str(model), "dtype": "bfloat16", "threads": threads}
    llm = LLM({**config, "quantization": {"lm_head": "int8"}} if int8_head else config, progress=False)
    params = SamplingParams(max_tokens=gen_len, temperature=0, ignore_eos=True)

    def once(prompt: list[int]) -> tuple[float, float]:
        t0 = time.perf_counter()
        out = llm.generate([prompt], params)[0]
        return out.metrics.first_token_time - t0, time.perf_counter() - t0

    return once, llm


def transformers_system(threads: int, gen_len: int):
    """transformers' bf16 model.generate (greedy), timed as benchmarks/compare_cpu.py times it."""
    import torch
    import transformers

    from llm_infer.runtime.models.default_model import ensure_default_model

    model = transformers.AutoModelForCausalLM.from_pretrained(ensure_default_model(), dtype=torch.bfloat16).eval()
    kwargs = dict(do_sample=False, pad_token_id=2)

    def once(prompt: list[int]) -> tuple[float, float]:
        ids = torch.tensor([prompt])
        t0 = time.perf_counter()
        model.generate(ids, max_new_tokens=1, **kwargs)
        ttft = time.perf_counter() - t0
        t0 = time.perf_counter()
        model.generate(ids, max_new_tokens=gen_len, min_new_tokens=gen_len, **kwargs)
        return ttft, time.perf_counter() - t0

    return once, model


def llama_system(threads: int, gen_len: int):
    import llama_cpp

    from llm_infer.runtime.models.default_model import find_default_gguf

    llm = llama_cpp.Llama(model_path=str(find_default_gguf()), n_ctx=1024, n_threads=threads,
                          n_threads_batch=threads, n_batch=512, n_ubatch=512, verbose=False)

    def once(prompt: list[int]) -> tuple[float, float]:
        """One generation of gen_len tokens: (time to its first token, time to its last)."""
        llm.reset()
        t0 = time.perf_counter()
        for i, _ in enumerate(llm.generate(prompt, temp=0.0, top_k=1, reset=True)):
            if i == 0:
                ttft = time.perf_counter() - t0
            if i + 1 == gen_len:
                break
        return ttft, time.perf_counter() - t0

    return once, llm


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--gen-len", type=int, default=64)
    p.add_argument("--method", choices=["awq", "rtn"], default="rtn", help="how the int4 copy is made")
    p.add_argument("--torch-avx2", action="store_true", help="hold torch's own kernels to AVX2")
    p.add_argument("--bf16", action="store_true", help="also our bf16 (each build) and transformers' bf16")
    p.add_argument("--variants", default=None, help="comma-separated builds of ours (default: all this CPU runs)")
    p.add_argument("--out", default=str(RESULTS / "awq_isa_cpu.json"))
    args = p.parse_args()
    if args.torch_avx2:
        os.environ.update(TORCH_AS_ON_AVX2)  # read when torch loads, below
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    import torch

    from llm_infer.kernels.cpu_extension import host_variants, load_cpu_extension

    torch.set_num_threads(args.threads)
    model = int4_model(args.method)
    prompt = chat_prompt_ids()
    systems, keep = {}, []
    for variant in args.variants.split(",") if args.variants else host_variants():
        once, llm = engine_system(model, variant, args.threads, args.gen_len)
        isa = load_cpu_extension(variant).isa_paths()["awq_gemv"]
        systems[f"llm-infer int4 + int8 head, {variant} build ({isa})"] = once
        keep.append(llm)
        if args.bf16:
            once, llm = engine_system("default", variant, args.threads, args.gen_len, int8_head=False)
            systems[f"llm-infer bf16, {variant} build ({load_cpu_extension(variant).isa_paths()['gemv']})"] = once
            keep.append(llm)
    if args.bf16:
        once, hf = transformers_system(args.threads, args.gen_len)
        systems["transformers bf16"] = once
        keep.append(hf)
    try:
        once, llm = llama_system(args.threads, args.gen_len)
        systems["llama.cpp Q4_1 (Q8_0 head)"] = once
        keep.append(llm)
    except ImportError:
        pass
    for once in systems.values():  # warm-up
        once(prompt)
    samples: dict[str, list[dict]] = {name: [] for name in systems}
    for r in range(args.rounds):
        for name in (list(systems) if r % 2 == 0 else list(systems)[::-1]):
            ttft, total = systems[name](prompt)
            samples[name].append({"ttft_s": ttft, "total_s": total,
                                  "decode_tok_s": (args.gen_len - 1) / (total - ttft)})
        print(f"round {r}: " + "  ".join(f"{s[-1]['decode_tok_s']:.1f}" for s in samples.values()), flush=True)
    decode = {name: statistics.median(s["decode_tok_s"] for s in runs) for name, runs in samples.items()}
    llama = decode.get("llama.cpp Q4_1 (Q8_0 head)")
    # each round's systems run back to back: the median of per-round ratios is the steadier figure
    # where other work comes and goes on the machine
    ratios = {name: statistics.median(a["decode_tok_s"] / b["decode_tok_s"]
                                      for a, b in zip(runs, samples["llama.cpp Q4_1 (Q8_0 head)"]))
              for name, runs in samples.items()} if llama else {}
    vs_transformers = {name: statistics.median(a["decode_tok_s"] / b["decode_tok_s"]
                                               for a, b in zip(runs, samples["transformers bf16"]))
                       for name, runs in samples.items()} if args.bf16 else {}
    report = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "threads": args.threads,
              "rounds": args.rounds, "gen_len": args.gen_len, "int4": f"{args.method}, group 64",
              "torch_held_to_avx2": args.torch_avx2, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
              "statistic": "median over rounds", "load_average_after": os.getloadavg(), "decode_tok_s": decode,
              "vs_llama_cpp": {k: v / llama for k, v in decode.items()} if llama else {},
              "vs_llama_cpp_per_round_median": ratios,
              "vs_transformers_per_round_median": vs_transformers, "samples": samples}
    out = Path(args.out)
    out.write_text(json.dumps(report, indent=2))
    for name, v in decode.items():
        print(f"{name:>80}: {v:6.1f} tok/s" + (f"  ({v / llama:.2f}x llama.cpp; per round {ratios[name]:.2f}x)"
                                                  if llama else ""))
    print(f"wrote {out}")
    for llm in keep:
        getattr(llm, "close", lambda: None)()


if __name__ == "__main__":
    main()
