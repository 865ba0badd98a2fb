"""Prefix caching (shared KV blocks, copy-on-write, LRU eviction) and chunked prefill.

Oracle: the same requests with prefix caching off. Block bookkeeping is checked on
the BlockManager directly; prefill savings are asserted as token counts.
"""

from __future__ import annotations

import pytest

from llm_infer import LLM, SamplingParams
from llm_infer.runtime.block_manager import BlockManager
from llm_infer.runtime.prefix_hash import extend_block_hashes
from llm_infer.runtime.request import Request
from tests import introspect
from tests.conftest import tiny_engine_config

GREEDY = SamplingParams(max_tokens=12, temperature=0, ignore_eos=True)
SYSTEM = list(range(200, 241))  # 41 tokens: 10 full blocks of 4 and one more
QUESTIONS = [[11, 12, 13], [14], [15, 16, 17, 18, 19, 20, 21], [22, 23], [11, 12, 13]]


def _seq(i: int, tokens: list[int]) -> Request:
    return Request(i, str(i), list(tokens), SamplingParams(), seed=0)


def _admit(blocks: BlockManager, seq: Request) -> None:
    """What the scheduler does for a waiting sequence, then 'computes' its whole prompt."""
    prefix = blocks.cached_prefix(seq)
    n = seq.num_tokens - blocks.prefix_tokens(seq, prefix)
    assert blocks.can_allocate(seq, n, prefix)
    blocks.admit(seq, prefix)
    blocks.allocate(seq, n)
    seq.num_computed_tokens += n
    blocks.register(seq)


def test_block_keys_cover_the_whole_prefix():
    a = extend_block_hashes([], [1, 2, 3, 4, 5, 6, 7, 8, 9], 4)
    b = extend_block_hashes([], [0, 2, 3, 4, 5, 6, 7, 8], 4)
    assert len(a) == 2 and len(b) == 2
    assert a[0] != b[0] and a[1] != b[1], "same tokens in block 1 but another prefix: another key"
    assert extend_block_hashes(a[:1], [1, 2, 3, 4, 5, 6, 7, 8], 4) == a


def test_shared_blocks_are_reference_counted_and_survive_their_owners():
    blocks = BlockManager(num_blocks=16, block_size=4, prefix_caching=True)
    a, b = _seq(0, list(range(10))), _seq(1, list(range(8)) + [50, 51, 52])
    _admit(blocks, a)
    _admit(blocks, b)
    assert b.block_table[:2] == a.block_table[:2], "the two full blocks of the common prefix are shared"
    assert b.block_table[2] != a.block_table[2]
    assert blocks.hit_tokens == 8 and blocks.num_free_blocks == 16 - 4
    shared = a.block_table[:2]
    blocks.free(a)
    assert blocks.num_free_blocks == 16 - 3, "a's private last block is free; the shared ones are b's"
    blocks.free(b)
    assert blocks.num_free_blocks == 16 and blocks.usage() == 0.0
    c = _seq(2, list(range(9)))
    assert blocks.cached_prefix(c) == shared
    _admit(blocks, c)
    assert c.num_computed_tokens == 9 and blocks.hit_tokens == 16


def test_a_fully_cached_prompt_recomputes_its_last_token_into_a_copy_of_a_shared_block():
    blocks = BlockManager(num_blocks=8, block_size=4, prefix_caching=True)
    a, b = _seq(0, list(range(8))), _seq(1, list(range(8)))
    _admit(blocks, a)
    prefix = blocks.cached_prefix(b)
    assert prefix == a.block_table and blocks.prefix_tokens(b, prefix) == 7
    blocks.admit(b, prefix)
    blocks.allocate(b, 1)
    (src, dst), = blocks.take_copies()
    assert src == a.block_table[1] and b.block_table == [a.block_table[0], dst]
    assert blocks.take_copies() == []
    # Held by nobody else: written in place, and it stops being a cache entry until it is full again.
    blocks.free(a), blocks.free(b)
    c = _seq(2, list(range(8)))
    prefix = blocks.cached_prefix(c)
    blocks.admit(c, prefix)
    blocks.allocate(c, 1)
    assert blocks.take_copies() == [] and c.block_table == prefix


def test_eviction_takes_plain_free_blocks_first_then_the_least_recently_used_cache_entries():
    blocks = BlockManager(num_blocks=6, block_size=4, prefix_caching=True)
    old, new = _seq(0, list(range(8))), _seq(1, list(range(100, 108)))
    _admit(blocks, old)
    blocks.free(old)
    _admit(blocks, new)
    blocks.free(new)
    assert blocks.num_cached_blocks == 4 and blocks.num_free_blocks == 6
    filler = _seq(2, list(range(200, 212)))  # 3 blocks: the 2 plain ones, then the oldest entry
    blocks.admit(filler, [])
    blocks.allocate(filler, 12)
    assert len(blocks.cached_prefix(_seq(3, list(range(8))))) == 1, "old's last block went first"
    assert len(blocks.cached_prefix(_seq(4, list(range(100, 108))))) == 2, "the newer prefix is intact"


@pytest.fixture(scope="module")
def pair(tiny_models):
    """The same tiny model with prefix caching on and off."""
    path = tiny_models["qwen2"]
    on = LLM(tiny_engine_config(path), progress=False)
    off = LLM(tiny_engine_config(path, cache={"prefix_caching": False}), progress=False)
    yield on, off
    on.close(), off.close()


def test_outputs_are_identical_with_prefix_caching_on_and_off(pair):
    on, off = pair
    prompts = [SYSTEM + q for q in QUESTIONS]
    sampled = SamplingParams(max_tokens=12, temperature=0.8, top_p=0.9, seed=7)
    for params in (GREEDY, sampled):
        want = [o.token_ids for o in off.generate(prompts, params)]
        assert [o.token_ids for o in on.generate(prompts, params)] == want
        assert [on.generate(p, params)[0].token_ids for p in prompts] == want, "one at a time, all hits"
    assert introspect.block_manager(on).hit_tokens > 0 and introspect.block_manager(off).hit_tokens == 0


def test_a_repeated_long_prompt_computes_only_its_uncached_tail(pair):
    on, _ = pair
    prompt = list(range(100, 163))  # 63 tokens: 15 full blocks of 4
    stats = introspect.engine_stats(on)
    before = stats.prefill_tokens
    first = on.generate(prompt, GREEDY)[0]
    computed_first = stats.prefill_tokens - before
    second = on.generate(prompt, GREEDY)[0]
    computed_second = stats.prefill_tokens - before - computed_first
    assert computed_first == 63
    assert computed_second == 63 - 60, "the 15 cached blocks are reused; the last 3 tokens are computed"
    assert second.token_ids == first.token_ids


@pytest.mark.parametrize("tp", [1, pytest.param(2, marks=pytest.mark.slow)])  # TP=2: worker processes
def test_copy_on_write_while_the_owner_is_still_running(tiny_models, tp):
    """B's prompt is A's, block-aligned: B reuses every block and must not write into A's last one."""
    prompt = list(range(250, 274))  # 6 full blocks
    configs = {"on": {}, "off": {"cache": {"prefix_caching": False}}}
    results = {}
    for name, extra in configs.items():
        with LLM(tiny_engine_config(tiny_models["qwen2"], parallel={"tensor": tp}, **extra), progress=False) as llm:
            engine = llm.engine
            a = engine.add_request(prompt, SamplingParams(max_tokens=16, temperature=0, ignore_eos=True))
            engine.step()  # A's prompt is computed and its blocks are cache entries
            b = engine.add_request(prompt, SamplingParams(max_tokens=8, temperature=0, ignore_eos=True))
            copies: list[tuple[int, int]] = []
            blocks = introspect.block_manager(llm)
            take = blocks.take_copies

            def recording_take() -> list[tuple[int, int]]:
                taken = take()
                copies.extend(taken)
                return taken

            blocks.take_copies = recording_take
            done = {}
            while engine.has_unfinished():
                for out in engine.step():
                    if out.finished:
                        done[out.request_id] = out.token_ids
            results[name] = (done[a], done[b], blocks.hit_tokens, len(copies))
    (a_on, b_on, hits, copied), (a_off, b_off, _, _) = results["on"], results["off"]
    assert (a_on, b_on) == (a_off, b_off)
    assert b_on == a_on[:8]
    assert hits == 23, "B computed only its last prompt token"
    assert copied == 1, "into its own copy of the shared last block"


def test_logits_requests_bypass_the_cache(pair):
    on, _ = pair
    prompt = SYSTEM + [1, 2, 3]
    first = on.logits(prompt)
    on.generate(prompt, GREEDY)
    again = on.logits(prompt)
    assert first.shape[0] == again.shape[0] == len(prompt)
    assert (first - again).abs().max() < 1e-5


def test_a_long_prompt_arriving_mid_stream_is_chunked_and_does_not_stall_a_running_decode(tiny_models):
    cfg = tiny_engine_config(tiny_models["qwen2"], scheduler={"max_num_batched_tokens": 8})
    with LLM(cfg, progress=False) as llm:
        engine = llm.engine
        short = engine.add_request([5, 6, 7], SamplingParams(max_tokens=40, temperature=0, ignore_eos=True))
        for _ in range(3):
            engine.step()
        long = engine.add_request(list(range(30, 90)), SamplingParams(max_tokens=4, temperature=0))
        steps_until_first_token, short_tokens = 0, 0
        while True:
            outs = {o.request_id: o for o in engine.step()}
            steps_until_first_token += 1
            short_tokens += short in outs
            if long in outs:
                break
        # 60 prompt tokens with 7 of every 8-token step left beside the decode: 9 steps.
        assert steps_until_first_token == 9
        assert short_tokens == steps_until_first_token, "the running stream got a token every step"
