"""GPU section: the Triton AWQ int4 kernels (`llm_infer/kernels/triton/awq_{gemv,gemm,linear}.py`)
against the old CUDA extension (`ext.awq_linear`) and cuBLAS bf16 on a dense weight of the same shape.

For the Qwen2-1.5B and Qwen2.5-7B linear layers (group 128, bf16 activations), in this order until
`budget_s` is spent (a measurement already started finishes):
1. every shape at M = 1, 8, 16, 32, 64, 128, 256: ours at the committed TILES choice (checked
   against the fp32 dequantized product and for bitwise repeatability before it is timed), the
   CUDA extension, and cuBLAS (`F.linear`, bf16 weight = the same dequantized int4 weight);
2. every candidate tile of each shape class (M = 1, 8, 16, 32, 64, 128, 256 in that order), each
   checked, on every shape of the class; the winner per class minimises the summed time over the
   class's shapes and is printed as a `TILES` line to commit (`tiles_py`).
Times are CUDA-graph replays (`benchmarks/gpu_timing.py`) rotating over weight copies that together
exceed the L2. `pct_bw` counts the bytes a call must move (its weight format: int4 + scales + zeros
for ours and the extension, bf16 for cuBLAS; plus x, y and bias) as a percentage of the measured
copy bandwidth `peak_bytes_per_s`; `vs_cublas` is our time over cuBLAS's (goal: <= 0.5 at M = 16-64,
<= 1.0 at M = 128-256; GEMV goal: pct_bw >= 75 at M = 1 and >= 60 at M = 8). Nothing runs at import.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from benchmarks.gpu_timing import copies_to_exceed_l2, graph_time, pct_of_bandwidth

# (name, K, N, has bias): a layer's AutoAWQ qweight is [K, N/8]
SHAPES = [
    ("qwen2-1.5b qkv", 1536, 2048, True), ("qwen2-1.5b o", 1536, 1536, False),
    ("qwen2-1.5b gate_up", 1536, 17920, False), ("qwen2-1.5b down", 8960, 1536, False),
    ("qwen2.5-7b qkv", 3584, 4608, True), ("qwen2.5-7b o", 3584, 3584, False),
    ("qwen2.5-7b gate_up", 3584, 37888, False), ("qwen2.5-7b down", 18944, 3584, False),
]
MS = [1, 8, 16, 32, 64, 128, 256]
GROUP = 128
DTYPE = torch.bfloat16
DEVICE = "cuda"  # the tests smoke-run() on "cpu" under the interpreter with a fake timer
CHECK_TOL = 2.0**-7  # max |ours - fp32| / max|fp32| accepted before a tile is timed (bf16 rounding is 2^-8)


def _module(m: int):
    from llm_infer.kernels.triton import awq_gemm, awq_gemv

    return awq_gemv if m <= awq_gemv.MAX_M else awq_gemm


def _classes(m: int) -> dict[str, list[tuple]]:
    classes: dict[str, list[tuple]] = {}
    for shape in SHAPES:
        classes.setdefault(_module(m).shape_class(m, shape[2], shape[1]), []).append(shape)
    return classes


def _class_candidates(m: int, shapes: list[tuple]) -> list:
    found: list = []
    for _, k, n, _ in shapes:
        found += [t for t in _module(m).candidates(m, n, k) if t not in found]
    return found


def plan() -> dict:
    """What run() would measure (no CUDA needed)."""
    classes = {m: _classes(m) for m in MS}
    return {
        "shapes": [[k, n] for _, k, n, _ in SHAPES], "names": [s[0] for s in SHAPES], "m": MS, "group": GROUP,
        "dtype": str(DTYPE), "impls": ["triton (TILES)", "cuda_ext awq_linear", "cublas bf16"],
        "shape_classes": {str(m): {key: [s[0] for s in shapes] for key, shapes in classes[m].items()} for m in MS},
        "candidates": sum(len(_class_candidates(m, shapes)) * len(shapes)
                          for m in MS for shapes in classes[m].values()),
        "order": ["TILES choice + cuda_ext + cublas, every shape and M", f"candidate sweep per class, M in {MS}"],
    }


class _Layer:
    """One shape's weights: rotating copies (together past the L2) in our layout, AutoAWQ's and bf16."""

    def __init__(self, k: int, n: int, bias: bool, baselines: bool = True, seed: int = 0):
        from llm_infer.kernels.awq_torch import dequantize_awq, pack_awq
        from llm_infer.kernels.triton.awq_pack import repack_for_triton

        g = torch.Generator(device=DEVICE).manual_seed(seed)
        qweight = pack_awq(torch.randint(0, 16, (k, n), device=DEVICE, generator=g))
        qzeros = pack_awq(torch.randint(0, 16, (k // GROUP, n), device=DEVICE, generator=g))
        scales = (torch.rand(k // GROUP, n, device=DEVICE, generator=g) * (2.0 / k**0.5) / 15).half()
        self.k, self.n = k, n
        self.W = dequantize_awq(qweight, qzeros, scales, GROUP)  # fp32 [N, K]: the truth's weight
        self.bias = torch.randn(n, device=DEVICE, generator=g).to(DTYPE) if bias else None
        groups = k // GROUP * n
        self.bytes = {"ours": k * n // 2 + 3 * groups, "ext": k * n // 2 + 2 * groups + groups // 2,
                      "cublas": 2 * k * n}
        one = repack_for_triton(qweight, qzeros, scales, GROUP)
        self.ours = [one] + [type(one)(GROUP, q4=one.q4.clone(), s_gn=one.s_gn.clone(), z_gn=one.z_gn.clone())
                             for _ in range(copies_to_exceed_l2(self.bytes["ours"]) - 1)]
        self.ext: list[tuple] = []
        self.dense: list[torch.Tensor] = []
        if baselines:
            self.ext = [(qweight, qzeros, scales)] + [(qweight.clone(), qzeros.clone(), scales.clone())
                                                      for _ in range(copies_to_exceed_l2(self.bytes["ext"]) - 1)]
            dense = self.W.to(DTYPE)
            self.dense = [dense] + [dense.clone() for _ in range(copies_to_exceed_l2(self.bytes["cublas"]) - 1)]

    def inputs(self, m: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(x, out, fp32 truth) for M = m."""
        g = torch.Generator(device=DEVICE).manual_seed(seed)
        x = torch.randn(m, self.k, device=DEVICE, generator=g).to(DTYPE)
        truth = x.float() @ self.W.T
        if self.bias is not None:
            truth += self.bias.float()
        return x, torch.empty(m, self.n, device=DEVICE, dtype=DTYPE), truth

    def moved(self, impl: str, m: int) -> int:
        return self.bytes[impl] + 2 * m * (self.k + self.n) + (2 * self.n if self.bias is not None else 0)


def _ours(layer: _Layer, m: int, tile, x, out, truth) -> tuple[float, dict]:
    """Seconds per call at `tile`, after a correctness and repeatability check."""
    from llm_infer.kernels.triton.awq_gemm import awq_gemm
    from llm_infer.kernels.triton.awq_gemv import MAX_M, awq_gemv

    kernel = awq_gemv if m <= MAX_M else awq_gemm

    def call(i: int):
        return kernel(x, layer.ours[i], layer.bias, out, tile=tile)

    first = call(0).clone()
    second = call(0).clone()
    err = ((first.float() - truth).abs().max() / truth.abs().max()).item()
    check = {"rel_err": round(err, 6), "repeatable": bool(torch.equal(first, second))}
    if not err <= CHECK_TOL or not check["repeatable"]:
        return float("nan"), check
    return graph_time(call, len(layer.ours)), check


def _row(layer: _Layer, impl: str, m: int, seconds: float, peak: float) -> dict:
    return {"us": round(seconds * 1e6, 2), "pct_bw": round(pct_of_bandwidth(layer.moved(impl, m), seconds, peak), 1)}


def _free() -> None:
    if DEVICE == "cuda":
        torch.cuda.empty_cache()


def run(peak_bytes_per_s: float, budget_s: float) -> dict:
    if DEVICE == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("benchmarks/gpu_sections/awq.py needs a CUDA device (plan() describes it)")
    from llm_infer.kernels.cuda_extension import load_cuda_extension

    start = time.monotonic()
    peak = peak_bytes_per_s
    report: dict = {"peak_gb_s": round(peak / 1e9, 1), "budget_s": budget_s, "rows": [], "sweep": [],
                    "tiles_py": [], "skipped": []}
    ext = load_cuda_extension(torch.cuda.current_device()) if DEVICE == "cuda" else None
    if ext is None:
        report["skipped"].append("cuda_ext: the CUDA extension did not build")

    def out_of_time(what: str) -> bool:
        if time.monotonic() - start < budget_s:
            return False
        report["skipped"].append(what)
        return True

    # 1. TILES choice vs the CUDA extension vs cuBLAS
    for name, k, n, bias in SHAPES:
        if out_of_time(f"{name}: every M"):
            continue
        layer = _Layer(k, n, bias)
        for m in MS:
            if out_of_time(f"{name} M={m}"):
                break
            x, out, truth = layer.inputs(m)
            tile = _module(m).TILES[_module(m).shape_class(m, n, k)]
            ours, check = _ours(layer, m, tile, x, out, truth)
            cublas = graph_time(lambda i: F.linear(x, layer.dense[i], layer.bias), len(layer.dense))
            row = {"shape": name, "k": k, "n": n, "m": m, "tile": repr(tile), **check,
                   "ours": _row(layer, "ours", m, ours, peak), "cublas": _row(layer, "cublas", m, cublas, peak),
                   "vs_cublas": round(ours / cublas, 3)}
            if ext is not None:
                old = graph_time(lambda i: ext.awq_linear(x, *layer.ext[i], GROUP, layer.bias), len(layer.ext))
                row["cuda_ext"] = _row(layer, "ext", m, old, peak)
                row["vs_cuda_ext"] = round(ours / old, 3)
            report["rows"].append(row)
        del layer
        _free()

    # 2. candidate sweep per shape class
    for m in MS:
        for key, shapes in _classes(m).items():
            tiles = _class_candidates(m, shapes)
            entry = {"m": m, "class": key, "shapes": [s[0] for s in shapes], "tiles": []}
            layers: dict[str, tuple] = {}
            for tile in tiles:
                if out_of_time(f"sweep M={m} {key} {repr(tile)}"):
                    break
                result = {"tile": repr(tile), "us": {}, "checks": {}}
                for name, k, n, bias in shapes:
                    if name not in layers:
                        layer = _Layer(k, n, bias, baselines=False)
                        layers[name] = (layer, *layer.inputs(m))
                    layer, x, out, truth = layers[name]
                    seconds, check = _ours(layer, m, tile, x, out, truth)
                    result["us"][name] = round(seconds * 1e6, 2)
                    result["checks"][name] = check
                result["sum_us"] = round(sum(result["us"].values()), 2)
                entry["tiles"].append(result)
            layers.clear()
            _free()
            ok = [t for t in entry["tiles"] if len(t["us"]) == len(shapes)
                  and all(c["rel_err"] <= CHECK_TOL and c["repeatable"] for c in t["checks"].values())]
            if ok:
                best = min(ok, key=lambda t: t["sum_us"])
                entry["winner"] = best["tile"]
                committed = next((t["sum_us"] for t in ok if t["tile"] == repr(tiles[0])), None)
                report["tiles_py"].append(f"{_module(m).__name__.rsplit('.', 1)[1]}.TILES[{key!r}] = {best['tile']}"
                                          f"  # {', '.join(entry['shapes'])}: {best['sum_us']} us"
                                          f" (committed {committed} us)")
            report["sweep"].append(entry)
    report["elapsed_s"] = round(time.monotonic() - start, 1)
    return report
