"""Deterministic mode (`deterministic: true`): a request's tokens and logits are bitwise the same
alone, again with its prefix cached, first in a batch of 8 mixed-length requests, chunked by
`max_num_batched_tokens: 17`, after preemption, and with n-gram speculation, in bf16; under TP=2
(gloo) for that layout. Each build of the C++ kernels this CPU runs (`native`, and the AVX2 build
on an AVX-512 CPU) keeps the guarantee on its own: the same machine and build give the same bits.
And what holds in the default mode: the same workload on a fresh engine gives the same bits
(run-to-run), nothing more across batches, chunks or cache hits in bf16.
"""

from __future__ import annotations

import os

import pytest
import torch

from llm_infer import LLM, SamplingParams
from llm_infer.errors import ConfigError
from tests import introspect
from tests.conftest import cpu_variants, default_model_or_skip, tiny_engine_config

SAMPLED = SamplingParams(max_tokens=48, temperature=1.0, top_p=0.95, seed=1234, ignore_eos=True, logprobs=5)
TINY_PROMPT = [257, 72, 101, 108, 108, 111, 44, 32, 119, 111, 114, 108, 100, 33, 10, 84, 104, 101] * 3
OTHERS = [[(7 * i + j) % 200 + 3 for j in range(5 + 9 * i)] for i in range(7)]  # 5 .. 59 tokens


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_linear_invariant_rows_do_not_depend_on_the_other_rows(dtype, cpu_ext):
    """The oracle is each row computed alone (M = 1, the decode GEMV): every row count, every
    position of the row in the call, with a bias and N not a multiple of the tile width; on each
    build's own path (its tile shapes for 1, 2, 3..8 and more rows differ)."""
    ext = cpu_ext
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(203, 96, generator=gen).to(dtype)
    bias = torch.randn(203, generator=gen).to(dtype)
    x = torch.randn(150, 96, generator=gen).to(dtype)
    alone = torch.cat([ext.linear_invariant(x[i : i + 1], w, bias) for i in range(150)])
    for rows in (2, 3, 4, 5, 7, 8, 9, 10, 16, 17, 64, 65, 66, 150):
        start = 150 - rows
        assert torch.equal(ext.linear_invariant(x[start:], w, bias), alone[start:]), rows
    torch.testing.assert_close(alone.float(), torch.nn.functional.linear(x.float(), w.float(), bias.float()),
                               atol=0.1 if dtype == torch.bfloat16 else 1e-4, rtol=0.02)


def test_fixed_chunk_attention_rows_do_not_depend_on_how_queries_are_split(cpu_ext):
    """One sequence of 300 positions (block 16, chunk 64): its last 40 query rows attended in one call
    (as a prefill chunk), as 40 calls of one row (decode), and inside a batch with another sequence."""
    ext = cpu_ext
    gen = torch.Generator().manual_seed(1)
    heads, kv_heads, dim, block, length = 4, 2, 64, 16, 300
    blocks = torch.randperm(40, generator=gen)[: -(-length // block)]
    k_cache = torch.randn(40, block, kv_heads, dim, generator=gen).bfloat16()
    v_cache = torch.randn(40, block, kv_heads, dim, generator=gen).bfloat16()
    q = torch.randn(length, heads * dim, generator=gen).bfloat16()
    table = blocks[None, :].clone()

    def attend(rows: range, others: int = 0) -> torch.Tensor:
        n = len(rows)
        out = torch.zeros(n + others, heads, dim, dtype=torch.bfloat16)
        qs = torch.cat([q[rows.start : rows.stop], q[:others]])
        tables, starts = [table[0]], [0]
        q_lens, seq_lens = [n], [rows.stop]
        if others:  # a second sequence: the first `others` positions, one query row each as decode
            tables.append(table[0])
            starts.append(n)
            q_lens.append(others)
            seq_lens.append(others)
        ext.paged_attention(out, qs, k_cache, v_cache, torch.stack(tables), torch.tensor(starts),
                            torch.tensor(q_lens), torch.tensor(seq_lens), dim ** -0.5, 64)
        return out[:n]

    whole = attend(range(length - 40, length))
    one_by_one = torch.cat([attend(range(p, p + 1)) for p in range(length - 40, length)])
    assert torch.equal(whole, one_by_one)
    assert torch.equal(attend(range(length - 40, length), others=20), whole)


def tiny_config(model, **extra) -> dict:
    return tiny_engine_config(model, dtype="bfloat16", deterministic=True, **extra)


def default_config(**extra) -> dict:
    cfg = {"model": "default", "dtype": "bfloat16", "deterministic": True, "cache": {"num_blocks": 128},
           "scheduler": {"max_model_len": 1024}}
    for key, value in extra.items():
        cfg[key] = {**cfg.get(key, {}), **value} if isinstance(value, dict) else value
    return cfg


def fingerprint(out) -> tuple[list[int], list[tuple]]:
    """The tokens and the bits of their scores (log-softmax of the raw logits, top 5)."""
    return out.token_ids, [(lp.logprob, tuple(lp.top)) for lp in out.logprobs]


def logits_in_a_batch(llm: LLM, prompt: list[int], others: list[list[int]]) -> torch.Tensor:
    """LLM.logits of `prompt` computed while `others` decode in the same steps."""
    engine = llm.engine
    ids = [engine.add_request(o, SamplingParams(max_tokens=8, temperature=0, ignore_eos=True)) for o in others]
    engine.step()  # the others are running: the prompt's rows share steps with their decodes
    target = engine.add_request(prompt, SamplingParams(max_tokens=0, temperature=0), return_logits=True)
    result = None
    while engine.has_unfinished():
        for out in engine.step():
            if out.request_id == target and out.finished:
                result = out.logits[: len(prompt)]
    for i in ids:
        engine.abort(i)
    return result


def check_all_variants(config: dict, prompt: list[int], others: list[list[int]], every_engine: bool = True) -> None:
    """The seeded request alone is the oracle; every other way of running it must give its bits.
    `every_engine=False`: only alone, cached, batched and chunked (the ways whose matmuls see
    other row counts), not preemption and speculation."""
    base = dict(config)
    with LLM(base, progress=False) as llm:
        if base.get("parallel") is None:  # the engine runs the build LLM_INFER_CPU_ISA names
            build = introspect.runner(llm).kernels.linear.__module__
            assert build.startswith(f"llm_infer_cpu_{os.environ.get('LLM_INFER_CPU_ISA', 'native')}_"), build
        alone = llm.generate([prompt], SAMPLED)[0]
        hits = introspect.block_manager(llm).hit_tokens
        again = llm.generate([prompt], SAMPLED)[0]
        assert introspect.block_manager(llm).hit_tokens > hits, "the second run reused cached prefix blocks"
        batched = llm.generate([prompt, *others], SAMPLED)[0]
        logits = llm.logits(prompt)
        assert torch.equal(logits_in_a_batch(llm, prompt, others), logits)
    want = fingerprint(alone)
    assert fingerprint(again) == want, "cached prefix"
    assert fingerprint(batched) == want, "first in a batch of 8"

    chunked_cfg = {**base, "scheduler": {**base.get("scheduler", {}), "max_num_batched_tokens": 17}}
    with LLM(chunked_cfg, progress=False) as llm:
        assert fingerprint(llm.generate([prompt, *others], SAMPLED)[0]) == want, "chunked by 17 tokens"
        assert torch.equal(llm.logits(prompt), logits), "logits of a prompt prefilled in chunks of 17"
    if not every_engine:
        return

    # A KV budget too small for all three: the request admitted last is preempted and recomputed.
    long_run = SamplingParams(max_tokens=48, temperature=0, ignore_eos=True)
    block = base.get("cache", {}).get("block_size", 16)
    need = -(-(len(prompt) + 48) // block)
    tight = {**base, "cache": {**base.get("cache", {}), "num_blocks": 2 * need + need // 2},
             "scheduler": {**base.get("scheduler", {}), "max_model_len": need * block}}
    with LLM(tight, progress=False) as llm:
        outs = llm.generate([others[6], others[5], prompt], [long_run, long_run, SAMPLED])
        assert outs[2].metrics.num_preemptions > 0, "the KV budget preempted the request"
        assert fingerprint(outs[2]) == want, "after preemption"

    with LLM({**base, "speculative": {"method": "ngram"}}, progress=False) as llm:
        assert fingerprint(llm.generate([prompt], SAMPLED)[0]) == want, "with n-gram speculation"


@pytest.mark.parametrize("build", cpu_variants())
def test_tiny_bf16_request_is_bitwise_the_same_in_every_variant(tiny_models, build, monkeypatch):
    """On each build of the C++ kernels this CPU runs; the AVX2 build beside native (an AVX-512
    CPU) through the engines whose matmuls see other row counts only, to keep the tier short."""
    monkeypatch.setenv("LLM_INFER_CPU_ISA", build)
    check_all_variants(tiny_config(tiny_models["qwen2"]), TINY_PROMPT, OTHERS, every_engine=build == cpu_variants()[0])


@pytest.mark.slow  # the default model, several engines
def test_default_model_bf16_request_is_bitwise_the_same_in_every_variant():
    default_model_or_skip()
    with LLM(default_config(), progress=False) as llm:
        chat = lambda text: llm.tokenizer.encode_chat([{"role": "user", "content": text}])  # noqa: E731
        prompt = chat("Write a short poem about the sea, then explain its imagery.")
        others = [chat("Hi!"), chat("Name three colours."), chat("What is 2 + 2? Answer in one word."),
                  chat("Translate 'good morning' into French, Spanish and German."),
                  chat("List the planets of the solar system in order from the sun, with one fact each."),
                  chat("Why is the sky blue?"), chat("Give me a recipe for pancakes with exact quantities.")]
    check_all_variants(default_config(), prompt, others)


@pytest.mark.slow  # worker processes
def test_tp2_bf16_request_is_bitwise_the_same_in_every_variant(tiny_models):
    check_all_variants(tiny_config(tiny_models["qwen2"], parallel={"tensor": 2}), TINY_PROMPT, OTHERS)
    assert introspect.worker_processes() == []


@pytest.mark.slow  # worker processes
def test_tp2_preempted_request_reuses_cached_blocks_when_readmitted(tiny_models):
    """Regression: a request preempted under TP=2 is re-admitted from its own cached prefix blocks
    (every rank kept them), and the result is the bits of an uninterrupted run."""
    cfg = tiny_config(tiny_models["qwen2"], parallel={"tensor": 2})
    with LLM(cfg, progress=False) as llm:
        want = fingerprint(llm.generate([TINY_PROMPT], SAMPLED)[0])
    need = -(-(len(TINY_PROMPT) + 48) // 4)
    tight = tiny_config(tiny_models["qwen2"], parallel={"tensor": 2}, cache={"num_blocks": 2 * need + need // 2},
                        scheduler={"max_model_len": need * 4})
    long_run = SamplingParams(max_tokens=48, temperature=0, ignore_eos=True)
    with LLM(tight, progress=False) as llm:
        # Two long requests first, then the prompt: the newest running request is the one preempted
        # when blocks run out; its freed blocks stay cache entries (the others evict from their ends).
        engine = llm.engine
        others = [engine.add_request(o, long_run) for o in (OTHERS[6], OTHERS[5])]
        engine.step()
        rid = engine.add_request(TINY_PROMPT, SAMPLED)
        engine.step()
        blocks = introspect.block_manager(llm)
        hits_before = blocks.hit_tokens
        result = None
        while engine.has_unfinished():
            for out in engine.step():
                if out.request_id == rid and out.finished:
                    result = out
        assert result.metrics.num_preemptions > 0
        assert blocks.hit_tokens > hits_before, "re-admission found the prompt's blocks in the cache"
        assert fingerprint(result) == want
        assert not engine.has_unfinished() and len(others) == 2
    assert introspect.worker_processes() == []


def test_default_mode_gives_the_same_bits_run_to_run(tiny_models):
    """Without deterministic mode the promise is run-to-run: the same requests on a fresh engine."""
    cfg = tiny_engine_config(tiny_models["qwen2"], dtype="bfloat16")
    runs = []
    for _ in range(2):
        with LLM(cfg, progress=False) as llm:
            outs = llm.generate([TINY_PROMPT, *OTHERS], SAMPLED)
            runs.append(([fingerprint(o) for o in outs], llm.logits(TINY_PROMPT)))
    assert runs[0][0] == runs[1][0] and torch.equal(runs[0][1], runs[1][1])


def test_deterministic_mode_refuses_what_it_does_not_cover(tiny_models):
    with pytest.raises(ConfigError, match="deterministic: true does not cover quantization.lm_head: int8"):
        LLM(tiny_config(tiny_models["qwen2"], quantization={"lm_head": "int8"}), progress=False)
    with pytest.raises(ConfigError, match="deterministic: true needs kernels: auto"):
        LLM(tiny_config(tiny_models["qwen2"], kernels="torch"), progress=False)
