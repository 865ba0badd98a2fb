"""Our tiled matmul (`linear_invariant`: the decode GEMV up to 8 rows, then the same tiles blocked
over rows; deterministic mode's matmul for every row count, the default mode's up to
`ext.row_limits()`) against torch's (`F.linear`: oneDNN in bf16, MKL in fp32), side by side on
the default model's shapes (SmolLM2-135M) and a 0.5B model's (hidden 896, intermediate 4864),
in bf16 and fp32, for row counts 1..128. This is the measurement behind `kMaxTiledRows*` in
cpu_bindings.cpp, one pair per instruction-set path.

    python benchmarks/invariant_matmul_cpu.py [--isa native|avx2] [--threads 2]

`--isa avx2` measures the AVX2 build (`LLM_INFER_CPU_ISA=avx2`). On a CPU with AVX-512, torch is
then capped to what an AVX2-only CPU would run (ONEDNN_MAX_CPU_ISA=AVX2,
MKL_ENABLE_INSTRUCTIONS=AVX2, ATEN_CPU_CAPABILITY=avx2: without AVX-512 torch's bf16 matmul is
not oneDNN's but ATen's own), unless `--torch-uncapped`. For each dtype, row count and shape both
run alternately in one process (medians of up to --repeat runs each, fewer for the slowest
cells); the ratio ours / torch per shape (below 1: ours is faster), and the most rows up to which
ours is never slower. Above 128 rows (--big-rows) only the default model's layers, not its head.
Writes benchmarks/results/invariant_matmul_cpu[_avx2].json.
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import RESULTS, rerun_as_on_avx2  # noqa: E402

# (N, K) of each matmul: qkv (merged), o, gate_up (merged), down, LM head.
SHAPES = {"default": [(960, 576), (576, 576), (3072, 576), (576, 1536), (49152, 576)],
          "0.5B": [(1152, 896), (896, 896), (9728, 896), (896, 4864)]}
ROWS = (1, 2, 3, 4, 6, 8, 9, 12, 16, 24, 32, 48, 64, 96, 128)
BIG_ROWS = (256, 512, 2048)  # prefill steps (max_num_batched_tokens 2048): the default model's layers only


def measure(ext, dtype, m: int, n: int, k: int, repeat: int, budget_s: float) -> tuple[float, float]:
    import torch
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(m * 100003 + n + k)
    w, x = (torch.randn(n, k, generator=g) * 0.1).to(dtype), torch.randn(m, k, generator=g).to(dtype)
    times: dict[str, list[float]] = {"torch": [], "ours": []}
    start_all = time.perf_counter()
    for r in range(repeat):
        for name in ("torch", "ours") if r % 2 else ("ours", "torch"):
            start = time.perf_counter()
            F.linear(x, w) if name == "torch" else ext.linear_invariant(x, w, None)
            times[name].append(time.perf_counter() - start)
        if r >= 4 and time.perf_counter() - start_all > budget_s:
            break
    return statistics.median(times["ours"]), statistics.median(times["torch"])


def run(args: argparse.Namespace) -> None:
    import torch

    from llm_infer.kernels.cpu_extension import load_cpu_extension

    torch.set_num_threads(args.threads)
    ext = load_cpu_extension(args.isa)
    rows = [int(r) for r in args.rows.split(",")]
    big_rows = [int(r) for r in args.big_rows.split(",") if r]
    models = args.models.split(",")
    report: dict = {"isa_path": ext.isa_paths()["gemv"], "build": args.isa, "threads": args.threads,
                    "torch": torch.__version__, "torch_capped_to": "AVX2" if args.torch_capped else "this CPU",
                    "cpu": platform.processor() or platform.machine(), "statistic": f"median of <= {args.repeat}",
                    "row_limits_in_build": ext.row_limits(), "us": {}, "ours_over_torch": {},
                    "ours_never_slower_up_to": {}}
    print(f"build {args.isa} ({report['isa_path']}), {args.threads} threads, torch {torch.__version__} "
          f"held to {report['torch_capped_to']}; ours / torch per shape (N x K), medians")
    for dtype in (torch.bfloat16, torch.float32):
        name = str(dtype).removeprefix("torch.")
        us = report["us"][name] = {}
        ratios = report["ours_over_torch"][name] = {}
        for m in rows + big_rows:
            us[str(m)], ratios[str(m)] = {}, {}
            for model in models if m in rows else ["default"]:
                for n, k in SHAPES[model] if m in rows else SHAPES["default"][:-1]:
                    if args.shapes and f"{n}x{k}" not in args.shapes.split(","):
                        continue
                    ours, theirs = measure(ext, dtype, m, n, k, args.repeat, args.budget)
                    key = f"{model} {n}x{k}"
                    us[str(m)][key] = {"ours": ours * 1e6, "torch": theirs * 1e6}
                    ratios[str(m)][key] = ours / theirs
            print(f"{name:8s} rows {m:3d}: " + "  ".join(f"{s.split()[1]} {r:.2f}" for s, r in ratios[str(m)].items()),
                  flush=True)
        never_slower = 0
        for m in rows + big_rows:
            if max(ratios[str(m)].values()) > 1.0:
                break
            never_slower = m
        report["ours_never_slower_up_to"][name] = never_slower
        print(f"{name}: ours is never slower up to {never_slower} rows (of those measured)")
    out = Path(args.out or RESULTS / f"invariant_matmul_cpu{'' if args.isa == 'native' else '_' + args.isa}.json")
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--isa", default=os.environ.get("LLM_INFER_CPU_ISA", "native"), choices=["native", "avx2"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rows", default=",".join(map(str, ROWS)))
    p.add_argument("--models", default="default,0.5B")
    p.add_argument("--shapes", default=None, help="only these of the models' shapes, e.g. 3072x576,576x1536")
    p.add_argument("--big-rows", default=",".join(map(str, BIG_ROWS)), help="'' for none")
    p.add_argument("--repeat", type=int, default=21)
    p.add_argument("--budget", type=float, default=3.0, help="seconds per cell after 5 runs of each")
    p.add_argument("--torch-uncapped", action="store_true", help="--isa avx2: torch as this CPU runs it")
    p.add_argument("--out", default=None)
    p.add_argument("--torch-capped", action="store_true", help=argparse.SUPPRESS)  # set by the re-run
    args = p.parse_args()
    if args.isa == "avx2" and not args.torch_uncapped:
        rerun_as_on_avx2(args.threads)  # torch reads its caps when it loads
    run(args)


if __name__ == "__main__":
    main()
