"""Continuous batching, preemption, stopping and streaming behave like one request run alone."""

from __future__ import annotations

import pytest

from llm_infer import LLM, SamplingParams
from tests import introspect
from tests.conftest import tiny_engine_config

GREEDY = SamplingParams(max_tokens=24, temperature=0, ignore_eos=True)
PROMPTS = ["Hello", "The quick brown fox jumps over", "a", "Numbers: 1 2 3 4 5 6 7 8 9 10 11 12",
           "Once upon a time, in a land far away, there lived", "xyz", "Lorem ipsum dolor sit amet", "?!"]


@pytest.fixture(scope="module")
def llm(tiny_models):
    engine = LLM(tiny_engine_config(tiny_models["qwen2"]), progress=False)
    yield engine
    engine.close()


def test_alone_and_in_a_mixed_batch_give_identical_tokens(llm):
    alone = [llm.generate(p, GREEDY)[0].token_ids for p in PROMPTS]
    batched = [o.token_ids for o in llm.generate(PROMPTS, GREEDY)]
    assert batched == alone
    assert len({tuple(t) for t in alone}) > 1, "prompts should not all give the same output"


def test_requests_joining_a_running_batch_do_not_change_outputs(llm):
    expected = {p: llm.generate(p, GREEDY)[0].token_ids for p in PROMPTS[:4]}
    engine = llm.engine
    ids = {engine.add_request(PROMPTS[0], GREEDY): PROMPTS[0]}
    got = {}
    step = 0
    while engine.has_unfinished() or step < 3:
        if step < 3:  # one new request per step while the first is decoding
            ids[engine.add_request(PROMPTS[step + 1], GREEDY)] = PROMPTS[step + 1]
        for out in engine.step():
            if out.finished:
                got[ids[out.request_id]] = out.token_ids
        step += 1
    assert got == expected


def test_preemption_recomputes_to_identical_outputs(tiny_models):
    path = tiny_models["qwen2"]
    roomy = LLM(tiny_engine_config(path), progress=False)
    # 40 blocks of 4 tokens cannot hold 8 sequences of ~40 tokens at once.
    tight = LLM(tiny_engine_config(path, cache={"num_blocks": 40}, scheduler={"max_model_len": 128}), progress=False)
    params = SamplingParams(max_tokens=32, temperature=0, ignore_eos=True)
    want = [o.token_ids for o in roomy.generate(PROMPTS, params)]
    outs = tight.generate(PROMPTS, params)
    assert [o.token_ids for o in outs] == want
    assert introspect.scheduler(tight).num_preemptions > 0
    assert sum(o.metrics.num_preemptions for o in outs) > 0
    assert introspect.block_manager(tight).num_free_blocks == 40, "every block is returned at the end"


def test_seeded_sampling_reproduces_alone_and_batched(llm):
    params = SamplingParams(max_tokens=16, temperature=1.0, seed=1234)
    a = llm.generate("Hello", params)[0].token_ids
    b = llm.generate(["Hello", "other", "prompts", "here"], params)[0].token_ids
    c = llm.generate("Hello", SamplingParams(max_tokens=16, temperature=1.0, seed=99))[0].token_ids
    assert a == b
    assert a != c


def test_temperature_zero_is_greedy(llm):
    greedy = llm.generate("Hello", GREEDY)[0].token_ids
    logits = llm.logits(llm.tokenizer.encode("Hello"))
    assert greedy[0] == int(logits[-1].argmax())


def test_stop_conditions(llm):
    base = llm.generate("Hello", SamplingParams(max_tokens=20, temperature=0, ignore_eos=True))[0]
    assert base.finish_reason == "length" and len(base.token_ids) == 20
    stop_tok = base.token_ids[5]
    by_token = llm.generate("Hello", SamplingParams(max_tokens=20, temperature=0, stop_token_ids=[stop_tok]))[0]
    assert by_token.finish_reason == "stop"
    assert by_token.token_ids == base.token_ids[: base.token_ids.index(stop_tok) + 1]
    text = base.text
    stop = text[4:7] if len(text) > 8 else text[-2:]
    by_string = llm.generate("Hello", SamplingParams(max_tokens=20, temperature=0, stop=[stop]))[0]
    assert by_string.finish_reason == "stop"
    assert by_string.text == text[: text.index(stop)]


def test_streaming_never_splits_a_character_and_holds_back_stop_prefixes(llm):
    # The tiny tokenizer is byte-level: each byte of a multi-byte character is its own token.
    prompt = list("héllo 🤗 wörld".encode())
    tok = llm.tokenizer
    from llm_infer.runtime.detokenizer import IncrementalDetokenizer

    detok = IncrementalDetokenizer(tok, [72])
    pieces = [detok.add(t) for t in prompt]
    assert "".join(pieces) == "héllo 🤗 wörld"
    assert all("\ufffd" not in p for p in pieces)
    assert pieces[prompt.index(0xF0) : prompt.index(0xF0) + 3] == ["", "", ""], "emoji waits for its 4th byte"
    updates = list(llm.stream("Hello", SamplingParams(max_tokens=20, temperature=0, ignore_eos=True)))
    assert "".join(u.new_text for u in updates) == updates[-1].text
    assert updates[-1].finished


def test_logits_of_a_prompt_through_the_cache_equal_decode_logits(llm):
    prompt = llm.tokenizer.encode("The quick brown fox")
    full = llm.logits(prompt)
    prefix = llm.logits(prompt[:-1])
    assert full.shape == (len(prompt), llm.model_config.vocab_size)
    assert (full[:-1] - prefix).abs().max() < 1e-5


def test_automatic_request_ids_never_take_an_id_a_caller_chose(llm):
    engine = llm.engine
    taken = engine.add_request([1, 2, 3], SamplingParams(max_tokens=2), request_id="1000")
    auto = [engine.add_request([1, 2, 3], SamplingParams(max_tokens=2)) for _ in range(1100)]
    assert taken not in auto and len(set(auto)) == len(auto)
    for rid in [taken, *auto]:
        engine.abort(rid)
    assert not engine.has_unfinished()


def test_a_step_never_carries_more_than_max_num_seqs():
    from llm_infer.config import SchedulerConfig
    from llm_infer.runtime.block_manager import BlockManager
    from llm_infer.runtime.request import Request
    from llm_infer.runtime.scheduler import Scheduler

    scheduler = Scheduler(SchedulerConfig(max_num_seqs=4), BlockManager(64, 4))
    for i in range(10):  # forked samples join `running` directly, beyond max_num_seqs
        req = Request(i, str(i), [1, 2, 3], SamplingParams(), seed=0)
        scheduler.blocks.allocate(req, 3)
        req.num_computed_tokens = 2
        scheduler.add_running(req)
    assert len(scheduler.schedule(max_seqs=6)) == 4
