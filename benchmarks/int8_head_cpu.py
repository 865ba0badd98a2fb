"""The int8 LM head (`quantization.lm_head: int8`) at the row counts decode and speculation
give it: our streamed int8 tiles against dequantising to bf16 + oneDNN (what the kernel does
above `kMaxInt8GemvRows`), with the bf16 head through our matmul as the reference point.

    python benchmarks/int8_head_cpu.py [--threads 2]

The default model's head (49,152 x 576), bf16 activations, each variant alternately 15 times
per row count in one process; medians in ms. Writes benchmarks/results/int8_head_cpu.json.
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

ROWS = (1, 4, 8, 16, 32, 64, 128, 256)
N, K = 49152, 576


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=str(RESULTS / "int8_head_cpu.json"))
    args = p.parse_args()
    from llm_infer.kernels.cpu_extension import load_cpu_extension

    torch.set_num_threads(args.threads)
    ext = load_cpu_extension()
    g = torch.Generator().manual_seed(0)
    w8 = torch.randint(-127, 128, (N, K), dtype=torch.int8, generator=g)
    scales = torch.rand(N, generator=g) * 0.01
    w16 = (w8.float() * scales[:, None]).bfloat16()
    variants = {
        "int8 tiles": lambda x: ext.int8_linear(x, w8, scales),
        "int8 dequantise + oneDNN": lambda x: F.linear(x, (w8.float() * scales[:, None]).to(x.dtype)),
        "bf16 head": lambda x: ext.linear(x, w16, None),
    }
    ms: dict[str, dict[str, float]] = {}
    for m in ROWS:
        x = torch.randn(m, K, generator=g).bfloat16()
        times: dict[str, list[float]] = {name: [] for name in variants}
        for r in range(15):
            for name in (list(variants) if r % 2 else list(variants)[::-1]):
                start = time.perf_counter()
                variants[name](x)
                times[name].append(time.perf_counter() - start)
        ms[str(m)] = {name: 1e3 * statistics.median(t) for name, t in times.items()}
        print(f"rows {m:4d}: " + "  ".join(f"{name} {v:7.2f} ms" for name, v in ms[str(m)].items()))
    Path(args.out).write_text(json.dumps({"shape": [N, K], "threads": args.threads, "statistic": "median of 15",
                                          "ms": ms}, indent=2) + "\n")


if __name__ == "__main__":
    main()
