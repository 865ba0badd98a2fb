"""What grammar-constrained output costs: decode tok/s with a JSON-schema grammar on vs off at
batch 1 and 16, schema compile time (first and cached), and the per-token mask time.

    python benchmarks/structured_output_cpu.py [--rounds 3] [--threads 2]

The default model in bf16 on CPU, chat prompts asking for a JSON list, 64 new tokens, sampled
(temperature 0.8, seeded). "off" ignores end-of-sequence so it also makes 64 tokens; "json
schema" constrains to an array of at least 40 {"city", "population"} objects, which cannot end
within 64 tokens. Both run on the same engine in the same process, interleaved over the rounds;
medians. Compile and mask times are measured on the model's tokenizer with the schemas of
tests/json_schemas.py and by replaying the constrained outputs through a fresh matcher.
Writes benchmarks/results/structured_output_cpu.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import RESULTS  # noqa: E402
from tests.json_schemas import SCHEMAS  # noqa: E402

SCHEMA = {"type": "array", "minItems": 40, "items": {
    "type": "object", "properties": {"city": {"type": "string"}, "population": {"type": "integer"}},
    "required": ["city", "population"], "additionalProperties": False}}
QUESTION = "List the 50 largest cities of the world with their population, as a JSON array."


def decode_rate(llm, prompts: list[list[int]], constrained: bool, gen_len: int) -> tuple[float, list[list[int]]]:
    from llm_infer import SamplingParams

    extra = {"structured_outputs": {"json": SCHEMA}} if constrained else {"ignore_eos": True}
    params = [SamplingParams(max_tokens=gen_len, temperature=0.8, seed=i, **extra) for i in range(len(prompts))]
    start = time.perf_counter()
    outs = llm.generate(prompts, params)
    first = max(o.metrics.first_token_time for o in outs)
    end = time.perf_counter()
    assert start < first and all(len(o.token_ids) == gen_len for o in outs), [len(o.token_ids) for o in outs]
    return sum(len(o.token_ids) - 1 for o in outs) / (end - first), [o.token_ids for o in outs]


def compile_times(llm) -> dict:
    from llm_infer.runtime.structured_output.compiler import GrammarCompiler
    from llm_infer.runtime.structured_output.params import StructuredOutputsParams

    start = time.perf_counter()
    compiler = GrammarCompiler(llm.tokenizer, llm.model_config.vocab_size, llm.tokenizer.eos_token_ids)
    setup = time.perf_counter() - start
    first, cached = [], []
    for schema in SCHEMAS:
        grammar = StructuredOutputsParams(json=schema).to_grammar()
        for times in (first, cached):
            start = time.perf_counter()
            compiler.check(grammar) if times is first else None
            compiler.matcher(grammar)
            times.append(time.perf_counter() - start)
    return {"tokenizer_setup_ms": 1e3 * setup, "schemas": len(SCHEMAS),
            "first_median_ms": 1e3 * statistics.median(first), "first_max_ms": 1e3 * max(first),
            "cached_median_ms": 1e3 * statistics.median(cached)}, compiler


def mask_times(compiler, outputs: list[list[int]], vocab: int) -> dict:
    """Per token: filling the bitmask row and advancing the matcher; per step of 16 rows: applying it."""
    from llm_infer.runtime.structured_output.constraint import RequestConstraint, apply_token_bitmask
    from llm_infer.runtime.structured_output.params import ConstraintSpec, StructuredOutputsParams

    grammar = StructuredOutputsParams(json=SCHEMA).to_grammar()
    fill, accept = [], []
    row = torch.zeros((vocab + 31) // 32, dtype=torch.int32)
    for tokens in outputs:
        c = RequestConstraint(ConstraintSpec(grammar), compiler)
        for t in tokens:
            start = time.perf_counter()
            c.fill(row)
            fill.append(time.perf_counter() - start)
            start = time.perf_counter()
            assert c.accept(t)
            accept.append(time.perf_counter() - start)
    logits, bitmask = torch.randn(16, vocab), torch.full((16, (vocab + 31) // 32), -1, dtype=torch.int32)
    apply = []
    for _ in range(50):
        start = time.perf_counter()
        apply_token_bitmask(logits, bitmask)
        apply.append(time.perf_counter() - start)
    return {"fill_median_ms": 1e3 * statistics.median(fill), "fill_p90_ms": 1e3 * sorted(fill)[int(0.9 * len(fill))],
            "accept_median_ms": 1e3 * statistics.median(accept), "apply_16_rows_median_ms": 1e3 * statistics.median(apply),
            "tokens": len(fill)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--gen-len", type=int, default=64)
    p.add_argument("--out", default=str(RESULTS / "structured_output_cpu.json"))
    args = p.parse_args()
    from llm_infer import LLM

    llm = LLM({"model": "default", "dtype": "bfloat16", "threads": args.threads,
               "cache": {"prefix_caching": False}, "scheduler": {"max_num_seqs": 16}}, progress=False)
    prompts = [llm.tokenizer.encode_chat([{"role": "user", "content": f"{QUESTION} ({i})"}]) for i in range(16)]
    decode_rate(llm, prompts[:2], True, 8)  # warm-up (and the engine's grammar compiler)
    samples = {name: {"batch 1": [], "batch 16": []} for name in ("off", "json schema")}
    outputs: list[list[int]] = []
    for _ in tqdm(range(args.rounds), desc="rounds"):
        for name in samples:
            for batch, size in (("batch 1", 1), ("batch 16", 16)):
                rate, outs = decode_rate(llm, prompts[:size], name != "off", args.gen_len)
                samples[name][batch].append(rate)
                outputs = outs if name != "off" and size == 16 else outputs
    compiled, compiler = compile_times(llm)
    masks = mask_times(compiler, outputs, llm.model_config.vocab_size)
    llm.close()
    med = {name: {b: statistics.median(v) for b, v in by.items()} for name, by in samples.items()}
    decode = {name: {b: {"decode_tok_s": r, "vs_off": r / med["off"][b]} for b, r in by.items()}
              for name, by in med.items()}
    result = {"model": "default (SmolLM2-135M-Instruct)", "dtype": "bfloat16", "threads": args.threads,
              "gen_len": args.gen_len, "rounds": args.rounds, "engine": "llguidance", "decode": decode,
              "compile": compiled, "mask": masks, "samples": samples}
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    for name, by in decode.items():
        print(f"{name:12s} " + "  ".join(f"{b}: {r['decode_tok_s']:7.1f} tok/s ({r['vs_off']:.3f}x)"
                                        for b, r in by.items()))
    print("compile", {k: round(v, 3) for k, v in compiled.items()})
    print("mask", {k: round(v, 4) for k, v in masks.items()})


if __name__ == "__main__":
    main()
