"""The C++ paged attention kernel against torch on the default model's shapes (9 query heads,
3 KV heads, head_dim 64, 16-token blocks, bf16), decode and speculative verification:

- ours, per build variant this CPU runs (`avx2`, and `native` = AVX-512 where the CPU has it);
- torch paged: what the runtime does without our kernel (`TorchAttentionBackend`: gather the
  blocks, then SDPA with the query heads of a KV head stacked);
- torch SDPA alone on keys and values already contiguous (no gather): the kernel's floor.

One process, every method timed in each round in turn; per-call times, the median of single
calls in a round, then the median over rounds.
Writes benchmarks/results/attention_cpu.json (with the load average: the 2-core machines are
shared, and a 2-thread OpenMP call whose second thread is descheduled waits a whole time slice).
Usage: python benchmarks/attention_cpu.py [--rounds 7] [--threads 2]
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
from llm_infer.kernels.attention_metadata import AttentionMetadata, query_start_loc  # noqa: E402
from llm_infer.kernels.attention_torch import TorchAttentionBackend  # noqa: E402
from llm_infer.kernels.cpu_extension import host_variants, load_cpu_extension  # noqa: E402

HEADS, KV_HEADS, DIM, BLOCK = 9, 3, 64, 16
CASES = {  # name -> (sequences, query rows each, context length)
    "decode b1 L128": (1, 1, 128),
    "decode b1 L512": (1, 1, 512),
    "decode b1 L1024": (1, 1, 1024),
    "decode b8 L512": (8, 1, 512),
    "verify K=4 b1 L512": (1, 5, 512),
}


def make_case(seqs: int, q_len: int, length: int, gen: torch.Generator):
    per_seq = -(-length // BLOCK)
    num_blocks = seqs * per_seq + 1
    tables = torch.randperm(num_blocks, generator=gen)[: seqs * per_seq].view(seqs, per_seq).contiguous()
    k_cache = torch.randn(num_blocks, BLOCK, KV_HEADS, DIM, generator=gen).bfloat16()
    v_cache = torch.randn(num_blocks, BLOCK, KV_HEADS, DIM, generator=gen).bfloat16()
    q = torch.randn(seqs * q_len, HEADS * DIM, generator=gen).bfloat16()
    positions = torch.arange(length - q_len, length).repeat(seqs)
    seq_of = torch.arange(seqs).repeat_interleave(q_len)
    slots = tables[seq_of, positions // BLOCK] * BLOCK + positions % BLOCK
    meta = AttentionMetadata([q_len] * seqs, [length] * seqs, query_start_loc([q_len] * seqs), slots, tables, BLOCK,
                             None)
    return q, k_cache, v_cache, meta


def methods(case, exts: dict):
    q, kc, vc, meta = case
    seqs, q_len, length = len(meta.query_lens), meta.query_lens[0], meta.seq_lens[0]
    scale = DIM**-0.5
    out = torch.empty(q.shape[0], HEADS, DIM, dtype=q.dtype)
    starts = torch.tensor(meta.query_start_loc[:-1])
    q_lens, seq_lens = torch.tensor(meta.query_lens), torch.tensor(meta.seq_lens)
    found = {}
    for variant, ext in exts.items():
        found[f"ours ({variant})"] = lambda ext=ext: ext.paged_attention(out, q, kc, vc, meta.block_tables, starts,
                                                                         q_lens, seq_lens, scale)
    ref = TorchAttentionBackend()
    meta.backend = ref
    ref.prepare(meta)
    found["torch paged (gather + SDPA)"] = lambda: ref.attend(q, q, q, kc, vc, meta, scale, HEADS)
    # SDPA alone: keys/values [B, kvh, L, D] and the group's query rows stacked, causal over the last rows.
    group = HEADS // KV_HEADS
    keys = kc.view(-1, KV_HEADS, DIM)[ref_slots(meta)].transpose(1, 2).contiguous()
    values = vc.view(-1, KV_HEADS, DIM)[ref_slots(meta)].transpose(1, 2).contiguous()
    qb = q.view(seqs, q_len, KV_HEADS, group, DIM).permute(0, 2, 3, 1, 4).reshape(seqs, KV_HEADS, group * q_len, DIM)
    mask = None
    if q_len > 1:
        visible = torch.arange(length)[None, :] <= torch.arange(length - q_len, length)[:, None]
        mask = visible.repeat(group, 1)[None, None]
    found["torch SDPA alone (contiguous K/V)"] = lambda: F.scaled_dot_product_attention(qb, keys, values,
                                                                                         attn_mask=mask, scale=scale)
    return found


def ref_slots(meta: AttentionMetadata) -> torch.Tensor:
    length = meta.seq_lens[0]
    pos = torch.arange(length)
    return meta.block_tables[:, pos // BLOCK] * BLOCK + pos % BLOCK  # [B, L]


def per_call_us(fn, budget_s: float = 0.15) -> float:
    """The median of single calls' times over `budget_s`: a call the OS preempts (the 2-core
    machines are shared) is one outlier, not a share of a mean."""
    fn()
    times, start = [], time.perf_counter()
    while time.perf_counter() - start < budget_s:
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    exts = {v: load_cpu_extension(v) for v in host_variants()}
    exts = {v: e for v, e in exts.items() if e is not None}
    gen = torch.Generator().manual_seed(0)
    results = {"threads": args.threads, "rounds": args.rounds, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
               "isa": {v: e.isa_paths()["attention"] for v, e in exts.items()}, "cases": {}}
    for name, shape in CASES.items():
        fns = methods(make_case(*shape, gen), exts)
        times = {m: [] for m in fns}
        for _ in range(args.rounds):
            for m, fn in fns.items():
                times[m].append(per_call_us(fn))
        results["cases"][name] = {m: statistics.median(t) for m, t in times.items()}
        print(name, {m: round(t, 1) for m, t in results["cases"][name].items()}, flush=True)
    results["load_average_1min"] = os.getloadavg()[0]  # other work on the machine while this ran
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "attention_cpu.json"
    path.write_text(json.dumps(results, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
