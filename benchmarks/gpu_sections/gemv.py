"""GPU section: the Triton dense GEMV (`llm_infer/kernels/triton/gemv.py`) against cuBLAS.

For the Qwen2-1.5B and Qwen2.5-7B linear layers at M = 1, 2, 4, 8, 16 (bf16), in this order
until `budget_s` is spent (a measurement already started finishes):
1. ours at the committed tile (`tile_for`) and cuBLAS (`F.linear`); ours is checked against an
   fp32 product and for bitwise repeatability before it is timed;
2. the fused SwiGLU + down projection (`gemv(gate_up=True)`) against `silu_and_mul` + `F.linear`;
3. every candidate tile of each shape class (M = 1 first, then 8, 2, 4, 16), each checked, on
   every shape of the class; the winner per class minimises the summed time over the class's
   shapes (they run once each per layer) and is printed as a `TILES` line to commit.
Times are CUDA-graph replays (`benchmarks/gpu_timing.py`) rotating over weight copies that
together exceed the L2; bandwidth counts weight + x + y (+ bias) bytes once per call, as a
percentage of the measured copy bandwidth (read + write) passed in as `peak_bytes_per_s`.
Nothing runs at import.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from benchmarks.gpu_timing import copies_to_exceed_l2, graph_time, pct_of_bandwidth

# (name, K, N, has bias): the layers' weights are [N, K]
SHAPES = [
    ("qwen2-1.5b qkv", 1536, 2048, True), ("qwen2-1.5b o", 1536, 1536, False),
    ("qwen2-1.5b gate_up", 1536, 17920, False), ("qwen2-1.5b down", 8960, 1536, False),
    ("qwen2-1.5b lm_head", 1536, 151936, False),
    ("qwen2.5-7b qkv", 3584, 4608, True), ("qwen2.5-7b o", 3584, 3584, False),
    ("qwen2.5-7b gate_up", 3584, 37888, False), ("qwen2.5-7b down", 18944, 3584, False),
]
MS = [1, 2, 4, 8, 16]
SWEEP_ORDER = [1, 8, 2, 4, 16]
DTYPE = torch.bfloat16
DEVICE = "cuda"  # the tests smoke-run() on "cpu" under the interpreter with a fake timer
ELEM = 2  # bytes per bf16 element
CHECK_TOL = 2.0**-7  # max |ours - fp32| / max|fp32| accepted before a tile is timed (bf16 rounding is 2^-8)


def _classes(m: int) -> dict[tuple[int, int, int], list[tuple]]:
    from llm_infer.kernels.triton.gemv import shape_class

    classes: dict[tuple[int, int, int], list[tuple]] = {}
    for shape in SHAPES:
        classes.setdefault(shape_class(m, shape[2], shape[1]), []).append(shape)
    return classes


def _class_candidates(m: int, shapes: list[tuple]) -> list:
    """The union of the candidates of the class's shapes (a tile's split differs by shape)."""
    from llm_infer.kernels.triton.gemv import candidates

    found: list = []
    for _, k, n, _ in shapes:
        found += [t for t in candidates(m, n, k) if t not in found]
    return found


def plan() -> dict:
    """What run() would measure (no CUDA needed)."""
    n_candidates = sum(len(_class_candidates(m, shapes)) * len(shapes) for m in MS for shapes in _classes(m).values())
    return {
        "shapes": [{"name": name, "k": k, "n": n, "bias": bias, "weight_mb": round(k * n * ELEM / 1e6, 1)}
                   for name, k, n, bias in SHAPES],
        "m": MS, "dtype": str(DTYPE),
        "fused_gate_up_down": [{"shape": name, "k": k, "n": n} for name, k, n, _ in SHAPES if name.endswith("down")],
        "candidates": n_candidates,
        "classes": {str(m): [[list(key), [s[0] for s in shapes]] for key, shapes in _classes(m).items()] for m in MS},
        "order": ["committed tile + cuBLAS, every shape and M", "fused gate_up->down",
                  f"candidate sweep, M in {SWEEP_ORDER}"],
    }


class _Layer:
    """Rotating weight copies (together past the L2) and fixed inputs for one shape and M."""

    def __init__(self, k: int, n: int, bias: bool, m: int, gate_up: bool = False, seed: int = 0):
        g = torch.Generator(device=DEVICE).manual_seed(seed)
        x_bytes = m * k * ELEM * (2 if gate_up else 1)
        self.nbytes = n * k * ELEM + x_bytes + m * n * ELEM + (n * ELEM if bias else 0)
        self.copies = copies_to_exceed_l2(n * k * ELEM)
        self.weights = [(torch.randn(n, k, device=DEVICE, generator=g) / k**0.5).to(DTYPE) for _ in range(self.copies)]
        self.bias = torch.randn(n, device=DEVICE, generator=g).to(DTYPE) if bias else None
        self.x = torch.randn(m, 2 * k if gate_up else k, device=DEVICE, generator=g).to(DTYPE)
        self.out = torch.empty(m, n, device=DEVICE, dtype=DTYPE)
        self.gate_up = gate_up
        self._truth: torch.Tensor | None = None

    def truth(self) -> torch.Tensor:
        if self._truth is None:
            self._truth = self._product()
        return self._truth

    def _product(self) -> torch.Tensor:
        h = self.x.float()
        if self.gate_up:
            k = self.weights[0].shape[1]
            h = (F.silu(h[:, :k]) * h[:, k:]).to(DTYPE).float()
        y = h @ self.weights[0].float().T
        return y + self.bias.float() if self.bias is not None else y


def _ours(layer: _Layer, tile) -> tuple[float, dict]:
    """Seconds per call of gemv at `tile`, after a correctness and repeatability check."""
    from llm_infer.kernels.triton.gemv import gemv

    def call(i: int):
        return gemv(layer.x, layer.weights[i], layer.bias, gate_up=layer.gate_up, out=layer.out, tile=tile)

    ref = layer.truth()
    first = call(0).clone()
    second = call(0).clone()
    err = ((first.float() - ref).abs().max() / ref.abs().max()).item()
    check = {"rel_err": round(err, 6), "repeatable": bool(torch.equal(first, second))}
    if err > CHECK_TOL or not check["repeatable"]:
        return float("nan"), check
    return graph_time(call, layer.copies), check


def _row(layer: _Layer, seconds: float, peak: float) -> dict:
    return {"us": round(seconds * 1e6, 2), "pct_bw": round(pct_of_bandwidth(layer.nbytes, seconds, peak), 1)}


def _tile_str(tile) -> str:
    return (f"Tile({tile.block_n}, {tile.block_k}, {tile.split_k}, {tile.num_warps}, {tile.num_stages}"
            f"{', dot=True' if tile.dot else ''})")


def run(peak_bytes_per_s: float, budget_s: float) -> dict:
    if DEVICE == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("benchmarks/gpu_sections/gemv.py needs a CUDA device (plan() describes it)")
    from llm_infer.kernels import torch_ref
    from llm_infer.kernels.triton.gemv import default_tile, grid, tile_for

    start = time.monotonic()
    peak = peak_bytes_per_s
    report: dict = {"peak_gb_s": round(peak / 1e9, 1), "budget_s": budget_s, "rows": [], "fused": [],
                    "sweep": [], "tiles_py": [], "skipped": []}

    def out_of_time(what: str) -> bool:
        if time.monotonic() - start < budget_s:
            return False
        report["skipped"].append(what)
        return True

    # 1. committed tile vs cuBLAS
    for name, k, n, bias in SHAPES:
        for m in MS:
            if out_of_time(f"{name} M={m}"):
                continue
            layer = _Layer(k, n, bias, m)
            tile = tile_for(m, n, k)
            ours, check = _ours(layer, tile)
            cublas = graph_time(lambda i: F.linear(layer.x, layer.weights[i], layer.bias), layer.copies)
            report["rows"].append({"shape": name, "k": k, "n": n, "m": m, "tile": _tile_str(tile),
                                   "grid": list(grid(n, k, tile)[:2]), **check,
                                   "ours": _row(layer, ours, peak), "cublas": _row(layer, cublas, peak),
                                   "speedup": round(cublas / ours, 3)})
            del layer

    # 2. fused SwiGLU + down vs silu_and_mul + cuBLAS
    for name, k, n, _ in [s for s in SHAPES if s[0].endswith("down")]:
        for m in MS:
            if out_of_time(f"fused {name} M={m}"):
                continue
            layer = _Layer(k, n, False, m, gate_up=True)
            fused, check = _ours(layer, tile_for(m, n, k))
            unfused = graph_time(lambda i: F.linear(torch_ref.silu_and_mul(layer.x), layer.weights[i]), layer.copies)
            report["fused"].append({"shape": name, "m": m, **check, "fused": _row(layer, fused, peak),
                                    "unfused_cublas": _row(layer, unfused, peak), "speedup": round(unfused / fused, 3)})
            del layer

    # 3. candidate sweep per shape class
    for m in SWEEP_ORDER:
        for key, shapes in _classes(m).items():
            tiles = _class_candidates(m, shapes)
            entry = {"class": list(key), "shapes": [s[0] for s in shapes], "tiles": []}
            layers = {}
            for tile in tiles:
                if out_of_time(f"sweep M={m} {list(key)} {_tile_str(tile)}"):
                    break
                result = {"tile": _tile_str(tile), "us": {}, "checks": {}}
                for name, k, n, bias in shapes:
                    layer = layers.get(name) or layers.setdefault(name, _Layer(k, n, bias, m))
                    seconds, check = _ours(layer, tile)
                    result["us"][name] = round(seconds * 1e6, 2)
                    result["checks"][name] = check
                result["sum_us"] = round(sum(result["us"].values()), 2)
                entry["tiles"].append(result)
            layers.clear()
            ok = [t for t in entry["tiles"] if len(t["us"]) == len(shapes)
                  and all(c["rel_err"] <= CHECK_TOL and c["repeatable"] for c in t["checks"].values())]
            if ok:
                best = min(ok, key=lambda t: t["sum_us"])
                entry["winner"] = best["tile"]
                by_tile = {t["tile"]: t["us"] for t in ok}
                defaults = [by_tile.get(_tile_str(default_tile(m, n, k)), {}).get(name) for name, k, n, _ in shapes]
                note = f" (defaults {round(sum(defaults), 2)} us)" if None not in defaults else ""
                report["tiles_py"].append(
                    f"{tuple(key)}: {best['tile']},  # {', '.join(entry['shapes'])}: {best['sum_us']} us{note}")
            report["sweep"].append(entry)
    report["elapsed_s"] = round(time.monotonic() - start, 1)
    return report
