"""Greedy decoding with per-position logits, ours and transformers', for the oracle tests."""

from __future__ import annotations

import torch

from llm_infer import LLM, SamplingParams


def hf_cached_greedy(hf, prompt: list[int], steps: int) -> tuple[list[int], torch.Tensor]:
    """Greedy tokens and the float32 logits `[len(prompt) + steps - 1, vocab]` of every position,
    decoding one token at a time over transformers' KV cache (as its `generate` does; dynamic
    NTK RoPE depends on it)."""
    with torch.no_grad():
        out = hf(torch.tensor([prompt]), use_cache=True)
        logits, tokens = [out.logits[0]], []
        for _ in range(steps):
            tokens.append(int(logits[-1][-1].argmax()))
            out = hf(torch.tensor([[tokens[-1]]]), cache=out.past_key_values, use_cache=True)
            logits.append(out.logits[0])
    return tokens, torch.cat(logits)[:-1]


def engine_greedy(llm: LLM, prompt: list[int], steps: int, lora: str | None = None) -> tuple[list[int], torch.Tensor]:
    """Our greedy tokens and the logits of every position (a prefill, then one-token decode
    steps over the paged cache); `lora`: the adapter the request names."""
    params = SamplingParams(max_tokens=steps, temperature=0, ignore_eos=True, lora=lora)
    rid = llm.engine.add_request(prompt, params, return_logits=True)
    out = None
    while llm.engine.has_unfinished():
        for o in llm.engine.step():
            if o.request_id == rid and o.finished:
                out = o
    return out.token_ids, out.logits
