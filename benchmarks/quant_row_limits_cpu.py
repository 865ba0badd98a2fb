"""Where the quantized weights' streamed kernels stop paying: the AWQ int4 GEMV (W4A8, bf16
activations) and the int8 LM head against dequantising + oneDNN, at growing row counts, for one
build variant. The crossover is what `kMaxAwqGemvRows` / `kMaxInt8GemvRows` in cpu_bindings.cpp
are set from.

    LLM_INFER_CPU_ISA=avx2 ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 \\
        python benchmarks/quant_row_limits_cpu.py [--threads 2]

AWQ: the default model's four layer shapes (qkv, o, gate_up, down; group 64), 30 copies each so
the weights stream from memory as in a decode step; int8: its 49,152 x 576 head; bf16
activations (`--dtype float32`: the fp32 paths). Above the build's current limit the kernels
would dequantise themselves, so the streamed side runs in chunks of the limit (the weights
stream once per 2-4 rows inside a call anyway). On an AVX-512 machine the two
environment variables above keep oneDNN and ATen to AVX2, as on the CPUs the AVX2 build is for.
Interleaved rounds, medians (and minima) in ms. Writes
benchmarks/results/quant_row_limits_cpu-<variant>-<dtype>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import RESULTS  # noqa: E402

SHAPES = [(960, 576), (576, 576), (3072, 576), (576, 1536)]
GROUP, COPIES = 64, 30
HEAD = (49152, 576)
AWQ_ROWS = (1, 4, 8, 16, 24, 32, 48, 64, 96, 128, 256, 512)
INT8_ROWS = (1, 16, 64, 128, 256, 384, 512)


def chunked(op, x: torch.Tensor, most: int) -> None:
    for i in range(0, x.shape[0], most):
        op(x[i:i + most])


def measure(cases: dict, rounds: int) -> dict[str, dict[str, float]]:
    times: dict[str, list[float]] = {name: [] for name in cases}
    for r in range(rounds):
        for name in (list(cases) if r % 2 else list(cases)[::-1]):
            start = time.perf_counter()
            cases[name]()
            times[name].append(time.perf_counter() - start)
    return {name: {"median_ms": 1e3 * statistics.median(t), "min_ms": 1e3 * min(t)} for name, t in times.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--dtype", choices=["bfloat16", "float32"], default="bfloat16", help="activations")
    p.add_argument("--copies", type=int, default=COPIES, help="copies of each AWQ layer shape")
    p.add_argument("--awq-rows", type=int, nargs="*", default=list(AWQ_ROWS))
    p.add_argument("--int8-rows", type=int, nargs="*", default=list(INT8_ROWS))
    p.add_argument("--out", default=None)
    args = p.parse_args()
    dtype = getattr(torch, args.dtype)
    from llm_infer.kernels.awq_torch import pack_awq, repack_for_cpu
    from llm_infer.kernels.cpu_extension import load_cpu_extension, selected_variant

    torch.set_num_threads(args.threads)
    ext = load_cpu_extension()
    limits = ext.row_limits()
    gen = torch.Generator().manual_seed(0)
    awq = []
    for n, k in SHAPES * args.copies:
        qw = pack_awq(torch.randint(0, 16, (k, n), generator=gen))
        qz = pack_awq(torch.randint(0, 16, (k // GROUP, n), generator=gen))
        awq.append(repack_for_cpu(qw, qz, (torch.rand(k // GROUP, n, generator=gen) * 0.01).half(), GROUP))
    w8 = torch.randint(-127, 128, HEAD, dtype=torch.int8, generator=gen)
    s8 = torch.rand(HEAD[0], generator=gen) * 0.01

    def awq_tiles(x):
        for a in awq:
            chunked(lambda xs: ext.awq_linear(xs, a.packed, a.scales_nk, a.zeros_nk, GROUP, None),
                    x[a.packed.shape[1] * 2], limits["awq_linear"])

    def awq_onednn(x):
        for a in awq:
            F.linear(x[a.packed.shape[1] * 2], ext.awq_dequantize(a.packed, a.scales_nk, a.zeros_nk, GROUP, dtype))

    rows: dict[str, list[dict]] = {"awq_int4": [], "int8_head": []}
    for m in args.awq_rows:
        x = {k: torch.randn(m, k, generator=gen).to(dtype) for _, k in SHAPES}
        r = measure({"tiles": lambda: awq_tiles(x), "dequantise + oneDNN": lambda: awq_onednn(x)}, args.rounds)
        rows["awq_int4"].append({"rows": m, **r})
        print(f"AWQ  rows {m:4d}: " + "  ".join(f"{k} {v['median_ms']:8.2f} ms" for k, v in r.items()), flush=True)
    for m in args.int8_rows:
        x = torch.randn(m, HEAD[1], generator=gen).to(dtype)
        r = measure({"tiles": lambda: chunked(lambda xs: ext.int8_linear(xs, w8, s8), x, limits["int8_linear"]),
                     "dequantise + oneDNN": lambda: F.linear(x, (w8.float() * s8[:, None]).to(x.dtype))},
                    args.rounds)
        rows["int8_head"].append({"rows": m, **r})
        print(f"int8 rows {m:4d}: " + "  ".join(f"{k} {v['median_ms']:8.2f} ms" for k, v in r.items()), flush=True)
    crossover = {name: max((r["rows"] for r in rs if r["tiles"]["median_ms"] <= r["dequantise + oneDNN"]["median_ms"]),
                           default=0) for name, rs in rows.items()}
    variant = selected_variant()
    report = {"variant": variant, "isa_paths": ext.isa_paths(), "row_limits_of_this_build": limits,
              "threads": args.threads, "rounds": args.rounds, "dtype": args.dtype,
              "statistic": "median (and min) of rounds, ms",
              "env": {k: os.environ.get(k) for k in ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY")},
              "cpu_capability": torch.backends.cpu.get_cpu_capability(),
              "awq_shapes": SHAPES, "awq_copies": args.copies, "int8_head": HEAD, "rows": rows,
              "largest_rows_where_tiles_win": crossover}
    out = Path(args.out or RESULTS / f"quant_row_limits_cpu-{variant}-{args.dtype}.json")
    out.write_text(json.dumps(report, indent=2))
    print(f"tiles win up to: {crossover}; wrote {out}")


if __name__ == "__main__":
    main()
