"""GPU benchmark of the CUDA kernels (needs a CUDA device; results name the device).

1. AWQ int4 GEMV/GEMM vs torch bf16 matmul and vs dequantize-then-matmul, on the layer shapes
   of a 1.5B Qwen2 (hidden 1536, intermediate 8960), M = 1..512, with achieved bandwidth as a
   share of the device's measured copy bandwidth (bytes moved / peak).
2. Decode attention over the paged cache vs torch SDPA over a gathered cache.
3. End to end: decode tok/s of a random 1.5B-sized Qwen2 (hidden 1536, 28 layers, 12 heads,
   2 KV heads, intermediate 8960, vocab 151936) in bf16 and AWQ int4, batch 1 and 32, our
   kernels on/off, CUDA graphs on/off, and transformers on the same GPU.

    python benchmarks/gpu_kernels.py [--out benchmarks/results/gpu_kernels.json]
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

import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import CACHE, RESULTS  # noqa: E402

QWEN2_15B = dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                 num_key_value_heads=2, vocab_size=151936, max_position_embeddings=4096)
LAYER_SHAPES = [(1536, 2048), (1536, 1536), (1536, 17920), (8960, 1536)]  # (K, N): qkv, o, gate_up, down


def cuda_time(fn, repeat: int = 50) -> float:
    """Median seconds per call, measured with CUDA events after a warm-up."""
    for _ in range(5):
        fn()
    times = []
    for _ in range(repeat):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return statistics.median(times)


def copy_bandwidth() -> float:
    """Device-to-device copy of 1 GiB, counting read + write: the practical peak (bytes/s)."""
    a = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    b = torch.empty_like(a)
    return 2 * a.numel() / cuda_time(lambda: b.copy_(a), 20)


def bench_awq(ext, peak: float) -> list[dict]:
    from llm_infer.kernels.awq_torch import dequantize_awq, pack_awq

    rows = []
    for k, n in tqdm(LAYER_SHAPES, desc="awq"):
        qweight = pack_awq(torch.randint(0, 16, (k, n))).cuda()
        qzeros = pack_awq(torch.randint(0, 16, (k // 128, n))).cuda()
        scales = (torch.rand(k // 128, n) * 0.01).half().cuda()
        dense = torch.randn(n, k, dtype=torch.bfloat16, device="cuda")
        int4_bytes = qweight.numel() * 4 + qzeros.numel() * 4 + scales.numel() * 2
        for m in (1, 4, 8, 32, 128, 512):
            x = torch.randn(m, k, dtype=torch.bfloat16, device="cuda")
            ours = cuda_time(lambda: ext.awq_linear(x, qweight, qzeros, scales, 128, None))
            bf16 = cuda_time(lambda: torch.nn.functional.linear(x, dense))
            deq = cuda_time(lambda: torch.nn.functional.linear(
                x, dequantize_awq(qweight, qzeros, scales, 128).to(torch.bfloat16)))
            rows.append({"k": k, "n": n, "m": m, "ours_us": ours * 1e6, "torch_bf16_us": bf16 * 1e6,
                         "dequant_matmul_us": deq * 1e6, "ours_pct_of_peak_bw": 100 * int4_bytes / ours / peak,
                         "bf16_pct_of_peak_bw": 100 * dense.numel() * 2 / bf16 / peak})
    return rows


def bench_decode_attention(ext, peak: float) -> list[dict]:
    rows = []
    heads, kv_heads, dim, bs = 12, 2, 128, 16
    for batch, ctx in tqdm([(1, 1024), (1, 16384), (32, 1024), (32, 4096)], desc="attention"):
        blocks = batch * ctx // bs
        kc = torch.randn(blocks, bs, kv_heads, dim, dtype=torch.bfloat16, device="cuda")
        vc = torch.randn_like(kc)
        q = torch.randn(batch, heads * dim, dtype=torch.bfloat16, device="cuda")
        tables = torch.arange(blocks, dtype=torch.int32, device="cuda").view(batch, ctx // bs)
        i32 = dict(dtype=torch.int32, device="cuda")
        qs, ql, sl = torch.arange(batch, **i32), torch.ones(batch, **i32), torch.full((batch,), ctx, **i32)
        splits = max(1, ctx // 512)
        work = torch.empty(ext.decode_workspace_bytes(batch, 1, heads, dim, splits), dtype=torch.uint8, device="cuda")
        out = torch.empty_like(q)
        ours = cuda_time(lambda: ext.decode_attention(out, q, kc, vc, tables, qs, ql, sl, dim**-0.5, 1, splits, work))

        def sdpa():
            keys = kc.view(batch, ctx, kv_heads, dim).transpose(1, 2)
            values = vc.view(batch, ctx, kv_heads, dim).transpose(1, 2)
            return torch.nn.functional.scaled_dot_product_attention(
                q.view(batch, heads, 1, dim), keys, values, enable_gqa=True)

        torch_s = cuda_time(sdpa)
        kv_bytes = 2 * kc.numel() * 2
        rows.append({"batch": batch, "context": ctx, "ours_us": ours * 1e6, "sdpa_gathered_us": torch_s * 1e6,
                     "ours_pct_of_peak_bw": 100 * kv_bytes / ours / peak})
    return rows


def awq_checkpoint(dense: Path, out: Path, group: int = 128) -> Path:
    """Round-to-nearest int4 copy of a dense checkpoint in the AutoAWQ layout (speed only)."""
    from safetensors.torch import load_file, save_file

    from llm_infer.kernels.awq_torch import pack_awq
    from llm_infer.runtime.quant.awq_search import quantize_groups

    if (out / "config.json").is_file():
        return out
    out.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for file in sorted(dense.glob("*.safetensors")):
        for name, w in tqdm(load_file(file).items(), desc="RTN int4"):
            if name.endswith("proj.weight"):
                q, zeros, scales = quantize_groups(w.cuda().float(), group)
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


def decode_speed(model: Path, batch: int, kernels: str, graphs: bool, dtype: str = "bfloat16") -> float:
    from llm_infer import LLM, SamplingParams

    cfg = {"model": str(model), "dtype": dtype, "device": "cuda", "kernels": kernels, "cuda_graphs": graphs,
           "scheduler": {"max_num_seqs": max(batch, 1), "max_model_len": 2048}, "cache": {"memory_fraction": 0.5}}
    with LLM(cfg, progress=False) as llm:
        prompts = [[10 + (i * 7 + j) % 1000 for j in range(64)] for i in range(batch)]
        params = SamplingParams(max_tokens=128, temperature=0, ignore_eos=True)
        llm.generate(prompts, SamplingParams(max_tokens=8, temperature=0))
        runs = []
        for _ in range(3):
            outs = llm.generate(prompts, params)
            runs.append(sum(len(o.token_ids) - 1 for o in outs) / max(o.metrics.decode_time for o in outs))
    return statistics.median(runs)


def transformers_speed(model: Path, batch: int) -> float:
    import transformers

    hf = transformers.AutoModelForCausalLM.from_pretrained(model, dtype=torch.bfloat16).cuda().eval()
    ids = torch.randint(10, 1000, (batch, 64), device="cuda")
    kwargs = dict(do_sample=False, pad_token_id=0)
    hf.generate(ids, max_new_tokens=8, **kwargs)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    hf.generate(ids, max_new_tokens=1, **kwargs)
    torch.cuda.synchronize()
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    hf.generate(ids, max_new_tokens=128, min_new_tokens=128, **kwargs)
    torch.cuda.synchronize()
    return batch * 127 / (time.perf_counter() - t0 - first)


E2E_SYSTEMS = [("bf16, torch kernels", "dense", "torch", False), ("bf16, our kernels", "dense", "cuda", False),
               ("bf16, our kernels + graphs", "dense", "cuda", True), ("AWQ int4, torch kernels", "awq", "torch", False),
               ("AWQ int4, our kernels + graphs", "awq", "cuda", True)]


def dry_run(out: Path) -> None:
    """The plan without CUDA: shapes, systems, and every engine config validated."""
    from llm_infer.config import load_config

    for _, _, kernels, graphs in E2E_SYSTEMS:
        load_config({"model": "x", "dtype": "bfloat16", "device": "cuda", "kernels": kernels, "cuda_graphs": graphs,
                     "scheduler": {"max_num_seqs": 32, "max_model_len": 2048}, "cache": {"memory_fraction": 0.5}})
    plan = {"dry_run": True, "awq_shapes": LAYER_SHAPES, "awq_m": [1, 4, 8, 32, 128, 512],
            "attention": [[1, 1024], [1, 16384], [32, 1024], [32, 4096]], "model": QWEN2_15B,
            "end_to_end": [[b, name] for b in (1, 32) for name, *_ in E2E_SYSTEMS] + [[1, "transformers bf16"],
                                                                                      [32, "transformers bf16"]]}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(plan, indent=2))
    print(json.dumps(plan))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(RESULTS / "gpu_kernels.json"))
    p.add_argument("--skip-end-to-end", action="store_true")
    p.add_argument("--budget-s", type=float, default=None, help="skip end-to-end runs that would start after this")
    p.add_argument("--dry-run", action="store_true", help="print the plan and validate configs; no CUDA")
    args = p.parse_args()
    start = time.monotonic()
    if args.dry_run:
        dry_run(Path(args.out))
        return
    from llm_infer.kernels.cuda_extension import load_cuda_extension

    ext = load_cuda_extension()
    if ext is None:
        sys.exit("the CUDA kernels did not build here")
    props = torch.cuda.get_device_properties(0)
    driver = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                            capture_output=True, text=True).stdout.strip()
    peak = copy_bandwidth()
    report = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "device": props.name,
              "driver": driver, "torch": torch.__version__, "cuda": torch.version.cuda,
              "copy_bandwidth_gb_s": peak / 1e9, "awq": bench_awq(ext, peak),
              "decode_attention": bench_decode_attention(ext, peak)}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    if not args.skip_end_to_end and args.budget_s is not None and time.monotonic() - start > args.budget_s - 120:
        report["skipped"] = [{"end_to_end": "all", "reason": "under 120 s left to build the 1.5B checkpoints and run"}]
    elif not args.skip_end_to_end:
        from tests.checkpoints import make_checkpoint

        dense = CACHE / "qwen2-1.5b-random-bf16"
        if not (dense / "config.json").is_file():
            make_checkpoint(dense, "qwen2", dtype=torch.bfloat16, seed=3, **QWEN2_15B)
        models = {"dense": dense, "awq": awq_checkpoint(dense, CACHE / "qwen2-1.5b-random-awq-rtn")}
        # batch-1 decode reads every layer weight and the LM head once per token (bf16: 2 bytes each)
        params = QWEN2_15B["num_hidden_layers"] * sum(k * n for k, n in LAYER_SHAPES) + 151936 * 1536
        report["bf16_speed_of_light_tok_s"] = peak / (2 * params)
        report["end_to_end"], report["skipped"] = [], []
        runs = [(b, name, models[m], kernels, graphs) for b in (1, 32) for name, m, kernels, graphs in E2E_SYSTEMS]
        runs += [(b, "transformers bf16", dense, None, None) for b in (1, 32)]
        for batch, name, model, kernels, graphs in runs:
            if args.budget_s is not None and time.monotonic() - start > args.budget_s - 40:
                report["skipped"].append({"batch": batch, "system": name, "reason": "out of time"})
                continue
            speed = transformers_speed(model, batch) if kernels is None else decode_speed(model, batch, kernels, graphs)
            report["end_to_end"].append({"batch": batch, "system": name, "decode_tok_s": speed})
            out.write_text(json.dumps(report, indent=2))  # keep what is done if the run is cut short
    out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
