"""Two revisions of llm-infer side by side in one run: `llm-infer bench` decode speed on the
default model, and decode speed of a tiny model under TP=2 / PP=2 local processes (where a
step is a few hundred microseconds, so any growth of the per-step control path shows).

    python benchmarks/ab_revisions.py --base REV [--head REV] [--rounds 3] [--only NAME ...]

The base revision (and --head, else this working tree) is checked out into a git worktree
(`benchmarks/.cache/ab-base`, `ab-head`); each
round runs every configuration on both revisions, alternating which goes first, each in a
fresh process; medians over rounds. Writes benchmarks/results/ab_revisions.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / "benchmarks" / ".cache"
CONFIGS = {  # name -> (config, bench arguments)
    "default bf16": ({"model": "default", "dtype": "bfloat16"}, ["--prompt-len", "128", "--gen-len", "64",
                                                                 "--batch", "8", "--repeat", "3"]),
    "default bf16 b16": ({"model": "default", "dtype": "bfloat16"}, ["--prompt-len", "128", "--gen-len", "64",
                                                                     "--batch", "16", "--repeat", "3"]),
    "default bf16 b32": ({"model": "default", "dtype": "bfloat16"}, ["--prompt-len", "128", "--gen-len", "64",
                                                                     "--batch", "32", "--repeat", "3"]),
    # int4 weights (the RTN copy `llm-infer quantize --method rtn --group-size 64` writes there) + int8 head
    "default int4 int8 head": ({"model": str(CACHE / "smollm2-rtn-g64"), "dtype": "bfloat16",
                                "quantization": {"lm_head": "int8"}},
                               ["--prompt-len", "128", "--gen-len", "64", "--batch", "8", "--repeat", "3"]),
    "tiny TP=2": ({"dtype": "float32", "parallel": {"tensor": 2}}, ["--prompt-len", "32", "--gen-len", "128",
                                                                     "--batch", "4", "--repeat", "3"]),
    "tiny PP=2": ({"dtype": "float32", "parallel": {"pipeline": 2}}, ["--prompt-len", "32", "--gen-len", "128",
                                                                       "--batch", "4", "--repeat", "3"]),
}


def tiny_model() -> Path:
    sys.path.insert(0, str(ROOT))
    from tests.checkpoints import make_checkpoint

    path = CACHE / "tiny-qwen2-ab"
    if not (path / "config.json").is_file():
        make_checkpoint(path, "qwen2")
    return path


def worktree(rev: str, name: str) -> Path:
    path = CACHE / f"ab-{name}"
    if path.exists():
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(path)], check=True)
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(path), rev], check=True,
                   capture_output=True)
    return path


def cli_module(tree: Path) -> str:
    for package in ("entrypoints", "launcher"):
        if (tree / "llm_infer" / package / "cli.py").is_file():
            return f"llm_infer.{package}.cli"
    raise SystemExit(f"no llm-infer CLI in {tree}")


def run_bench(tree: Path, config: dict, args: list[str], tmp: Path) -> dict:
    cfg, out = tmp / "config.json", tmp / "bench.json"
    cfg.write_text(json.dumps(config))  # YAML is a superset of JSON
    env = dict(os.environ, PYTHONPATH=str(tree))
    run = subprocess.run([sys.executable, "-m", cli_module(tree), "bench", "--config", str(cfg), "--out", str(out),
                          *args], cwd=tmp, env=env, capture_output=True, text=True, timeout=1800)
    if run.returncode != 0:
        raise SystemExit(f"bench failed in {tree}:\n{run.stderr[-3000:]}")
    return json.loads(out.read_text())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", required=True, help="the revision to compare with")
    p.add_argument("--head", default=None, help="the revision to measure (default: this working tree)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "ab_revisions.json"))
    p.add_argument("--only", nargs="+", choices=list(CONFIGS), default=None, help="these configurations only")
    args = p.parse_args()
    configs = {name: CONFIGS[name] for name in args.only or CONFIGS}
    for name, (config, _) in configs.items():
        if config.get("model", "default") != "default" and not Path(config["model"]).is_dir():
            raise SystemExit(f"{name}: {config['model']} is missing (llm-infer quantize --model default --out "
                             f"{config['model']} --group-size 64 --method rtn)")
    trees = {"base": worktree(args.base, "base"), "head": worktree(args.head, "head") if args.head else ROOT}
    tiny = str(tiny_model())
    samples: dict[str, dict[str, list[dict]]] = {name: {"base": [], "head": []} for name in configs}
    with tempfile.TemporaryDirectory() as tmp:
        jobs = [(r, name) for r in range(args.rounds) for name in configs]
        for r, name in tqdm(jobs, desc="rounds x configs", unit="pair"):
            config, bench_args = configs[name]
            config = {"model": tiny, **config} if "model" not in config else config
            order = ["base", "head"] if r % 2 == 0 else ["head", "base"]
            for rev in order:
                samples[name][rev].append(run_bench(trees[rev], config, bench_args, Path(tmp)))
    summary = {}
    for name, by_rev in samples.items():
        row = {}
        for rev, runs in by_rev.items():
            batched = next(k for k in runs[0]["results"] if k != "batch_1")
            row[rev] = {"decode_tok_s_batch1": statistics.median(x["results"]["batch_1"]["decode_tok_s"] for x in runs),
                        "decode_tok_s_batched": statistics.median(x["results"][batched]["decode_tok_s"] for x in runs),
                        "ttft_ms_batch1": 1e3 * statistics.median(x["results"]["batch_1"]["ttft_s"] for x in runs)}
        row["head_vs_base_batch1"] = row["head"]["decode_tok_s_batch1"] / row["base"]["decode_tok_s_batch1"]
        row["head_vs_base_batched"] = row["head"]["decode_tok_s_batched"] / row["base"]["decode_tok_s_batched"]
        summary[name] = row
    head = args.head or subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                                       capture_output=True, text=True).stdout.strip() + " (working tree)"
    result = {"base": args.base, "head": head,
              "rounds": args.rounds, "threads": os.cpu_count(), "summary": summary, "samples": samples}
    Path(args.out).write_text(json.dumps(result, indent=2))
    for name, row in summary.items():
        print(f"{name:16s} batch 1: {row['base']['decode_tok_s_batch1']:7.1f} -> {row['head']['decode_tok_s_batch1']:7.1f}"
              f" tok/s ({row['head_vs_base_batch1']:.2f}x)   batched: {row['base']['decode_tok_s_batched']:7.1f} -> "
              f"{row['head']['decode_tok_s_batched']:7.1f} ({row['head_vs_base_batched']:.2f}x)")


if __name__ == "__main__":
    main()
