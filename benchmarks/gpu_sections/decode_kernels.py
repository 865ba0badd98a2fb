"""GPU section: the Triton kernels of the decode step (`llm_infer/kernels/triton/{rms_norm, rope_kv,
decode_attention, activation}.py`) against the CUDA extension, the torch references and torch SDPA.

In this order, until `budget_s` is spent (a measurement already started finishes):
1. rms_norm with and without the residual, rows 1/32/256 x dim 1536/3584: ours, the CUDA
   extension's `rms_norm`, `torch_ref`;
2. rotary_write_kv at tokens 1/32 on the Qwen2-1.5B attention shape (12 heads, 2 KV heads, D 128),
   plain and with Qwen3's q/k norms: ours against `torch_ref` (norm per head, `rotary_`) + `ext.write_kv`;
3. decode attention, batch x context 1x1024, 1x16384, 32x1024, 32x4096, 128x2048, block 16, over a
   shuffled block table: ours at `choose_splits` and at up to 3 other split counts, the CUDA
   extension's kernel, and torch SDPA on the same K/V gathered contiguously (enable_gqa);
4. every candidate of each module's TILES table on the shapes above (attention at its chosen
   splits); each candidate is checked against an fp32 truth before it is timed. The winner per
   shape and per shape class (least summed time over the class's shapes) is reported, with a
   `TILES` line to commit.
bf16 throughout. Times are CUDA-graph replays (`benchmarks/gpu_timing.py`) rotating over input
copies that together exceed the L2; `pct_bw` counts the bytes a call must move (read + write) as a
percentage of the measured copy bandwidth `peak_bytes_per_s`. Nothing runs at import.
"""

from __future__ import annotations

import time
from typing import Callable

import torch
import torch.nn.functional as F

from benchmarks.gpu_timing import copies_to_exceed_l2, graph_time, pct_of_bandwidth

DTYPE, ELEM, EPS = torch.bfloat16, 2, 1e-6
RMS_ROWS, RMS_DIMS = (1, 32, 256), (1536, 3584)
HEADS, KV_HEADS, HEAD_DIM, BLOCK = 12, 2, 128, 16  # Qwen2-1.5B attention
ROPE_TOKENS, MAX_POS = (1, 32), 4096
ATTENTION = [(1, 1024), (1, 16384), (32, 1024), (32, 4096), (128, 2048)]  # batch x context
SILU_SHAPES = [(1, 8960), (32, 8960), (256, 8960), (1, 18944)]  # rows x intermediate
CHECK_TOL = 2.0**-6  # max |ours - fp32| / max |fp32| accepted before timing (bf16 rounding is 2^-8)


def plan() -> dict:
    """What run() would measure, in order (no CUDA needed)."""
    from llm_infer.kernels.triton import activation, decode_attention, rms_norm, rope_kv

    rows: list[dict] = []
    for dim in RMS_DIMS:
        for n in RMS_ROWS:
            for residual in (False, True):
                rows.append({"kernel": "rms_norm", "rows": n, "dim": dim, "residual": residual,
                             "impls": ["triton", "cuda_ext", "torch_ref"]})
    for tokens in ROPE_TOKENS:
        for qk_norm in (False, True):
            rows.append({"kernel": "rotary_write_kv", "tokens": tokens, "heads": HEADS, "kv_heads": KV_HEADS,
                         "head_dim": HEAD_DIM, "qk_norm": qk_norm, "impls": ["triton", "torch_ref+ext.write_kv"]})
    for batch, ctx in ATTENTION:
        rows.append({"kernel": "decode_attention", "batch": batch, "context": ctx, "heads": HEADS,
                     "kv_heads": KV_HEADS, "head_dim": HEAD_DIM, "block_size": BLOCK,
                     "impls": ["triton@choose_splits", "triton@other splits", "cuda_ext", "sdpa_gathered"]})
    sweeps = [("rms_norm", [{"rows": n, "dim": d} for d in RMS_DIMS for n in RMS_ROWS], rms_norm.CANDIDATES),
              ("decode_attention", [{"batch": b, "context": c} for b, c in ATTENTION], decode_attention.CANDIDATES),
              ("rotary_write_kv", [{"tokens": t} for t in (1, 32, 256)], rope_kv.CANDIDATES),
              ("silu_and_mul", [{"rows": r, "inter": i} for r, i in SILU_SHAPES], activation.CANDIDATES)]
    for module, shapes, candidates in sweeps:
        rows.append({"kernel": "tiles", "module": module, "shapes": shapes, "candidates": len(candidates)})
    return {"dtype": str(DTYPE), "measurements": rows}


def _rel_err(got: torch.Tensor, truth: torch.Tensor) -> float:
    return ((got.float() - truth.float()).abs().max() / truth.float().abs().max().clamp(min=1e-30)).item()


def _timed(call: Callable[[int], object], copies: int, nbytes: int, peak: float) -> dict:
    seconds = graph_time(call, copies)
    return {"us": round(seconds * 1e6, 2), "pct_bw": round(pct_of_bandwidth(nbytes, seconds, peak), 2)}


# ---- cases: inputs rotated over copies, a call per implementation, a check ------------------------

class RmsCase:
    def __init__(self, rows: int, dim: int, residual: bool):
        self.nbytes = rows * dim * ELEM * (4 if residual else 2) + dim * ELEM
        self.copies = copies_to_exceed_l2(self.nbytes)
        self.x = [torch.randn(rows, dim, device="cuda", dtype=DTYPE) for _ in range(self.copies)]
        self.r = [torch.randn_like(x) for x in self.x] if residual else None
        self.w = torch.rand(dim, device="cuda", dtype=DTYPE) + 0.5
        self.out = torch.empty_like(self.x[0])

    def res(self, i: int) -> torch.Tensor | None:
        return None if self.r is None else self.r[i]

    def triton(self, tile=None) -> Callable[[int], object]:
        from llm_infer.kernels.triton.rms_norm import rms_norm
        return lambda i: rms_norm(self.x[i], self.w, EPS, self.res(i), self.out, tile=tile)

    def check(self, tile=None) -> float:
        from llm_infer.kernels.triton.rms_norm import rms_norm
        r = None if self.r is None else self.r[0].clone()
        got = rms_norm(self.x[0], self.w, EPS, r, tile=tile)
        s = self.x[0].float() + (0 if self.r is None else self.r[0].float())
        return _rel_err(got, self.w.float() * s * torch.rsqrt(s.pow(2).mean(-1, keepdim=True) + EPS))


class RopeCase:
    def __init__(self, tokens: int, qk_norm: bool):
        width = (HEADS + 2 * KV_HEADS) * HEAD_DIM
        self.nbytes = tokens * (width + (HEADS + KV_HEADS) * HEAD_DIM + 2 * KV_HEADS * HEAD_DIM) * ELEM
        self.copies = copies_to_exceed_l2(self.nbytes)
        self.qkv = [torch.randn(tokens, width, device="cuda", dtype=DTYPE) for _ in range(self.copies)]
        self.pos = [torch.randint(0, MAX_POS, (tokens,), device="cuda") for _ in range(self.copies)]
        blocks = 4096
        self.slots = [torch.randperm(blocks * BLOCK, device="cuda")[:tokens].int() for _ in range(self.copies)]
        self.kc = torch.zeros(blocks, BLOCK, KV_HEADS, HEAD_DIM, device="cuda", dtype=DTYPE)
        self.vc = torch.zeros_like(self.kc)
        inv = 1.0 / 1e6 ** (torch.arange(0, HEAD_DIM, 2, device="cuda").float() / HEAD_DIM)
        freqs = torch.arange(MAX_POS, device="cuda").float()[:, None] * inv
        self.cos, self.sin = torch.cat([freqs, freqs], -1).cos(), torch.cat([freqs, freqs], -1).sin()
        self.qw = torch.rand(HEAD_DIM, device="cuda", dtype=DTYPE) + 0.5 if qk_norm else None
        self.kw = torch.rand(HEAD_DIM, device="cuda", dtype=DTYPE) + 0.5 if qk_norm else None

    def triton(self, tile=None) -> Callable[[int], object]:
        from llm_infer.kernels.triton.rope_kv import rotary_write_kv
        return lambda i: rotary_write_kv(self.qkv[i], self.pos[i], self.cos, self.sin, HEADS, KV_HEADS, HEAD_DIM,
                                         self.kc, self.vc, self.slots[i], self.qw, self.kw, EPS, tile=tile)

    def torch_path(self, ext, qkv: torch.Tensor, i: int) -> None:
        from llm_infer.kernels import torch_ref
        t, hd = qkv.shape[0], HEADS * HEAD_DIM
        kd = hd + KV_HEADS * HEAD_DIM
        if self.qw is not None:
            for sl, w, n in ((slice(0, hd), self.qw, HEADS), (slice(hd, kd), self.kw, KV_HEADS)):
                heads = qkv[:, sl].view(t, n, HEAD_DIM)
                heads.copy_(torch_ref.rms_norm(heads, w, EPS))
        torch_ref.rotary_(qkv, self.pos[i], self.cos, self.sin, HEADS + KV_HEADS, HEAD_DIM)
        ext.write_kv(qkv[:, hd:kd], qkv[:, kd:], self.kc, self.vc, self.slots[i])

    def check(self, tile=None) -> float:
        from llm_infer.kernels import torch_ref
        from llm_infer.kernels.triton.rope_kv import rotary_write_kv
        ours, truth = self.qkv[0].clone(), self.qkv[0].float()
        t, hd = truth.shape[0], HEADS * HEAD_DIM
        if self.qw is not None:
            for sl, w, n in ((slice(0, hd), self.qw, HEADS), (slice(hd, hd + KV_HEADS * HEAD_DIM), self.kw, KV_HEADS)):
                heads = truth[:, sl].view(t, n, HEAD_DIM)
                heads.copy_(w.float() * heads * torch.rsqrt(heads.pow(2).mean(-1, keepdim=True) + EPS))
        torch_ref.rotary_(truth, self.pos[0], self.cos, self.sin, HEADS + KV_HEADS, HEAD_DIM)
        rotary_write_kv(ours, self.pos[0], self.cos, self.sin, HEADS, KV_HEADS, HEAD_DIM, self.kc, self.vc,
                        self.slots[0], self.qw, self.kw, EPS, tile=tile)
        return _rel_err(ours, truth)


class AttentionCase:
    def __init__(self, batch: int, ctx: int):
        self.batch, self.ctx = batch, ctx
        blocks = batch * ctx // BLOCK
        kv_bytes = 2 * blocks * BLOCK * KV_HEADS * HEAD_DIM * ELEM
        self.nbytes = kv_bytes + 2 * batch * HEADS * HEAD_DIM * ELEM
        self.copies = copies_to_exceed_l2(kv_bytes)
        shape = (blocks, BLOCK, KV_HEADS, HEAD_DIM)
        self.kc = [torch.randn(shape, device="cuda", dtype=DTYPE) for _ in range(self.copies)]
        self.vc = [torch.randn(shape, device="cuda", dtype=DTYPE) for _ in range(self.copies)]
        self.tables = torch.randperm(blocks, device="cuda").int().view(batch, ctx // BLOCK)
        qkv = torch.randn(batch, (HEADS + 2 * KV_HEADS) * HEAD_DIM, device="cuda", dtype=DTYPE)
        self.q = qkv[:, : HEADS * HEAD_DIM]  # strided, as the engine passes it
        self.seq_lens = torch.full((batch,), ctx, dtype=torch.int32, device="cuda")
        self.out = torch.empty(batch, HEADS * HEAD_DIM, device="cuda", dtype=DTYPE)
        self.scale = HEAD_DIM**-0.5

    def gathered(self, cache: torch.Tensor) -> torch.Tensor:
        return cache[self.tables.long()].view(self.batch, self.ctx, KV_HEADS, HEAD_DIM).transpose(1, 2).contiguous()

    def truth(self) -> torch.Tensor:
        k, v = self.gathered(self.kc[0]).float(), self.gathered(self.vc[0]).float()
        q = self.q.float().reshape(self.batch, HEADS, 1, HEAD_DIM)
        return F.scaled_dot_product_attention(q, k, v, scale=self.scale, enable_gqa=True).reshape(self.batch, -1)

    def triton(self, splits: int, tile=None) -> Callable[[int], object]:
        from llm_infer.kernels.triton.decode_attention import decode_attention, workspace_bytes
        work = torch.empty(max(1, workspace_bytes(self.batch, HEADS, HEAD_DIM, splits)), dtype=torch.uint8,
                           device="cuda")
        return lambda i: decode_attention(self.q, self.kc[i], self.vc[i], self.tables, self.seq_lens, self.scale,
                                          splits, work, self.out, tile=tile)

    def check(self, splits: int, tile=None) -> float:
        self.triton(splits, tile)(0)
        return _rel_err(self.out, self.truth())


class SiluCase:
    def __init__(self, rows: int, inter: int):
        self.nbytes = rows * inter * 3 * ELEM
        self.copies = copies_to_exceed_l2(self.nbytes)
        self.x = [torch.randn(rows, 2 * inter, device="cuda", dtype=DTYPE) for _ in range(self.copies)]
        self.out = torch.empty(rows, inter, device="cuda", dtype=DTYPE)

    def triton(self, tile=None) -> Callable[[int], object]:
        from llm_infer.kernels.triton.activation import silu_and_mul
        return lambda i: silu_and_mul(self.x[i], self.out, tile=tile)

    def check(self, tile=None) -> float:
        gate, up = self.x[0].float().chunk(2, dim=-1)
        return _rel_err(self.triton(tile)(0), F.silu(gate) * up)


# ---- the sections ---------------------------------------------------------------------------------

def _rms_rows(ext, peak, out_of_time) -> list[dict]:
    from llm_infer.kernels import torch_ref
    rows = []
    for dim in RMS_DIMS:
        for n in RMS_ROWS:
            for residual in (False, True):
                if out_of_time(f"rms_norm rows={n} dim={dim} residual={residual}"):
                    continue
                c = RmsCase(n, dim, residual)
                row = {"rows": n, "dim": dim, "residual": residual, "rel_err": round(c.check(), 6),
                       "triton": _timed(c.triton(), c.copies, c.nbytes, peak)}
                if ext is not None:
                    row["cuda_ext"] = _timed(lambda i: ext.rms_norm(c.x[i], c.res(i), c.w, EPS), c.copies,
                                             c.nbytes, peak)
                ref = ((lambda i: torch_ref.add_rms_norm(c.x[i], c.r[i], c.w, EPS)) if residual
                       else (lambda i: torch_ref.rms_norm(c.x[i], c.w, EPS)))
                row["torch_ref"] = _timed(ref, c.copies, c.nbytes, peak)
                rows.append(row)
    return rows


def _rope_rows(ext, peak, out_of_time) -> list[dict]:
    rows = []
    for tokens in ROPE_TOKENS:
        for qk_norm in (False, True):
            if out_of_time(f"rotary_write_kv tokens={tokens} qk_norm={qk_norm}"):
                continue
            c = RopeCase(tokens, qk_norm)
            row = {"tokens": tokens, "qk_norm": qk_norm, "rel_err": round(c.check(), 6),
                   "triton": _timed(c.triton(), c.copies, c.nbytes, peak)}
            if ext is not None:
                row["torch_ref+ext.write_kv"] = _timed(lambda i: c.torch_path(ext, c.qkv[i], i), c.copies,
                                                       c.nbytes, peak)
            rows.append(row)
    return rows


def _attention_rows(ext, peak, out_of_time, sm_count: int) -> list[dict]:
    from llm_infer.kernels.triton.decode_attention import choose_splits
    rows = []
    for batch, ctx in ATTENTION:
        if out_of_time(f"decode_attention {batch}x{ctx}"):
            continue
        c = AttentionCase(batch, ctx)
        chosen = choose_splits(batch, KV_HEADS, ctx, sm_count)
        others = [s for s in dict.fromkeys([1, max(1, chosen // 2), 2 * chosen, max(1, ctx // 512)]) if s != chosen][:3]
        row = {"batch": batch, "context": ctx, "chosen_splits": chosen, "rel_err": round(c.check(chosen), 6),
               "triton": {}}
        for splits in [chosen, *others]:
            if out_of_time(f"decode_attention {batch}x{ctx} splits={splits}"):
                break
            row["triton"][str(splits)] = _timed(c.triton(splits), c.copies, c.nbytes, peak)
        if ext is not None and not out_of_time(f"decode_attention {batch}x{ctx} cuda_ext"):
            i32 = dict(dtype=torch.int32, device="cuda")
            qs, ql = torch.arange(batch, **i32), torch.ones(batch, **i32)
            splits = max(1, ctx // 512)
            work = torch.empty(ext.decode_workspace_bytes(batch, 1, HEADS, HEAD_DIM, splits), dtype=torch.uint8,
                               device="cuda")
            out = torch.empty_like(c.out)
            row["cuda_ext"] = {"splits": splits, **_timed(
                lambda i: ext.decode_attention(out, c.q, c.kc[i], c.vc[i], c.tables, qs, ql, c.seq_lens, c.scale, 1,
                                               splits, work), c.copies, c.nbytes, peak)}
        if not out_of_time(f"decode_attention {batch}x{ctx} sdpa"):
            kg, vg = [c.gathered(k) for k in c.kc], [c.gathered(v) for v in c.vc]
            q4 = c.q.reshape(batch, HEADS, 1, HEAD_DIM)
            row["sdpa_gathered"] = _timed(lambda i: F.scaled_dot_product_attention(
                q4, kg[i], vg[i], scale=c.scale, enable_gqa=True), c.copies, c.nbytes, peak)
            del kg, vg
        rows.append(row)
        del c
        torch.cuda.empty_cache()
    return rows


def _sweep_shape(desc: dict, case, make: Callable, candidates: list, peak: float, out_of_time) -> dict:
    """Every candidate tile on one shape, each checked against the truth before it is timed.
    make(case, tile) -> (check() -> relative error, call(i))."""
    result: dict = {**desc, "tiles": {}}
    for tile in candidates:
        if out_of_time(f"tiles {desc} {tile}"):
            break
        try:
            check, call = make(case, tile)
            err = check()
            timing = _timed(call, case.copies, case.nbytes, peak) if err <= CHECK_TOL else {"error": "check"}
            result["tiles"][repr(tile)] = {**timing, "rel_err": round(err, 6)}
        except Exception as e:  # a tile that does not compile here (e.g. out of shared memory)
            result["tiles"][repr(tile)] = {"error": f"{type(e).__name__}: {str(e)[:120]}"}
    timed = {t: r["us"] for t, r in result["tiles"].items() if "us" in r}
    if timed:
        result["winner"] = min(timed, key=timed.get)
    return result


def _class_winners(shapes: list[dict]) -> dict[str, str]:
    """Per shape class: the tile with the least time summed over the class's shapes, among the tiles
    timed on all of them, as a line for the module's TILES table."""
    winners = {}
    for cls in dict.fromkeys(s["class"] for s in shapes):
        members = [s for s in shapes if s["class"] == cls]
        sums = {t: sum(s["tiles"][t]["us"] for s in members) for t in members[0]["tiles"]
                if all("us" in s["tiles"].get(t, {}) for s in members)}
        if sums:
            best = min(sums, key=sums.get)
            winners[cls] = f"{cls!r}: {best},  # {round(sums[best], 2)} us over {len(members)} shapes"
    return winners


def run(peak_bytes_per_s: float, budget_s: float) -> dict:
    if not torch.cuda.is_available():
        raise RuntimeError("benchmarks/gpu_sections/decode_kernels.py needs a CUDA device (plan() describes it)")
    from llm_infer.kernels.cuda_extension import load_cuda_extension
    from llm_infer.kernels.triton import activation, decode_attention, rms_norm, rope_kv

    start, peak = time.monotonic(), peak_bytes_per_s
    sm_count = torch.cuda.get_device_properties(0).multi_processor_count
    report: dict = {"device": torch.cuda.get_device_name(0), "sm_count": sm_count, "peak_gb_s": round(peak / 1e9, 1),
                    "budget_s": budget_s, "dtype": str(DTYPE), "skipped": []}

    def out_of_time(what: str) -> bool:
        if time.monotonic() - start < budget_s:
            return False
        report["skipped"].append(what)
        return True

    ext = load_cuda_extension()
    report["cuda_ext"] = ext is not None
    torch.manual_seed(0)
    report["rms_norm"] = _rms_rows(ext, peak, out_of_time)
    report["rotary_write_kv"] = _rope_rows(ext, peak, out_of_time)
    report["decode_attention"] = _attention_rows(ext, peak, out_of_time, sm_count)

    def attention_make(c: AttentionCase, tile):
        splits = decode_attention.choose_splits(c.batch, KV_HEADS, c.ctx, sm_count)
        return (lambda: c.check(splits, tile)), c.triton(splits, tile)

    def make(c, tile):
        return (lambda: c.check(tile)), c.triton(tile)

    sweeps = [
        ("rms_norm", [({"rows": n, "dim": d}, lambda n=n, d=d: RmsCase(n, d, True))
                      for d in RMS_DIMS for n in RMS_ROWS],
         make, rms_norm.CANDIDATES, lambda s: rms_norm.shape_class(s["rows"], s["dim"])),
        ("decode_attention", [({"batch": b, "context": c}, lambda b=b, c=c: AttentionCase(b, c)) for b, c in ATTENTION],
         attention_make, decode_attention.CANDIDATES, lambda s: decode_attention.shape_class(HEAD_DIM)),
        ("rotary_write_kv", [({"tokens": t}, lambda t=t: RopeCase(t, False)) for t in (1, 32, 256)],
         make, rope_kv.CANDIDATES, lambda s: rope_kv.shape_class(s["tokens"], HEAD_DIM)),
        ("silu_and_mul", [({"rows": r, "inter": i}, lambda r=r, i=i: SiluCase(r, i)) for r, i in SILU_SHAPES],
         make, activation.CANDIDATES, lambda s: activation.shape_class(s["rows"], s["inter"])),
    ]
    report["tiles"] = []
    for module, shapes, make_fn, candidates, class_of in sweeps:
        results = []
        for desc, build in shapes:
            if out_of_time(f"tiles {module} {desc}"):
                continue
            case = build()
            swept = _sweep_shape(desc, case, make_fn, candidates, peak, out_of_time)
            results.append({**swept, "class": class_of(desc)})
            del case
            torch.cuda.empty_cache()
        report["tiles"].append({"module": module, "shapes": results, "tiles_py": _class_winners(results)})
    report["elapsed_s"] = round(time.monotonic() - start, 1)
    return report
