"""Time from a worker's death to the next token: a non-zero rank is killed (SIGKILL) or stopped
(SIGSTOP, declared hung after `parallel.timeout_s`) while seeded requests stream; the engine
replaces the workers and recomputes the requests. Reported per round: the kill-to-next-token
time, the part spent starting the new workers (processes, rendezvous, weights, KV cache), the
normal inter-token time before the kill, and whether every request's tokens equal an
uninterrupted run's.

    python benchmarks/recovery_cpu.py                          # default model, configs/tp3.yaml
    python benchmarks/recovery_cpu.py --set model=DIR --set parallel.tensor=2 --tokens 32 --rounds 1 \\
        --out /tmp/recovery.json                               # a small check
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import RESULTS  # noqa: E402

PROMPT = "Write a short story about a lighthouse keeper who finds a message in a bottle."


def run(llm, prompts: list[list[int]], params, kill_at: int | None, sig: signal.Signals) -> dict:
    """Stream the requests; before step `kill_at` send `sig` to rank 1. Returns tokens and times."""
    engine = llm.engine
    ids = [engine.add_request(p, sp) for p, sp in zip(prompts, params)]
    tokens = {i: [] for i in ids}
    gaps, step, last, killed_at, next_token_s = [], 0, None, None, None
    while engine.has_unfinished():
        if step == kill_at:
            pid = llm._executor.channel.hello[1]["pid"]
            killed_at = time.perf_counter()
            os.kill(pid, sig)
        outs = engine.step()
        now = time.perf_counter()
        if any(o.outputs[0].new_token_ids for o in outs):
            if killed_at is not None and next_token_s is None:
                next_token_s = now - killed_at
            elif killed_at is None and last is not None:
                gaps.append(now - last)
            last = now
        for o in outs:
            tokens[o.request_id] += o.outputs[0].new_token_ids
        step += 1
    return {"tokens": [tokens[i] for i in ids], "next_token_s": next_token_s,
            "inter_token_s": statistics.median(gaps) if gaps else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/tp3.yaml")
    ap.add_argument("--set", action="append", default=[], help="dotted.key=value overrides")
    ap.add_argument("--requests", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--kill-at-step", type=int, default=16)
    ap.add_argument("--signal", choices=["KILL", "STOP"], default="KILL")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default=str(RESULTS / "recovery_cpu.json"))
    args = ap.parse_args()

    from llm_infer import LLM, SamplingParams

    sig = signal.SIGKILL if args.signal == "KILL" else signal.SIGSTOP
    overrides = ["dtype=float32", *args.set]  # fp32: a resumed request's tokens equal the uninterrupted run's
    with LLM(args.config, overrides=overrides, progress=False) as llm:
        prompts = [llm.tokenizer.encode_chat([{"role": "user", "content": f"{PROMPT} ({i})"}])
                   for i in range(args.requests)]
        params = [SamplingParams(max_tokens=args.tokens, temperature=0.8, seed=100 + i, ignore_eos=True)
                  for i in range(args.requests)]
        reference = run(llm, prompts, params, None, sig)["tokens"]
        rounds = []
        for _ in range(args.rounds):
            r = run(llm, prompts, params, args.kill_at_step, sig)
            rounds.append({"kill_to_next_token_s": r["next_token_s"], "inter_token_s": r["inter_token_s"],
                           "restart_s": llm.engine.recovery.last_restart_s,
                           "identical_tokens": r["tokens"] == reference})
        c = llm.config
        result = {"config": args.config, "overrides": overrides, "model": c.model,
                  "tensor": c.parallel.tensor, "pipeline": c.parallel.pipeline, "launcher": c.parallel.launcher,
                  "timeout_s": c.parallel.timeout_s, "signal": args.signal, "requests": args.requests,
                  "tokens": args.tokens, "kill_at_step": args.kill_at_step, "rounds": rounds,
                  "median_kill_to_next_token_s": statistics.median(r["kill_to_next_token_s"] for r in rounds),
                  "median_restart_s": statistics.median(r["restart_s"] for r in rounds)}
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "rounds"}, indent=1))


if __name__ == "__main__":
    main()
