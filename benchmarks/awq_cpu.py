"""AWQ int4 on CPU: the int4 matmul against bf16/fp32, end-to-end decode against bf16 and
llama.cpp's Q4_1 (same machine, same threads, one run), and the quality cost.

1. Micro-benchmark: y = x W^T for the default model's four layer shapes (30 copies of each,
   so weights stream from memory as in a decode step), M = 1..16 activation rows. Achieved
   GB/s counts the bytes of the weight format read (int4 + scales + zeros; bf16; fp32).
2. Decode tok/s, batch 1, the chat prompt, 64 greedy tokens, medians: SmolLM2 in bf16 and
   in AWQ int4 (made by `llm-infer quantize`, group 64), each with the LM head as loaded and
   int8, and llama.cpp on the original Q4_1 GGUF (its LM head is Q8_0). Subprocess each.
3. Perplexity on benchmarks/data/heldout.txt: bf16, AWQ int4 (bf16 activations: W4A8;
   fp32 activations: exact int4), and round-to-nearest int4 with the same groups.

    python benchmarks/awq_cpu.py
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

from tqdm import tqdm  # noqa: E402

from benchmarks.common import CACHE, RESULTS, ROOT, bar_chart, emit, spawn, time_engine, time_llama_cpp  # noqa: E402

SHAPES = [(960, 576), (576, 576), (3072, 576), (576, 1536)]  # (out, in) of qkv, o, gate_up, down
GROUP = 64  # SmolLM2's 576 hidden is not a multiple of 128
HELDOUT = ROOT / "benchmarks" / "data" / "heldout.txt"


def quantized_models() -> dict[str, Path]:
    """AWQ and RTN int4 copies of the default model, made once under benchmarks/.cache."""
    out = {"awq": CACHE / "smollm2-awq-g64", "rtn": CACHE / "smollm2-rtn-g64"}
    for method, path in out.items():
        if not (path / "config.json").is_file():
            print(f"quantizing the default model ({method}, once)...", file=sys.stderr)
            subprocess.run([sys.executable, "-m", "llm_infer.entrypoints.cli", "quantize", "--model", "default",
                            "--out", str(path), "--group-size", str(GROUP), "--method", method], check=True)
    return out


def micro(threads: int, rounds: int) -> list[dict]:
    import torch

    from llm_infer.kernels.awq_torch import pack_awq, repack_for_cpu
    from llm_infer.kernels.cpu_extension import load_cpu_extension

    torch.set_num_threads(threads)
    ext = load_cpu_extension()
    gen = torch.Generator().manual_seed(0)
    dense32 = [torch.randn(n, k, generator=gen) for _ in range(30) for n, k in SHAPES]
    dense16 = [w.to(torch.bfloat16) for w in dense32]
    awq = []
    for n, k in SHAPES * 30:
        qw = pack_awq(torch.randint(0, 16, (k, n), generator=gen))
        qz = pack_awq(torch.randint(0, 16, (k // GROUP, n), generator=gen))
        awq.append(repack_for_cpu(qw, qz, (torch.rand(k // GROUP, n, generator=gen) * 0.01).half(), GROUP))
    int4pack = [torch.ops.aten._convert_weight_to_int4pack_for_cpu(torch.randint(0, 16, (n, k), dtype=torch.int32), 2)
                for n, k in SHAPES * 30]
    sz = {(n, k): torch.randn(k // GROUP, n, 2, dtype=torch.bfloat16) for n, k in SHAPES}
    bytes_of = {"fp32": sum(w.numel() * 4 for w in dense32), "bf16": sum(w.numel() * 2 for w in dense16),
                "int4": sum(a.packed.numel() + a.scales_nk.numel() * 5 for a in awq)}
    rows = []
    for m in tqdm([1, 2, 4, 8, 16], desc="micro-benchmark"):
        x32 = {k: torch.randn(m, k, generator=gen) for _, k in SHAPES}
        x16 = {k: v.to(torch.bfloat16) for k, v in x32.items()}
        cases = {
            "torch fp32 (F.linear)": ("fp32", lambda: [torch.nn.functional.linear(x32[w.shape[1]], w) for w in dense32]),
            "torch bf16 (F.linear)": ("bf16", lambda: [torch.nn.functional.linear(x16[w.shape[1]], w) for w in dense16]),
            "llm-infer bf16 GEMV": ("bf16", lambda: [ext.linear(x16[w.shape[1]], w, None) for w in dense16]),
            "torch int4pack (bf16)": ("int4", lambda: [
                torch.ops.aten._weight_int4pack_mm_for_cpu(x16[k], p, GROUP, sz[(n, k)])
                for p, (n, k) in zip(int4pack, SHAPES * 30)]),
            "llm-infer int4 W4A8 (bf16)": ("int4", lambda: [
                ext.awq_linear(x16[a.packed.shape[1] * 2], a.packed, a.scales_nk, a.zeros_nk, GROUP, None) for a in awq]),
            "llm-infer int4 exact (fp32)": ("int4", lambda: [
                ext.awq_linear(x32[a.packed.shape[1] * 2], a.packed, a.scales_nk, a.zeros_nk, GROUP, None) for a in awq]),
        }
        times = {name: [] for name in cases}
        for _ in range(rounds):  # interleaved, so machine noise hits every case alike
            for name, (_, run) in cases.items():
                t = time.perf_counter()
                run()
                times[name].append(time.perf_counter() - t)
        for name, (fmt, _) in cases.items():
            med = statistics.median(times[name])
            rows.append({"m": m, "kernel": name, "ms_per_pass": med * 1e3, "best_ms": min(times[name]) * 1e3,
                         "weight_bytes": bytes_of[fmt], "gb_s": bytes_of[fmt] / med / 1e9})
    return rows


def worker(args: argparse.Namespace) -> None:
    if args.worker == "llama_cpp":
        from llm_infer.runtime.models.default_model import find_default_gguf

        emit(time_llama_cpp(str(find_default_gguf()), args.n_batch, args.threads, args.gen_len, args.repeat))
    elif args.worker == "engine":
        cfg = {"model": args.model, "dtype": "bfloat16", "threads": args.threads,
               "quantization": {"lm_head": args.lm_head or None}}
        emit(time_engine(cfg, args.gen_len, args.repeat))
    elif args.worker == "ppl":
        from llm_infer import LLM
        from llm_infer.entrypoints.bench import perplexity

        with LLM({"model": args.model, "dtype": args.dtype, "threads": args.threads}, progress=False) as llm:
            emit(perplexity(llm, HELDOUT.read_text(), 512))
    else:
        emit({"rows": micro(args.threads, args.rounds)})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--gen-len", type=int, default=64)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--rounds", type=int, default=7, help="micro-benchmark rounds")
    p.add_argument("--out", default=str(RESULTS / "awq_cpu.json"))
    p.add_argument("--worker", choices=["micro", "engine", "llama_cpp", "ppl"], help=argparse.SUPPRESS)
    p.add_argument("--model", default="default", help=argparse.SUPPRESS)
    p.add_argument("--lm-head", default="", help=argparse.SUPPRESS)
    p.add_argument("--dtype", default="bfloat16", help=argparse.SUPPRESS)
    p.add_argument("--n-batch", type=int, default=512, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)

    models = quantized_models()
    common = ["--threads", str(args.threads), "--gen-len", str(args.gen_len), "--repeat", str(args.repeat)]
    micro_rows = spawn(__file__, ["--worker", "micro", "--rounds", str(args.rounds), *common], args.threads)
    decode = []
    systems = [("llm-infer bf16", "default", ""), ("llm-infer bf16, int8 head", "default", "int8"),
               ("llm-infer AWQ int4", str(models["awq"]), ""), ("llm-infer AWQ int4, int8 head", str(models["awq"]), "int8")]
    for label, model, head in tqdm(systems, desc="decode"):
        r = spawn(__file__, ["--worker", "engine", "--model", model, "--lm-head", head, *common], args.threads)
        if r:
            decode.append({"label": label, **r})
    try:
        import llama_cpp  # noqa: F401

        r = (spawn(__file__, ["--worker", "llama_cpp", "--n-batch", "512", *common], args.threads)
             or spawn(__file__, ["--worker", "llama_cpp", "--n-batch", "1", *common], args.threads))
        if r:
            decode.append({"label": f"llama.cpp Q4_1 (Q8_0 head, n_batch={r['n_batch']})", **r})
    except ImportError:
        pass
    quality = []
    for label, model, dtype in tqdm([("bf16", "default", "bfloat16"), ("AWQ int4, bf16 (W4A8)", models["awq"], "bfloat16"),
                                     ("AWQ int4, fp32 (exact)", models["awq"], "float32"),
                                     ("RTN int4, bf16 (W4A8)", models["rtn"], "bfloat16")], desc="perplexity"):
        r = spawn(__file__, ["--worker", "ppl", "--model", str(model), "--dtype", dtype, "--threads", str(args.threads)])
        if r:
            quality.append({"label": label, **r})
    report = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "threads": args.threads,
              "group_size": GROUP, "gen_len": args.gen_len, "repeat": args.repeat, "statistic": "median",
              "micro": micro_rows["rows"] if micro_rows else [], "decode": decode, "perplexity": quality}
    by = {r["label"]: r["decode_tok_s"] for r in decode}
    if "llm-infer bf16" in by and "llm-infer AWQ int4" in by:
        report["int4_vs_bf16_decode"] = by["llm-infer AWQ int4"] / by["llm-infer bf16"]
    llama = next((v for k, v in by.items() if k.startswith("llama.cpp")), None)
    if llama and "llm-infer AWQ int4, int8 head" in by:
        report["int4_int8_head_vs_llama_cpp_decode"] = by["llm-infer AWQ int4, int8 head"] / llama
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    m1 = [r for r in report["micro"] if r["m"] == 1]
    bar_chart(out.with_suffix(".png"), f"SmolLM2-135M on CPU, {args.threads} threads", [
        ("decode, batch 1 (tok/s)", [r["label"] for r in decode], [r["decode_tok_s"] for r in decode], "%.0f"),
        ("layer matmuls, M=1 (GB/s of weights)", [r["kernel"] for r in m1], [r["gb_s"] for r in m1], "%.1f"),
        ("perplexity, held-out text", [r["label"] for r in quality], [r["perplexity"] for r in quality], "%.2f"),
    ])
    for r in decode:
        print(f"{r['label']:>44}: decode {r['decode_tok_s']:6.1f} tok/s  TTFT {r['ttft_s'] * 1e3:6.1f} ms")
    for r in quality:
        print(f"{r['label']:>44}: perplexity {r['perplexity']:.3f}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
