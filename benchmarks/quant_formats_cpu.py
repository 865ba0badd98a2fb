"""GPTQ and FP8 on CPU against bf16 and AWQ: the default model (SmolLM2-135M) quantized to each
format with `llm-infer quantize`, decoded on the CPU at batch 1 and 16, with its memory and its
perplexity on the held-out text `benchmarks/awq_cpu.py` uses.

1. Decode tok/s, batch 1 (the chat prompt) and batch 16 (16 prompts decoded together), greedy,
   64 tokens: bf16, AWQ int4 g64, GPTQ int4 g64, GPTQ int8 g64, FP8 block-wise (128 x 128). Every
   system in a fresh process per round, the systems interleaved round by round; medians of rounds.
   Memory: the bytes of the loaded model's tensors (what the format keeps after load) and the
   process's peak RSS.
2. Perplexity on benchmarks/data/heldout.txt, bf16 activations, windows of 512.
3. The FP8 choice on CPU, per layer: the default model's four layer shapes (30 copies each, so
   weights stream from memory), M = 1 and 16 rows: the bf16 GEMV on the weight dequantized at load
   (what runs), dequantizing the fp8 weight on every call, and torch._scaled_mm in fp8 (W8A8
   with one scale per tensor, a lower bound on a block-scaled one).

Checkpoints are made once under benchmarks/.cache (GPTQ and AWQ calibrate on text the model writes
itself, the same seeded text for both).

    python benchmarks/quant_formats_cpu.py [--threads 2] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import CACHE, RESULTS, ROOT, chat_prompt_ids, emit, peak_rss_mb, spawn  # noqa: E402

HELDOUT = ROOT / "benchmarks" / "data" / "heldout.txt"
SHAPES = [(960, 576), (576, 576), (3072, 576), (576, 1536)]  # (out, in) of qkv, o, gate_up, down
MODELS = {  # label -> (cache folder, `llm-infer quantize` arguments); bf16 is the default model itself
    "AWQ int4 g64": ("smollm2-awq-g64", ["--method", "awq", "--group-size", "64"]),
    "GPTQ int4 g64": ("smollm2-gptq-g64", ["--method", "gptq", "--group-size", "64"]),
    "GPTQ int8 g64": ("smollm2-gptq8-g64", ["--method", "gptq", "--bits", "8", "--group-size", "64"]),
    "FP8 block 128": ("smollm2-fp8", ["--method", "fp8"]),
}
PROMPTS = ["Explain KV caching in two sentences.", "Write a haiku about rivers.", "What is a prime number?",
           "List three uses of copper.", "Describe a busy train station.", "How do bees find flowers?",
           "Give one tip for learning a language.", "Why do leaves change colour?", "What does a compiler do?",
           "Name a famous bridge and say why.", "How is bread leavened?", "Explain what an API is.",
           "What causes tides?", "Write a one-line story about a robot.", "How do magnets work?",
           "Suggest a name for a bakery."]


def models(only: list[str] | None) -> dict[str, str]:
    out = {"bf16": "default"}
    for label, (folder, args) in MODELS.items():
        if only and label not in only:
            continue
        path = CACHE / folder
        if not (path / "config.json").is_file():
            print(f"quantizing the default model ({label}, once)...", file=sys.stderr)
            subprocess.run([sys.executable, "-m", "llm_infer.entrypoints.cli", "quantize", "--model", "default",
                            "--out", str(path), *args], check=True)
        out[label] = str(path)
    return out


def model_bytes(model) -> int:
    """Bytes of every tensor the loaded model holds: parameters, buffers, and the kernels' prepared
    forms attached to layers (AWQ's repacked int4, FP8's W8A8 operands)."""
    import dataclasses

    import torch

    seen, total = set(), 0

    def add(t) -> None:
        nonlocal total
        if isinstance(t, torch.Tensor) and t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()

    for module in model.modules():
        for t in [*module.parameters(recurse=False), *module.buffers(recurse=False)]:
            add(t)
        for attr in ("awq", "fp8"):
            prepared = getattr(module, attr, None)
            if dataclasses.is_dataclass(prepared):
                for f in dataclasses.fields(prepared):
                    add(getattr(prepared, f.name))
    return total


def engine_worker(model: str, threads: int, gen_len: int) -> dict:
    from llm_infer import LLM, SamplingParams

    llm = LLM({"model": model, "dtype": "bfloat16", "threads": threads, "scheduler": {"max_num_seqs": 16}},
              progress=False)
    params = SamplingParams(max_tokens=gen_len, temperature=0, ignore_eos=True)
    llm.generate([chat_prompt_ids()], SamplingParams(max_tokens=4, temperature=0))
    result = {}
    batches = {1: [chat_prompt_ids()], 16: [llm.tokenizer.encode_chat([{"role": "user", "content": p}])
                                            for p in PROMPTS]}
    for batch, prompts in batches.items():
        t0 = time.perf_counter()
        outs = llm.generate(prompts, params)
        end = time.perf_counter()
        first = max(o.metrics.first_token_time for o in outs)  # every sequence is decoding from here
        result[f"decode_tok_s_b{batch}"] = batch * (gen_len - 1) / (end - first)
        result[f"ttft_s_b{batch}"] = first - t0
    result["model_mb"] = model_bytes(llm._executor.worker.runner.model) / 2**20
    result["kernels"] = llm.worker_info()["kernels"]
    result["peak_rss_mb"] = peak_rss_mb()
    llm.close()
    return result


def ppl_worker(model: str, threads: int) -> dict:
    from llm_infer import LLM
    from llm_infer.entrypoints.bench import perplexity

    with LLM({"model": model, "dtype": "bfloat16", "threads": threads}, progress=False) as llm:
        return perplexity(llm, HELDOUT.read_text(), 512)


def fp8_micro(threads: int, rounds: int) -> list[dict]:
    import torch
    import torch.nn.functional as F

    from llm_infer.kernels import fp8_torch
    from llm_infer.kernels.cpu_extension import load_cpu_extension

    torch.set_num_threads(threads)
    ext = load_cpu_extension()
    gen = torch.Generator().manual_seed(0)
    weights = []
    for n, k in SHAPES * 30:
        q, blocks = fp8_torch.quantize_weight(torch.randn(n, k, generator=gen) * 0.05)
        rows = fp8_torch.expand_rows(blocks, n, 128)
        weights.append((q, rows, fp8_torch.dequantize(q, rows, 128).bfloat16()))
    linear = ext.linear if ext is not None else F.linear
    one = torch.tensor(1.0)
    out = []
    for m in (1, 16):
        x = {k: torch.randn(m, k, generator=gen).bfloat16() for _, k in SHAPES}
        xq = {k: fp8_torch.quantize_activation(v.float(), 64)[0] for k, v in x.items()}
        cases = {
            "bf16 GEMV, dequantized at load (ours)": lambda: [linear(x[w.shape[1]], w, None) for _, _, w in weights],
            "fp8 kept, dequantized every call": lambda: [
                linear(x[q.shape[1]], fp8_torch.dequantize(q, r, 128).bfloat16(), None) for q, r, _ in weights],
            "torch._scaled_mm fp8 (W8A8, per-tensor)": lambda: [
                torch._scaled_mm(xq[q.shape[1]], q.t(), one, one, out_dtype=torch.bfloat16) for q, _, _ in weights],
        }
        times = {name: [] for name in cases}
        for _ in range(rounds):
            for name, run in cases.items():
                t = time.perf_counter()
                run()
                times[name].append(time.perf_counter() - t)
        for name in cases:
            out.append({"m": m, "case": name, "ms_per_pass": statistics.median(times[name]) * 1e3,
                        "best_ms": min(times[name]) * 1e3})
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--gen-len", type=int, default=64)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--systems", nargs="*", choices=list(MODELS), help="formats to run beside bf16 (default: all)")
    p.add_argument("--out", default=str(RESULTS / "quant_formats_cpu.json"))
    p.add_argument("--worker", choices=["engine", "ppl", "micro"], help=argparse.SUPPRESS)
    p.add_argument("--model", default="default", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker == "engine":
        return emit(engine_worker(args.model, args.threads, args.gen_len))
    if args.worker == "ppl":
        return emit(ppl_worker(args.model, args.threads))
    if args.worker == "micro":
        return emit({"rows": fp8_micro(args.threads, 7)})

    from llm_infer.kernels.cpu_extension import cpu_features, selected_variant

    systems = models(args.systems)
    runs: dict[str, list[dict]] = {label: [] for label in systems}
    for r in range(args.rounds):  # interleaved: machine noise hits every system alike
        for label, model in systems.items():
            print(f"round {r + 1}/{args.rounds}: {label}", file=sys.stderr)
            res = spawn(__file__, ["--worker", "engine", "--model", model, "--threads", str(args.threads),
                                   "--gen-len", str(args.gen_len)], args.threads)
            if res:
                runs[label].append(res)
    decode = []
    for label, rs in runs.items():
        if not rs:
            continue
        row = {"label": label, "rounds": len(rs), "kernels": rs[0]["kernels"], "model_mb": rs[0]["model_mb"],
               "peak_rss_mb": statistics.median(r["peak_rss_mb"] for r in rs)}
        for key in ("decode_tok_s_b1", "decode_tok_s_b16", "ttft_s_b1", "ttft_s_b16"):
            row[key] = statistics.median(r[key] for r in rs)
        decode.append(row)
    quality = []
    for label, model in systems.items():
        res = spawn(__file__, ["--worker", "ppl", "--model", model, "--threads", str(args.threads)], args.threads)
        if res:
            quality.append({"label": label, **res})
    micro = spawn(__file__, ["--worker", "micro", "--threads", str(args.threads)], args.threads)
    features = cpu_features()
    report = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "threads": args.threads,
              "cpu_isa": {"variant": selected_variant(), "avx512_bf16": "avx512_bf16" in features,
                          "avx512_vnni": "avx512_vnni" in features, "amx": "amx_tile" in features},
              "gen_len": args.gen_len, "rounds": args.rounds, "statistic": "median of rounds",
              "decode": decode, "perplexity": quality, "fp8_layer_micro": micro["rows"] if micro else []}
    by = {r["label"]: r for r in decode}
    for base, other in (("AWQ int4 g64", "GPTQ int4 g64"), ("bf16", "FP8 block 128"), ("bf16", "GPTQ int8 g64")):
        if base in by and other in by:
            report[f"{other} vs {base}"] = {f"b{b}": by[other][f"decode_tok_s_b{b}"] / by[base][f"decode_tok_s_b{b}"]
                                            for b in (1, 16)}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    ppl = {r["label"]: r["perplexity"] for r in quality}
    for r in decode:
        print(f"{r['label']:>16}: b1 {r['decode_tok_s_b1']:6.1f} tok/s  b16 {r['decode_tok_s_b16']:7.1f} tok/s  "
              f"model {r['model_mb']:6.1f} MB  rss {r['peak_rss_mb']:6.0f} MB  ppl {ppl.get(r['label'], float('nan')):.3f}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
