"""Choose the grammar engine by measurement: llguidance vs xgrammar on this machine.

For each JSON schema of tests/json_schemas.py, on the default model's tokenizer (49,152 tokens):
the first compile, a cached compile (llguidance: deep copy of a compiled matcher; xgrammar: its
compiler's cache), and the per-token mask time along a seeded random walk of allowed tokens
(at most 64 tokens). One process, one thread, both engines on the same schemas.

    PYTHONPATH=/path/to/xgrammar-site python benchmarks/grammar_engines.py

xgrammar is not a dependency (it requires transformers and triton); install it aside with
`pip install --no-deps --target DIR xgrammar apache-tvm-ffi` for this measurement.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.json_schemas import SCHEMAS  # noqa: E402

STEPS = 64


def allowed_ids(bitmask: torch.Tensor, vocab: int) -> list[int]:
    bits = (bitmask.unsqueeze(-1) >> torch.arange(32, dtype=torch.int32)) & 1
    return bits.flatten()[:vocab].nonzero().flatten().tolist()


def walk(fill, consume, done, vocab: int, seed: int) -> list[float]:
    """Per-token mask times (s) along a random walk of allowed tokens."""
    rng, times = random.Random(seed), []
    bitmask = torch.zeros(1, (vocab + 31) // 32, dtype=torch.int32)
    for _ in range(STEPS):
        if done():
            break
        start = time.perf_counter()
        fill(bitmask)
        times.append(time.perf_counter() - start)
        ids = allowed_ids(bitmask[0], vocab)
        if not ids:
            break
        consume(rng.choice(ids))
    return times


def bench_llguidance(tokenizer_json: str, vocab: int, eos: int) -> dict:
    from llguidance import LLMatcher, LLTokenizer

    start = time.perf_counter()
    tok = LLTokenizer(tokenizer_json, n_vocab=vocab, eos_token=eos)
    setup = time.perf_counter() - start
    first, cached, masks = [], [], []
    for i, schema in enumerate(tqdm(SCHEMAS, desc="llguidance")):
        start = time.perf_counter()
        matcher = LLMatcher(tok, LLMatcher.grammar_from_json_schema(json.dumps(schema)))
        first.append(time.perf_counter() - start)
        start = time.perf_counter()
        m = matcher.deep_copy()
        cached.append(time.perf_counter() - start)
        masks += walk(lambda b: m.unsafe_compute_mask_ptr(b.data_ptr(), b.numel() * 4), m.consume_token,
                      lambda: m.is_stopped() or m.is_error(), vocab, i)
    return summarize("llguidance", setup, first, cached, masks)


def bench_xgrammar(folder: Path, vocab: int) -> dict | None:
    try:
        import xgrammar as xgr
        from transformers import PreTrainedTokenizerFast
    except ImportError as e:
        print(f"xgrammar not measured: {e}")
        return None
    start = time.perf_counter()
    info = xgr.TokenizerInfo.from_huggingface(PreTrainedTokenizerFast(tokenizer_file=str(folder / "tokenizer.json")),
                                              vocab_size=vocab)
    compiler = xgr.GrammarCompiler(info, max_threads=1)
    setup = time.perf_counter() - start
    first, cached, masks = [], [], []
    for i, schema in enumerate(tqdm(SCHEMAS, desc="xgrammar")):
        text = json.dumps(schema)
        start = time.perf_counter()
        compiled = compiler.compile_json_schema(text)
        first.append(time.perf_counter() - start)
        start = time.perf_counter()
        compiled = compiler.compile_json_schema(text)
        cached.append(time.perf_counter() - start)
        m = xgr.GrammarMatcher(compiled)
        masks += walk(lambda b: m.fill_next_token_bitmask(b, 0), m.accept_token, m.is_terminated, vocab, i)
    return summarize("xgrammar", setup, first, cached, masks)


def summarize(name: str, setup: float, first: list[float], cached: list[float], masks: list[float]) -> dict:
    ms = lambda xs: round(1e3 * statistics.median(xs), 4)  # noqa: E731
    return {"engine": name, "tokenizer_setup_ms": round(1e3 * setup, 1), "compile_first_median_ms": ms(first),
            "compile_first_max_ms": round(1e3 * max(first), 3), "compile_cached_median_ms": ms(cached),
            "mask_median_ms": ms(masks), "mask_p90_ms": round(1e3 * sorted(masks)[int(0.9 * len(masks))], 4),
            "mask_mean_ms": round(1e3 * statistics.fmean(masks), 4), "tokens": len(masks)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="benchmarks/results/grammar_engines.json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    from llm_infer.runtime.models.default_model import ensure_default_model

    folder = Path(ensure_default_model())
    tokenizer_json = (folder / "tokenizer.json").read_text()
    vocab = json.loads((folder / "config.json").read_text())["vocab_size"]
    rows = [bench_llguidance(tokenizer_json, vocab, 2), bench_xgrammar(folder, vocab)]
    rows = [r for r in rows if r]
    result = {"schemas": len(SCHEMAS), "vocab": vocab, "threads": 1, "results": rows}
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    for r in rows:
        print(r)


if __name__ == "__main__":
    main()
