"""Two facts the README's speculative section states, measured on the default model:

1. How often an early exit after layer N (final norm + head on layer N's hidden state)
   agrees with the full model's argmax, over benchmarks/data/heldout.txt (transformers, fp32):
   why the `layers` draft is rarely accepted.
2. In bf16, how many of the spec tests' prompts give the same greedy tokens at batch 8 as
   at batch 1 with speculation off: batching alone changes rounding on near-ties.

    python benchmarks/spec_checks.py      # writes benchmarks/results/spec_checks.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import RESULTS, ROOT  # noqa: E402


def early_exit_agreement(layers: list[int]) -> dict[int, float]:
    import transformers

    from llm_infer.runtime.models.default_model import ensure_default_model

    path = ensure_default_model()
    tok = transformers.AutoTokenizer.from_pretrained(path)
    model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    ids = tok((ROOT / "benchmarks" / "data" / "heldout.txt").read_text()[:1500], return_tensors="pt").input_ids
    with torch.no_grad():
        out = model(ids, output_hidden_states=True)
        final = out.logits[0].argmax(-1)
        return {n: float((model.lm_head(model.model.norm(out.hidden_states[n]))[0].argmax(-1) == final)
                         .float().mean()) for n in layers}


def bf16_batch_agreement() -> dict[str, int]:
    from llm_infer import LLM, SamplingParams
    from tests.test_speculative import DEFAULT_PROMPTS

    with LLM({"model": "default", "scheduler": {"max_model_len": 512}}, progress=False) as llm:
        prompts = [llm.tokenizer.encode_chat([{"role": "user", "content": p}]) for p in DEFAULT_PROMPTS[:8]]
        params = SamplingParams(max_tokens=32, temperature=0)
        one = [llm.generate([p], params)[0].token_ids for p in prompts]
        eight = [o.token_ids for o in llm.generate(prompts, params)]
    return {"identical": sum(a == b for a, b in zip(one, eight)), "prompts": len(prompts)}


def main() -> None:
    result = {"early_exit_agreement": early_exit_agreement([4, 8, 12, 16, 20, 24]),
              "bf16_batch8_vs_batch1": bf16_batch_agreement()}
    print(json.dumps(result, indent=2))
    (RESULTS / "spec_checks.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
