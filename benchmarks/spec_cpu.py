"""Speculative decoding on CPU with the default model: `llm-infer bench --speculative` for
ngram, draft and layers against speculation off, in three configurations:

- main: bf16 target, K=4, draft = our AWQ int4 copy of the default model;
- draft-k2: the same AWQ draft with K=2;
- fp32-target: an fp32 target (a step twice as costly) with the same AWQ draft, K=2/4,
  to show where a model draft starts to pay.

Writes benchmarks/results/spec_cpu.json. Usage: python benchmarks/spec_cpu.py [--repeat 3] [--only RUN ...]

`--isa native|avx2` instead runs ngram against off only (bf16 target, K=4) on that build of our
kernels; `avx2` on a CPU with AVX-512 holds torch to what an AVX2-only CPU runs
(`common.TORCH_AS_ON_AVX2`). Writes benchmarks/results/spec_cpu_ngram_<isa>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.awq_cpu import quantized_models  # noqa: E402
from benchmarks.common import RESULTS, ROOT, TORCH_AS_ON_AVX2  # noqa: E402

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
    parser.add_argument("--isa", choices=["native", "avx2"], help="ngram vs off only, on this build")
    args = parser.parse_args()
    if args.isa:
        return ngram_on_build(args.isa, args.repeat, args.gen_len)
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


def ngram_on_build(isa: str, repeat: int, gen_len: int) -> None:
    from llm_infer.kernels.cpu_extension import cpu_features

    env = dict(os.environ, LLM_INFER_CPU_ISA=isa)
    capped = isa == "avx2" and "avx512f" in cpu_features()
    if capped:
        env.update(TORCH_AS_ON_AVX2)
    path = RESULTS / f"spec_cpu_ngram_{isa}.json"
    cmd = [sys.executable, "-m", "llm_infer.entrypoints.cli", "bench", "--speculative", "ngram", "--repeat",
           str(repeat), "--gen-len", str(gen_len), "--out", str(path)]
    print(f"== ngram on the {isa} build (torch held to {'AVX2' if capped else 'this CPU'})", flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT, env=env)
    result = json.loads(path.read_text())
    result.update(build=isa, torch_capped_to="AVX2" if capped else "this CPU")
    path.write_text(json.dumps(result, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
