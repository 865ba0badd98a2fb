"""`llm-infer bench --speculative ngram,draft,layers`: each method against speculation off, on
the same prompts in one run, at batch 1, greedy.

Two prompt sets: input-grounded (the answer copies from a given passage or code snippet, where
prompt lookup shines) and open-ended. Every method, including off, is loaded once; the rounds
interleave them so machine noise hits all alike, and medians are reported. Per method:

- target step: the worker time of one plain decode step (from the `off` runs);
- draft: time to propose the K tokens of one step, and per proposed token;
- verify: the worker time of the target pass over the pending token and K proposals, only
  steps proposing the full K (its ratio to the target step is the cost of verifying);
- acceptance (accepted / proposed), mean tokens per decode step, end-to-end decode tok/s
  (after the first token) and its ratio to off, and how many outputs are identical to off's.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from pathlib import Path
from typing import Any, Callable

import torch
from tqdm import tqdm

from llm_infer.errors import UserError
from llm_infer.entrypoints.bench import PASSAGE
from llm_infer.runtime.sampling_params import SamplingParams

METHODS = ("ngram", "draft", "layers")
CODE = (
    "def moving_average(values, window):\n"
    "    result = []\n"
    "    for i in range(len(values) - window + 1):\n"
    "        total = 0\n"
    "        for j in range(window):\n"
    "            total += values[i + j]\n"
    "        result.append(total / window)\n"
    "    return result\n"
)
PROMPTS = {
    "grounded": [
        f"Summarise this passage in three sentences.\n\n{PASSAGE}",
        f"Extract the sentences of this passage that mention machines, word for word.\n\n{PASSAGE}",
        f"Add type hints and a docstring to this function. Return the whole function.\n\n{CODE}",
        f"Rename the variable `total` to `window_sum` in this code and return the full code.\n\n{CODE}",
    ],
    "open": [
        "Write a short story about a lighthouse keeper.",
        "Explain how a hash map works to a new programmer.",
        "Give five ideas for a weekend trip, with one sentence each.",
        "What are the pros and cons of remote work?",
    ],
}


def _round(llm, prompts: list[list[int]], params: SamplingParams) -> dict[str, Any]:
    """Generate each prompt alone; collect per-step timings and the outputs."""
    engine = llm.engine
    spec = engine.spec.stats if engine.spec is not None else None
    k_max = llm.config.speculative.num_tokens
    out: dict[str, Any] = {"tokens": 0, "decode_s": 0.0, "step_s": [], "verify_s": [], "draft_s": [],
                           "proposed": 0, "accepted": 0, "spec_steps": 0, "outputs": []}
    for prompt in prompts:
        engine.add_request(prompt, params)
        first = None
        while engine.has_unfinished():
            before = (spec.steps, spec.proposed, spec.accepted, spec.draft_time_s, spec.verify_time_s) if spec else None
            updates = engine.step()
            now = time.perf_counter()
            if first is None:  # the prefill step, which emitted the first token
                first = now
                continue
            if spec is None or spec.steps == before[0]:
                out["step_s"].append(engine.stats.last_step_timing.worker_s)
                continue
            proposed, accepted = spec.proposed - before[1], spec.accepted - before[2]
            out["proposed"] += proposed
            out["accepted"] += accepted
            out["spec_steps"] += 1
            if proposed == k_max:
                out["draft_s"].append(spec.draft_time_s - before[3])
                out["verify_s"].append(spec.verify_time_s - before[4])
        final = updates[-1]
        out["tokens"] += len(final.token_ids) - 1
        out["decode_s"] += now - first
        out["outputs"].append(final.token_ids)
    return out


def _summary(runs: list[dict[str, Any]], off: dict[str, Any] | None, k: int) -> dict[str, Any]:
    rates = [r["tokens"] / r["decode_s"] for r in runs]
    every = {key: [x for r in runs for x in r[key]] for key in ("step_s", "verify_s", "draft_s")}
    proposed = sum(r["proposed"] for r in runs)
    s: dict[str, Any] = {"decode_tok_s": statistics.median(rates), "rounds": len(runs)}
    if every["step_s"] and not proposed:
        s["target_step_ms"] = 1e3 * statistics.median(every["step_s"])
    if proposed:
        s["acceptance"] = sum(r["accepted"] for r in runs) / proposed
        s["tokens_per_step"] = sum(r["tokens"] for r in runs) / sum(r["spec_steps"] + len(r["step_s"]) for r in runs)
    if every["verify_s"]:
        s["verify_ms"] = 1e3 * statistics.median(every["verify_s"])
        s["draft_ms"] = 1e3 * statistics.median(every["draft_s"])
        s["draft_ms_per_token"] = s["draft_ms"] / k
    if off is not None:
        s["speedup"] = s["decode_tok_s"] / off["decode_tok_s"]
        if "verify_ms" in s:
            s["verify_over_step"] = s["verify_ms"] / off["target_step_ms"]
            s["draft_token_over_step"] = s["draft_ms_per_token"] / off["target_step_ms"]
    return s


def run_spec_bench(args: argparse.Namespace, make_llm: Callable[..., Any]) -> int:
    methods = [m.strip() for m in args.speculative.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if not methods or unknown:
        raise UserError(f"--speculative takes a comma-separated list of {', '.join(METHODS)}; got {args.speculative!r}")
    if "draft" in methods and not args.draft_model:
        raise UserError("--speculative draft needs --draft-model (a model folder or default)")
    if args.gen_len < 2 or args.repeat < 1:
        raise UserError("--gen-len must be >= 2 and --repeat >= 1")
    llms: dict[str, Any] = {}
    try:
        for name in ["off", *methods]:
            extra = [f"speculative.method={'null' if name == 'off' else name}"]
            if name == "draft":
                extra.append(f"speculative.draft_model={args.draft_model}")
            run_args = copy.copy(args)
            run_args.overrides = [*args.overrides, *extra]
            llms[name] = make_llm(run_args, progress=False)
            llms[name].engine.executor.set_profiling(True)  # the per-step worker time read by _round
        off_llm = llms["off"]
        k = off_llm.config.speculative.num_tokens
        params = SamplingParams(max_tokens=args.gen_len, temperature=0)
        prompts = {group: [off_llm.tokenizer.encode_chat([{"role": "user", "content": p}]) for p in texts]
                   for group, texts in PROMPTS.items()}
        for llm in llms.values():  # warm-up
            _round(llm, [prompts["open"][0]], SamplingParams(max_tokens=8, temperature=0))
        runs: dict[str, dict[str, list]] = {g: {m: [] for m in llms} for g in prompts}
        for _ in tqdm(range(args.repeat), desc="speculative bench", unit="round"):
            for group, group_prompts in prompts.items():
                for name, llm in llms.items():
                    runs[group][name].append(_round(llm, group_prompts, params))
        config = off_llm.config
        result: dict[str, Any] = {
            "model": config.model, "dtype": off_llm.worker_info()["dtype"],
            "threads": torch.get_num_threads(),
            "num_tokens": k, "draft_model": args.draft_model, "gen_len": args.gen_len, "repeat": args.repeat,
            "draft_layers": config.speculative.draft_layers, "overrides": args.overrides, "groups": {},
        }
        for group, by_method in runs.items():
            off = _summary(by_method["off"], None, k)
            table = {"off": off}
            for name in methods:
                table[name] = _summary(by_method[name], off, k)
                ref = by_method["off"][0]["outputs"]
                table[name]["identical_outputs"] = sum(a == b for a, b in zip(by_method[name][0]["outputs"], ref))
                table[name]["prompts"] = len(ref)
            result["groups"][group] = table
    finally:
        for llm in llms.values():
            llm.close()
    _print(result)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")
    return 0


def _print(result: dict[str, Any]) -> None:
    print(f"batch 1, greedy, K={result['num_tokens']}, {result['threads']} threads, "
          f"median of {result['repeat']} rounds")
    for group, table in result["groups"].items():
        off = table["off"]
        print(f"[{group}] off: {off['decode_tok_s']:.1f} tok/s, target step {off.get('target_step_ms', 0):.2f} ms")
        for name, s in table.items():
            if name == "off":
                continue
            verify = (f"verify {s['verify_ms']:.2f} ms ({s['verify_over_step']:.2f}x step), "
                      f"draft {s['draft_ms']:.2f} ms/step ({s['draft_token_over_step']:.2f}x step per token), "
                      if "verify_ms" in s else "no full-K steps, ")
            print(f"  {name:>6}: {s['decode_tok_s']:.1f} tok/s ({s['speedup']:.2f}x), {verify}"
                  f"acceptance {s.get('acceptance', 0):.2f}, {s.get('tokens_per_step', 1):.2f} tokens/step, "
                  f"identical {s['identical_outputs']}/{s['prompts']}")
