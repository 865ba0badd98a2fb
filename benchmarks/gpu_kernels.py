"""Kernel timings on a GPU, graph-timed (needs a CUDA device; results name the device).

Every kernel is timed by `benchmarks/gpu_timing.py:graph_time`: a CUDA graph of many calls over
rotating copies of the inputs that together exceed the L2 cache, so a figure is device time,
not launch latency (single calls between CUDA events read 20 us for a 5 us kernel). Percentages
are of the measured device-to-device copy bandwidth (`copy_bandwidth`, read + write counted).

The measurements live in section modules, `benchmarks/gpu_sections/<name>.py`, each with
`plan() -> dict` and `run(peak_bytes_per_s, budget_s) -> dict`; this script runs every section
in `SECTIONS` that exists, each with its share of the budget (what one leaves, the next ones
get). A section that is missing or fails is recorded as such and the others still run. Where
the `awq` or `decode_kernels` section is missing, a built-in graph-timed comparison stands in
(AWQ int4 against cuBLAS bf16 on the 1.5B layer shapes; our decode attention against torch
SDPA on gathered K/V).

    python benchmarks/gpu_kernels.py --out FILE [--budget-s 60] [--dry-run]

Also the home of the benchmark model: `QWEN2_15B` (a random 1.5B-shaped Qwen2), its
checkpoint (`dense_checkpoint`) and round-to-nearest AWQ copy (`awq_checkpoint`).
"""

from __future__ import annotations

import argparse
import importlib
import json
import statistics
import sys
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import CACHE  # noqa: E402

QWEN2_15B = dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                 num_key_value_heads=2, vocab_size=151936, max_position_embeddings=4096)
LAYER_SHAPES = [(1536, 2048), (1536, 1536), (1536, 17920), (8960, 1536)]  # (K, N): qkv, o, gate_up, down
# bf16 bytes read per decode step: every layer weight and the LM head once (3.09 GB)
QWEN2_15B_WEIGHT_BYTES = 2 * (QWEN2_15B["num_hidden_layers"] * sum(k * n for k, n in LAYER_SHAPES)
                              + QWEN2_15B["vocab_size"] * QWEN2_15B["hidden_size"])
# (section module, share of the budget): what one leaves, the next ones get
SECTIONS = [("decode_kernels", 0.4), ("gemv", 0.3), ("awq", 0.3)]


def copy_bandwidth() -> float:
    """Device-to-device copy of 1 GiB, counting read + write: the practical peak (bytes/s).
    (Event-timed: 20 copies of 1 GiB each take milliseconds, so launch latency is noise here.)"""
    a = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    b = torch.empty_like(a)
    for _ in range(3):
        b.copy_(a)
    times = []
    for _ in range(20):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        b.copy_(a)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return 2 * a.numel() / statistics.median(times)


def speed_of_light_tok_s(peak_bytes_per_s: float) -> float:
    """Batch-1 decode tokens/s if each step read the bf16 weights once at the copy bandwidth."""
    return peak_bytes_per_s / QWEN2_15B_WEIGHT_BYTES


def dense_checkpoint() -> Path:
    """The random 1.5B-shaped Qwen2 in bf16 (written once into the benchmark cache)."""
    import shutil
    import tempfile

    from tests.checkpoints import make_checkpoint

    dense = CACHE / "qwen2-1.5b-random-bf16"
    if not dense.is_dir():  # written aside and renamed: two processes may ask at once (gpu_check does)
        CACHE.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=CACHE, prefix=".writing-"))
        make_checkpoint(tmp, "qwen2", dtype=torch.bfloat16, seed=3, **QWEN2_15B)
        try:
            tmp.rename(dense)
        except OSError:  # the other one was first
            shutil.rmtree(tmp, ignore_errors=True)
    return dense


def awq_checkpoint(dense: Path, out: Path | None = None, group: int = 128) -> Path:
    """Round-to-nearest int4 copy of a dense checkpoint in the AutoAWQ layout (speed only)."""
    from safetensors.torch import load_file, save_file

    from llm_infer.kernels.awq_torch import pack_awq
    from llm_infer.runtime.quant.awq_search import quantize_groups

    out = out or CACHE / "qwen2-1.5b-random-awq-rtn"
    if (out / "config.json").is_file():
        return out
    out.mkdir(parents=True, exist_ok=True)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    tensors = {}
    for file in sorted(dense.glob("*.safetensors")):
        for name, w in load_file(file).items():
            if name.endswith("proj.weight"):
                q, zeros, scales = quantize_groups(w.to(device).float(), group)
                base = name[: -len(".weight")]
                tensors[f"{base}.qweight"] = pack_awq(q.t().contiguous()).cpu()
                tensors[f"{base}.qzeros"] = pack_awq(zeros.t().contiguous()).cpu()
                tensors[f"{base}.scales"] = scales.t().contiguous().half().cpu()
            else:
                tensors[name] = w.half()
    save_file(tensors, str(out / "model.safetensors"))
    cfg = json.loads((dense / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "awq", "bits": 4, "group_size": group, "zero_point": True,
                                  "version": "gemm"}
    (out / "config.json").write_text(json.dumps(cfg))
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (out / name).write_bytes((dense / name).read_bytes())
    return out


# -- built-in stand-ins for missing sections -----------------------------------------------


def builtin_awq(peak: float, budget_s: float) -> dict:
    """AWQ int4 (the CUDA extension's `awq_linear`) against cuBLAS bf16 on the 1.5B layer shapes."""
    from benchmarks.gpu_timing import copies_to_exceed_l2, graph_time, pct_of_bandwidth
    from llm_infer.kernels.awq_torch import pack_awq
    from llm_infer.kernels.cuda_extension import load_cuda_extension

    ext, start, rows = load_cuda_extension(), time.monotonic(), []
    for k, n in LAYER_SHAPES:
        int4_bytes = k * n // 2 + (k // 128) * n // 2 + (k // 128) * n * 2  # qweight, qzeros (int4), fp16 scales
        copies = copies_to_exceed_l2(int4_bytes)
        weights = [(pack_awq(torch.randint(0, 16, (k, n))).cuda(), pack_awq(torch.randint(0, 16, (k // 128, n))).cuda(),
                    (torch.rand(k // 128, n) * 0.01).half().cuda()) for _ in range(copies)]
        dense_copies = copies_to_exceed_l2(2 * k * n)
        dense = [torch.randn(n, k, dtype=torch.bfloat16, device="cuda") for _ in range(dense_copies)]
        for m in (1, 8, 32, 128):
            if time.monotonic() - start > budget_s:
                return {"rows": rows, "skipped": "out of time"}
            x = torch.randn(m, k, dtype=torch.bfloat16, device="cuda")
            ours = graph_time(lambda i: ext.awq_linear(x, *weights[i], 128, None), copies)
            bf16 = graph_time(lambda i: torch.nn.functional.linear(x, dense[i]), dense_copies)
            rows.append({"k": k, "n": n, "m": m, "ours_us": round(ours * 1e6, 2), "bf16_us": round(bf16 * 1e6, 2),
                         "ours_pct_bw": round(pct_of_bandwidth(int4_bytes, ours, peak), 1),
                         "bf16_pct_bw": round(pct_of_bandwidth(2 * k * n, bf16, peak), 1)})
        del weights, dense
    return {"rows": rows}


def builtin_decode_attention(peak: float, budget_s: float) -> dict:
    """Our decode attention over the paged cache against torch SDPA on the same K/V gathered."""
    from benchmarks.gpu_timing import copies_to_exceed_l2, graph_time, pct_of_bandwidth
    from llm_infer.kernels.cuda_extension import load_cuda_extension

    ext, start, rows = load_cuda_extension(), time.monotonic(), []
    heads, kv_heads, dim, bs = 12, 2, 128, 16
    for batch, ctx in [(1, 1024), (1, 16384), (32, 1024), (32, 4096)]:
        if time.monotonic() - start > budget_s:
            return {"rows": rows, "skipped": "out of time"}
        blocks = batch * ctx // bs
        kv_bytes = 2 * blocks * bs * kv_heads * dim * 2
        copies = copies_to_exceed_l2(kv_bytes, limit=16)
        caches = [(torch.randn(blocks, bs, kv_heads, dim, dtype=torch.bfloat16, device="cuda"),
                   torch.randn(blocks, bs, kv_heads, dim, dtype=torch.bfloat16, device="cuda")) for _ in range(copies)]
        q = torch.randn(batch, heads * dim, dtype=torch.bfloat16, device="cuda")
        tables = torch.arange(blocks, dtype=torch.int32, device="cuda").view(batch, ctx // bs)
        i32 = dict(dtype=torch.int32, device="cuda")
        qs, ql, sl = torch.arange(batch, **i32), torch.ones(batch, **i32), torch.full((batch,), ctx, **i32)
        splits = max(1, ctx // 512)
        work = torch.empty(ext.decode_workspace_bytes(batch, 1, heads, dim, splits), dtype=torch.uint8, device="cuda")
        out = torch.empty_like(q)
        ours = graph_time(lambda i: ext.decode_attention(out, q, *caches[i], tables, qs, ql, sl, dim**-0.5, 1, splits,
                                                         work), copies)

        def sdpa(i):
            kc, vc = caches[i]
            return torch.nn.functional.scaled_dot_product_attention(
                q.view(batch, heads, 1, dim), kc.view(batch, ctx, kv_heads, dim).transpose(1, 2),
                vc.view(batch, ctx, kv_heads, dim).transpose(1, 2), enable_gqa=True)

        sdpa_s = graph_time(sdpa, copies)
        rows.append({"batch": batch, "context": ctx, "splits": splits, "ours_us": round(ours * 1e6, 2),
                     "sdpa_gathered_us": round(sdpa_s * 1e6, 2),
                     "ours_pct_bw": round(pct_of_bandwidth(kv_bytes, ours, peak), 1),
                     "sdpa_pct_bw": round(pct_of_bandwidth(kv_bytes, sdpa_s, peak), 1)})
        del caches
    return {"rows": rows}


BUILTIN = {"awq": builtin_awq, "decode_kernels": builtin_decode_attention}


def load_section(name: str):
    """The section module, or None where it does not exist (an import error inside it raises)."""
    module = f"benchmarks.gpu_sections.{name}"
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name in (module, "benchmarks.gpu_sections"):
            return None
        raise


def run_sections(peak: float, budget_s: float, report: dict, save) -> None:
    """Each section in SECTIONS with its share of what is left; report["sections"][name] gets its
    result plus status (ok | failed | missing | skipped) and seconds."""
    deadline = time.monotonic() + budget_s
    sections = report.setdefault("sections", {})
    for index, (name, _) in enumerate(SECTIONS):
        left = deadline - time.monotonic()
        share = left * SECTIONS[index][1] / sum(s for _, s in SECTIONS[index:])
        start = time.monotonic()
        if left < 3:
            sections[name] = {"status": "skipped", "reason": f"{left:.0f} s left"}
            continue
        print(f"[section] {name}: {share:.0f} s of {left:.0f} s left", flush=True)
        try:
            module = load_section(name)
            if module is None:
                result = {"status": "missing"}
                if name in BUILTIN:
                    result["builtin"] = BUILTIN[name](peak, share)
            else:
                result = {"status": "ok", **module.run(peak, share)}
        except Exception as e:  # a failing section is recorded; the others still run
            result = {"status": "failed", "error": f"{type(e).__name__}: {e}"[:2000],
                      "traceback": traceback.format_exc()[-3000:]}
        torch.cuda.empty_cache()
        result["seconds"] = round(time.monotonic() - start, 1)
        sections[name] = result
        save()


def dry_run(out: Path) -> dict:
    """The plan without CUDA: each section's plan() (or why there is none)."""
    plan: dict = {"dry_run": True, "sections": {}}
    for name, share in SECTIONS:
        try:
            module = load_section(name)
            entry = {"status": "missing", "builtin": BUILTIN[name].__doc__} if module is None and name in BUILTIN \
                else {"status": "missing"} if module is None else {"status": "ok", "plan": module.plan()}
        except Exception as e:
            entry = {"status": "failed", "error": f"{type(e).__name__}: {e}"[:2000]}
        plan["sections"][name] = {"budget_share": share, **entry}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(plan, indent=2))
    print(json.dumps(plan)[:4000])
    return plan


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="JSON file for the results")
    p.add_argument("--budget-s", type=float, default=60, help="seconds for all sections together")
    p.add_argument("--peak-gb-s", type=float, default=None, help="copy bandwidth if already measured")
    p.add_argument("--dry-run", action="store_true", help="print each section's plan; no CUDA")
    args = p.parse_args()
    out = Path(args.out)
    if args.dry_run:
        dry_run(out)
        return
    from llm_infer.kernels.cuda_extension import load_cuda_extension

    if load_cuda_extension() is None:
        sys.exit("the CUDA kernels did not build here")
    peak = args.peak_gb_s * 1e9 if args.peak_gb_s else copy_bandwidth()
    report = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "device": torch.cuda.get_device_name(0),
              "torch": torch.__version__, "cuda": torch.version.cuda, "copy_bandwidth_gb_s": round(peak / 1e9, 1),
              "budget_s": args.budget_s}
    out.parent.mkdir(parents=True, exist_ok=True)

    def save() -> None:
        out.write_text(json.dumps(report, indent=2))

    run_sections(peak, args.budget_s, report, save)
    save()


if __name__ == "__main__":
    main()
