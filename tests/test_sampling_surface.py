"""Penalties, logit bias, min_tokens, top_p=0, logprobs, prompt logprobs and n parallel samples,
offline, against their definitions and against transformers (fp32)."""

from __future__ import annotations

import pytest
import torch

from llm_infer import LLM, SamplingParams
from llm_infer.errors import UserError
from tests.checkpoints import reference_model
from tests import introspect
from tests.conftest import tiny_engine_config

PROMPT = [257, 72, 101, 108, 108, 111, 44, 32, 119, 111, 114, 108, 100, 33, 10, 84, 104, 101, 32, 99, 97, 116]


@pytest.fixture(scope="module")
def llm(tiny_models):
    with LLM(tiny_engine_config(tiny_models["qwen2"]), progress=False) as engine:
        yield engine


@pytest.fixture(scope="module")
def hf(tiny_models):
    return reference_model(tiny_models["qwen2"])


def reference_processed(logits: torch.Tensor, prompt: list[int], output: list[int], p: SamplingParams) -> torch.Tensor:
    """The definitions, one row at a time: logit bias; repetition penalty (Hugging Face: divide positive logits, multiply negative ones, of tokens
    in the prompt or the output); frequency and presence penalties (OpenAI: minus
    count * frequency and (count > 0) * presence, over output tokens)."""
    x = logits.double().clone()
    for token, bias in (p.logit_bias or {}).items():
        x[token] += bias
    seen = set(prompt) | set(output)
    for token in seen:
        if p.repetition_penalty != 1.0:
            x[token] = x[token] / p.repetition_penalty if x[token] > 0 else x[token] * p.repetition_penalty
    for token in set(output):
        x[token] -= p.frequency_penalty * output.count(token) + p.presence_penalty
    return x


def hf_greedy_with(hf, prompt: list[int], steps: int, p: SamplingParams) -> list[int]:
    out: list[int] = []
    with torch.no_grad():
        for _ in range(steps):
            logits = hf(torch.tensor([prompt + out])).logits[0, -1]
            out.append(int(reference_processed(logits, prompt, out, p).argmax()))
    return out


@pytest.mark.parametrize("params", [
    dict(frequency_penalty=1.5),
    dict(presence_penalty=1.2),
    dict(repetition_penalty=1.8),
    dict(frequency_penalty=0.7, presence_penalty=0.5, repetition_penalty=1.3),
    dict(logit_bias={65: 3.0, 66: -100.0, 300: 2.5}),
], ids=["frequency", "presence", "repetition", "all-three", "logit-bias"])
def test_greedy_with_penalties_and_bias_follows_the_definitions(llm, hf, params):
    p = SamplingParams(max_tokens=24, temperature=0, ignore_eos=True, **params)
    got = llm.generate([PROMPT], p)[0].token_ids
    assert got == hf_greedy_with(hf, PROMPT, 24, p)
    assert got != llm.generate([PROMPT], SamplingParams(max_tokens=24, temperature=0, ignore_eos=True))[0].token_ids


def test_penalties_are_per_request_in_a_mixed_batch(llm):
    plain = SamplingParams(max_tokens=16, temperature=0, ignore_eos=True)
    penal = SamplingParams(max_tokens=16, temperature=0, ignore_eos=True, frequency_penalty=2.0)
    alone = [llm.generate([PROMPT], plain)[0].token_ids, llm.generate([PROMPT], penal)[0].token_ids]
    batched = [o.token_ids for o in llm.generate([PROMPT, PROMPT], [plain, penal])]
    assert batched == alone


def test_logit_bias_forces_and_forbids(llm):
    forced = llm.generate([PROMPT], SamplingParams(max_tokens=8, temperature=1.0, seed=3, ignore_eos=True,
                                                   logit_bias={77: 100.0}))[0].token_ids
    assert forced == [77] * 8


def test_min_tokens_masks_eos_until_reached(llm):
    eos = introspect.eos_token_ids(llm)[0]
    p = SamplingParams(max_tokens=20, temperature=0, min_tokens=6, logit_bias={eos: 100.0})
    out = llm.generate([PROMPT], p)[0]
    assert out.token_ids[:6] != [eos] * 6 and eos not in out.token_ids[:6]
    assert out.token_ids[6] == eos and out.finish_reason == "stop" and len(out.token_ids) == 7


def test_top_p_zero_is_the_single_most_likely_token(llm):
    greedy = llm.generate([PROMPT], SamplingParams(max_tokens=12, temperature=0, ignore_eos=True))[0].token_ids
    for seed in range(3):
        sampled = llm.generate([PROMPT], SamplingParams(max_tokens=12, temperature=1.0, top_p=0.0, seed=seed,
                                                        ignore_eos=True))[0].token_ids
        assert sampled == greedy


def test_sampling_parameter_mistakes_are_one_line_errors():
    for bad, field in [(dict(presence_penalty=2.5), "presence_penalty"), (dict(frequency_penalty=-3), "frequency"),
                       (dict(repetition_penalty=0), "repetition_penalty"), (dict(logit_bias={1: 101}), "logit_bias"),
                       (dict(min_tokens=-1), "min_tokens"), (dict(min_tokens=5, max_tokens=4), "min_tokens"),
                       (dict(logprobs=21), "logprobs"), (dict(prompt_logprobs=-1), "prompt_logprobs"),
                       (dict(n=0), "n")]:
        with pytest.raises(UserError, match=field):
            SamplingParams(**bad)


def test_logprobs_equal_transformers_log_softmax(llm, hf):
    p = SamplingParams(max_tokens=10, temperature=0, ignore_eos=True, logprobs=5)
    out = llm.generate([PROMPT], p)[0]
    assert len(out.logprobs) == 10
    ids = PROMPT + out.token_ids
    with torch.no_grad():
        ref = torch.log_softmax(hf(torch.tensor([ids])).logits[0].double(), -1)
    for i, (token, lp) in enumerate(zip(out.token_ids, out.logprobs)):
        row = ref[len(PROMPT) - 1 + i]
        assert lp.token_id == token and lp.rank == 1  # greedy: the sampled token is the most likely
        assert abs(lp.logprob - float(row[token])) < 1e-4
        top = row.topk(5)
        assert [t for t, _ in lp.top] == top.indices.tolist()
        assert max(abs(v - float(r)) for (_, v), r in zip(lp.top, top.values)) < 1e-4


def test_sampled_token_rank_and_batch_invariance(llm):
    p = SamplingParams(max_tokens=8, temperature=1.5, seed=11, ignore_eos=True, logprobs=2)
    alone = llm.generate([PROMPT], p)[0]
    batched = llm.generate([PROMPT[:7], PROMPT, PROMPT[3:]], [p, p, p])[1]
    assert alone.token_ids == batched.token_ids
    for a, b in zip(alone.logprobs, batched.logprobs):
        assert (a.token_id, a.rank) == (b.token_id, b.rank) and abs(a.logprob - b.logprob) < 1e-5
        if a.rank > 2:  # the sampled token is reported even when it is outside the top 2
            assert a.token_id not in [t for t, _ in a.top]


def test_prompt_logprobs_equal_transformers(llm, hf):
    out = llm.generate([PROMPT], SamplingParams(max_tokens=1, temperature=0, prompt_logprobs=3))[0]
    with torch.no_grad():
        ref = torch.log_softmax(hf(torch.tensor([PROMPT])).logits[0].double(), -1)
    assert out.prompt_logprobs[0] is None and len(out.prompt_logprobs) == len(PROMPT)
    for pos in range(1, len(PROMPT)):
        lp = out.prompt_logprobs[pos]
        assert lp.token_id == PROMPT[pos] and abs(lp.logprob - float(ref[pos - 1, PROMPT[pos]])) < 1e-4
        assert [t for t, _ in lp.top] == ref[pos - 1].topk(3).indices.tolist()


def test_prompt_logprobs_under_chunked_prefill(tiny_models):
    whole = LLM(tiny_engine_config(tiny_models["qwen2"]), progress=False)
    chunked = LLM(tiny_engine_config(tiny_models["qwen2"], scheduler={"max_num_batched_tokens": 5}), progress=False)
    p = SamplingParams(max_tokens=1, temperature=0, prompt_logprobs=2)
    a, b = whole.generate([PROMPT], p)[0].prompt_logprobs, chunked.generate([PROMPT], p)[0].prompt_logprobs
    whole.close()
    chunked.close()
    assert [x and x.token_id for x in a] == [x and x.token_id for x in b]
    assert max(abs(x.logprob - y.logprob) for x, y in zip(a[1:], b[1:])) < 1e-5


def test_logits_accept_a_prompt_of_exactly_max_model_len(tiny_models):
    with LLM(tiny_engine_config(tiny_models["qwen2"], scheduler={"max_model_len": 32}), progress=False) as small:
        prompt = (PROMPT * 2)[:32]
        assert small.logits(prompt).shape[0] == 32
        out = small.generate([prompt], SamplingParams(max_tokens=0, prompt_logprobs=1))[0]
        assert out.token_ids == [] and len(out.prompt_logprobs) == 32
        with pytest.raises(UserError, match="max_model_len"):
            small.generate([prompt], SamplingParams(max_tokens=1))


def test_n_samples_share_the_prefill_and_each_equals_its_seed_alone(llm):
    p = SamplingParams(max_tokens=10, temperature=1.0, seed=100, ignore_eos=True, n=4)
    fresh = [40 + (7 * i) % 200 for i in range(21)]  # no cached blocks from earlier tests
    before = introspect.engine_stats(llm).prefill_tokens
    out = llm.generate([fresh], p)[0]
    computed = introspect.engine_stats(llm).prefill_tokens - before
    assert computed == len(fresh) + 3  # the prompt once, then one recomputed token per extra sample
    assert [o.index for o in out.outputs] == [0, 1, 2, 3]
    for i, sample in enumerate(out.outputs):
        alone = llm.generate([fresh], SamplingParams(max_tokens=10, temperature=1.0, seed=100 + i,
                                                        ignore_eos=True))[0]
        assert sample.token_ids == alone.token_ids
    assert len({tuple(o.token_ids) for o in out.outputs}) > 1
    assert llm.generate([fresh], p)[0].outputs[2].token_ids == out.outputs[2].token_ids  # seeded: reproducible


MIXED = [SamplingParams(max_tokens=12, temperature=0.8, seed=5, ignore_eos=True, frequency_penalty=0.5,
                        logit_bias={70: 2.0}, logprobs=2, n=2),
         SamplingParams(max_tokens=3, temperature=0, prompt_logprobs=2, repetition_penalty=1.4),
         SamplingParams(max_tokens=10, temperature=1.0, seed=9, ignore_eos=True, presence_penalty=1.0, min_tokens=4)]
MIXED_PROMPTS = [PROMPT, PROMPT[:9], [5, 6, 7] * 9]


def _same_outputs(a, b) -> None:
    for x, y in zip(a, b):
        assert [o.token_ids for o in x.outputs] == [o.token_ids for o in y.outputs]
        for ox, oy in zip(x.outputs, y.outputs):
            if ox.logprobs is not None:
                assert max(abs(p.logprob - q.logprob) for p, q in zip(ox.logprobs, oy.logprobs)) < 1e-4
        if x.prompt_logprobs is not None:
            assert max(abs(p.logprob - q.logprob) for p, q in zip(x.prompt_logprobs[1:], y.prompt_logprobs[1:])) < 1e-4


@pytest.fixture(scope="module")
def mixed_reference(llm):
    return llm.generate(MIXED_PROMPTS, MIXED)


@pytest.mark.slow  # worker processes
@pytest.mark.parametrize("layout", [{"tensor": 2}, {"pipeline": 2}], ids=["tp2", "pp2"])
def test_penalties_logprobs_and_n_compose_with_parallel_layouts(tiny_models, mixed_reference, layout):
    with LLM(tiny_engine_config(tiny_models["qwen2"], parallel=layout), progress=False) as llm:
        _same_outputs(mixed_reference, llm.generate(MIXED_PROMPTS, MIXED))


def test_penalties_logprobs_and_n_survive_preemption_and_chunking(tiny_models, mixed_reference):
    tight = tiny_engine_config(tiny_models["qwen2"], cache={"block_size": 4, "num_blocks": 14},
                               scheduler={"max_num_batched_tokens": 7, "max_model_len": 48})
    with LLM(tight, progress=False) as llm:
        _same_outputs(mixed_reference, llm.generate(MIXED_PROMPTS, MIXED))
        assert introspect.scheduler(llm).num_preemptions > 0


def test_n_samples_with_ngram_speculation_and_prefix_caching(tiny_models):
    p = SamplingParams(max_tokens=16, temperature=0, ignore_eos=True, n=3, frequency_penalty=0.3, logprobs=1)
    plain = LLM(tiny_engine_config(tiny_models["qwen2"], cache={"block_size": 4, "num_blocks": 256,
                                                                 "prefix_caching": False}), progress=False)
    spec = LLM(tiny_engine_config(tiny_models["qwen2"], speculative={"method": "ngram", "ngram_min": 1}),
               progress=False)
    prompt = [5, 6, 7] * 8
    a, b = plain.generate([prompt], p)[0], spec.generate([prompt], p)[0]
    plain.close()
    spec.close()
    assert [o.token_ids for o in a.outputs] == [o.token_ids for o in b.outputs]
    assert max(abs(x.logprob - y.logprob) for x, y in zip(a.outputs[1].logprobs, b.outputs[1].logprobs)) < 1e-4


def test_token_ids_outside_the_vocabulary_are_one_line_errors(llm):
    for params in (SamplingParams(logit_bias={10**6: 1.0}), SamplingParams(min_tokens=2, stop_token_ids=[10**6])):
        with pytest.raises(UserError, match="outside the vocabulary"):
            llm.generate([PROMPT], params)
    assert llm.generate([PROMPT], SamplingParams(max_tokens=2))[0].token_ids  # the engine still serves


def test_min_tokens_and_stop_strings_stream_what_the_final_text_says(llm):
    letters = {t: 100.0 for t in b"abcde"}  # the tiny tokenizer has a token per byte: one letter per token
    base = SamplingParams(max_tokens=16, temperature=0, ignore_eos=True, logit_bias=letters)
    text = llm.generate([PROMPT], base)[0].text
    assert len(text) == 16
    # Stops that begin in text streamed before min_tokens was reached and complete after it.
    for min_tokens, stop in [(3, text[1:4]), (2, text[0:3]), (4, text[2:6]), (0, text[0:2]), (4, text[5:7])]:
        p = SamplingParams(max_tokens=16, temperature=0, ignore_eos=True, min_tokens=min_tokens, stop=[stop],
                           logit_bias=letters)
        final = llm.generate([PROMPT], p)[0]
        streamed = "".join(u.new_text for u in llm.stream(PROMPT, p))
        assert streamed == final.text, (min_tokens, stop)


def test_forked_samples_with_prompt_logprobs_survive_preemption(tiny_models):
    tight = tiny_engine_config(tiny_models["qwen2"], cache={"block_size": 16, "num_blocks": 6},
                               scheduler={"max_model_len": 64})
    p = SamplingParams(max_tokens=30, temperature=1.0, seed=1, ignore_eos=True, n=4, prompt_logprobs=1)
    prompt = list(range(40, 60))
    with LLM(tight, progress=False) as llm:
        out = llm.generate([prompt], p)[0]
        assert introspect.scheduler(llm).num_preemptions > 0
        assert len(out.prompt_logprobs) == len(prompt) and all(len(o.token_ids) == 30 for o in out.outputs)
        for i, sample in enumerate(out.outputs):
            alone = llm.generate([prompt], SamplingParams(max_tokens=30, temperature=1.0, seed=1 + i,
                                                          ignore_eos=True))[0]
            assert sample.token_ids == alone.token_ids


@pytest.mark.slow  # two engines with a draft model
def test_sampled_n_with_a_draft_model_equals_each_seed_alone(tiny_models):
    """Forked samples share blocks copied on write: the draft model's cache must be copied too."""
    cfg = tiny_engine_config(tiny_models["qwen2"], cache={"block_size": 16, "num_blocks": 40},
                             scheduler={"max_model_len": 64},
                             speculative={"method": "draft", "num_tokens": 3, "draft_model": str(tiny_models["qwen2"])})
    prompt = [5, 6, 7, 5, 6, 7, 5, 6, 7, 8, 9, 5, 6, 7, 5, 6, 7, 5, 6, 7]  # the forks share a partly filled block
    with LLM(cfg, progress=False) as llm:
        out = llm.generate([prompt], SamplingParams(max_tokens=40, temperature=1.0, seed=1, ignore_eos=True, n=4))
        for i, sample in enumerate(out[0].outputs):
            alone = llm.generate([prompt], SamplingParams(max_tokens=40, temperature=1.0, seed=1 + i,
                                                          ignore_eos=True))[0]
            assert sample.token_ids == alone.token_ids
