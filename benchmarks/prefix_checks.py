"""The fact the README's prefix-caching section states about bf16, on the default model:
how many chats sharing a system prompt give the same greedy tokens with prefix caching on
(their suffix computed on top of cached blocks) as off (the whole prompt prefilled).

    python benchmarks/prefix_checks.py      # writes benchmarks/results/prefix_checks.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import RESULTS  # noqa: E402

SYSTEM = ("You are a helpful assistant for a hardware store. Answer briefly, politely and only about tools, "
          "materials and home repair. ") * 3
QUESTIONS = ["How do I fix a leaky faucet?", "What glue works on wood?", "Which drill bit for concrete?",
             "How to paint a door?", "What is a torque wrench?", "How do I hang a shelf?", "Best way to cut tile?",
             "How to remove rust?"]


def greedy_tokens(prefix_caching: bool) -> tuple[list[list[int]], int]:
    from llm_infer import LLM, SamplingParams

    with LLM({"model": "default", "cache": {"prefix_caching": prefix_caching}}, progress=False) as llm:
        prompts = [llm.tokenizer.encode_chat([{"role": "system", "content": SYSTEM}, {"role": "user", "content": q}])
                   for q in QUESTIONS]
        llm.generate(prompts[:1], SamplingParams(max_tokens=1, temperature=0))  # caches the system prompt
        params = SamplingParams(max_tokens=48, temperature=0)
        return [llm.generate(p, params)[0].token_ids for p in prompts], llm.engine.block_manager.hit_tokens


def main() -> None:
    off, _ = greedy_tokens(False)
    on, hits = greedy_tokens(True)
    result = {"dtype": "bfloat16", "chats": len(QUESTIONS), "max_tokens": 48, "prefix_hit_tokens": hits,
              "identical_on_vs_off": sum(a == b for a, b in zip(on, off))}
    print(json.dumps(result, indent=2))
    (RESULTS / "prefix_checks.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
