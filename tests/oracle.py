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


def assert_logits_and_tokens_match(ours: tuple[list[int], torch.Tensor], want: tuple[list[int], torch.Tensor]) -> None:
    """`engine_greedy`'s (tokens, logits) against the oracle's: fp32 logits within 1e-4 x max|logit|,
    identical greedy tokens (the oracle's logits must not be flat)."""
    assert want[1].std() > 0.1
    err = float((ours[1] - want[1]).abs().max())
    assert err <= 1e-4 * float(want[1].abs().max()), f"logits differ by {err}"
    assert ours[0] == want[0]


def assert_layout_matches_tp1(config: dict, parallel: dict, prompts: list[list[int]], steps: int = 32) -> None:
    """An engine built from `config` with `parallel` gives one rank's logits of prompts[0] (within
    1e-4) and greedy tokens of every prompt."""
    greedy = SamplingParams(max_tokens=steps, temperature=0, ignore_eos=True)
    with LLM(config, progress=False) as llm:
        want_logits, want = llm.logits(prompts[0]), [o.token_ids for o in llm.generate(prompts, greedy)]
    with LLM({**config, "parallel": parallel}, progress=False) as llm:
        torch.testing.assert_close(llm.logits(prompts[0]), want_logits, atol=1e-4, rtol=0)
        assert [o.token_ids for o in llm.generate(prompts, greedy)] == want
