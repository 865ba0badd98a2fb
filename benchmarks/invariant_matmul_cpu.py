"""Our tiled matmul (`linear_invariant`: deterministic mode's matmul for every row count, and
the default mode's for 9..32 rows) against oneDNN (`F.linear`), on the default model's shapes,
in bf16 and fp32. This is the measurement behind `kMaxTiledRows` in cpu_bindings.cpp.

    python benchmarks/invariant_matmul_cpu.py [--threads 2]

For each dtype and row count, both run alternately in one process, 30 times each; medians;
the ratio ours / oneDNN per shape (below 1: ours is faster). Writes
benchmarks/results/invariant_matmul_cpu.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import RESULTS  # noqa: E402

SHAPES = [(576, 576), (3072, 576), (576, 1536), (49152, 576)]  # (N, K): attention, gate/up, down, LM head
ROWS = (9, 16, 24, 32, 48, 64, 128)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=str(RESULTS / "invariant_matmul_cpu.json"))
    args = p.parse_args()
    from llm_infer.kernels.cpu_extension import load_cpu_extension

    torch.set_num_threads(args.threads)
    ext = load_cpu_extension()
    ratios: dict[str, dict[str, dict[str, float]]] = {}
    for dtype in (torch.bfloat16, torch.float32):
        name_of_dtype = str(dtype).removeprefix("torch.")
        ratios[name_of_dtype] = by_rows = {}
        for m in ROWS:
            by_rows[str(m)] = {}
            for n, k in SHAPES:
                w, x = (torch.randn(n, k) * 0.1).to(dtype), torch.randn(m, k).to(dtype)
                times: dict[str, list[float]] = {"onednn": [], "ours": []}
                for r in range(30):
                    for name in ("onednn", "ours") if r % 2 else ("ours", "onednn"):
                        start = time.perf_counter()
                        F.linear(x, w) if name == "onednn" else ext.linear_invariant(x, w, None)
                        times[name].append(time.perf_counter() - start)
                by_rows[str(m)][f"{n}x{k}"] = statistics.median(times["ours"]) / statistics.median(times["onednn"])
            print(f"{name_of_dtype} rows {m:4d}: ours / oneDNN "
                  + "  ".join(f"{s} {r:.2f}" for s, r in by_rows[str(m)].items()))
    Path(args.out).write_text(json.dumps({"threads": args.threads, "statistic": "median of 30",
                                          "ours_over_onednn": ratios}, indent=2) + "\n")


if __name__ == "__main__":
    main()
