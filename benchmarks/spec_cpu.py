"""Speculative decoding on CPU with the default model: `llm-infer bench --speculative` for
ngram, draft and layers against speculation off, in three configurations:

- main: bf16 target, K=4, draft = our AWQ int4 copy of the default model;
- draft-k2: the same AWQ draft with K=2;
- fp32-target: an fp32 target (a step twice as costly) with the same AWQ draft, K=2/4,
  to show where a model draft starts to pay.

Writes benchmarks/results/spec_cpu.json. Usage: python benchmarks/spec_cpu.py [--repeat 3] [--only RUN ...]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.awq_cpu import quantized_models  # noqa: E402
from benchmarks.common import RESULTS, ROOT  # noqa: E402

RUNS = {
    "main": ("ngram,draft,layers", []),
    "draft_k2": ("draft", ["speculative.num_tokens=2"]),
    "fp32_target_k4": ("draft", ["dtype=float32"]),
    "fp32_target_k2": ("draft", ["dtype=float32", "speculative.num_tokens=2"]),
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--gen-len", type=int, default=64)
    parser.add_argument("--only", nargs="*", choices=list(RUNS), help="rerun these, keeping the others' results")
    args = parser.parse_args()
    draft = quantized_models()["awq"]
    path = RESULTS / "spec_cpu.json"
    results = json.loads(path.read_text()) if args.only and path.is_file() else {}
    for name, (methods, sets) in RUNS.items():
        if args.only and name not in args.only:
            continue
        with tempfile.NamedTemporaryFile(suffix=".json") as out:
            cmd = [sys.executable, "-m", "llm_infer.entrypoints.cli", "bench", "--speculative", methods,
                   "--draft-model", str(draft), "--repeat", str(args.repeat), "--gen-len", str(args.gen_len),
                   "--out", out.name]
            for s in sets:
                cmd += ["--set", s]
            print(f"== {name}: {' '.join(cmd[3:])}", flush=True)
            subprocess.run(cmd, check=True, cwd=ROOT)
            results[name] = json.loads(Path(out.name).read_text())
    RESULTS.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
