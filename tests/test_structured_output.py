"""Grammar-constrained output: every output matches its JSON schema / regex / choice / grammar,
alone, batched, sampled, forked, preempted, speculated and under TP=2; greedy constrained decoding
equals transformers' logits masked by llguidance's own mask; the reasoning gate and thinking budget."""

from __future__ import annotations

import json
import re

import jsonschema
import pytest
import torch

from llm_infer import LLM, SamplingParams
from llm_infer.errors import UserError
from llm_infer.runtime.structured_output.constraint import RequestConstraint, apply_token_bitmask
from llm_infer.runtime.structured_output.params import ConstraintSpec, ReasoningStart, constraint_spec
from tests import introspect
from tests.checkpoints import reference_model
from tests.conftest import tiny_engine_config
from tests.json_schemas import SCHEMAS

# The tiny tokenizer has one token per byte: a bias towards the characters that close strings,
# items and objects keeps random-model JSON short (it composes with the grammar, as bias must).
CLOSERS = {ord(c): 4.0 for c in '",]}'}
PROMPT = "Answer in JSON:"


@pytest.fixture(scope="module")
def llm(tiny_models):
    with LLM(tiny_engine_config(tiny_models["qwen2"]), progress=False) as engine:
        yield engine


def schema_params(**extra) -> list[SamplingParams]:
    return [SamplingParams(max_tokens=200, temperature=1.0, seed=i, logit_bias=CLOSERS,
                           structured_outputs={"json": schema}, **extra) for i, schema in enumerate(SCHEMAS)]


def assert_all_valid(outputs) -> None:
    for schema, out in zip(SCHEMAS, outputs):
        for sample in out.outputs:
            assert sample.finish_reason == "stop", (schema, sample.text)
            jsonschema.validate(json.loads(sample.text), schema)


def test_bitmask_application_matches_a_bit_by_bit_reference():
    gen = torch.Generator().manual_seed(0)
    vocab = 70  # not a multiple of 32: the last word is partly used
    bitmask = torch.randint(-2**31, 2**31 - 1, (3, 3), dtype=torch.int32, generator=gen)
    logits = torch.randn(3, vocab, generator=gen)
    expected = logits.clone()
    for r in range(3):
        for t in range(vocab):
            if not (int(bitmask[r, t // 32]) >> (t % 32)) & 1:
                expected[r, t] = float("-inf")
    apply_token_bitmask(logits, bitmask)
    assert torch.equal(logits, expected)


def test_every_schema_output_validates_sampled_and_batched(llm):
    assert len(SCHEMAS) >= 50
    outputs = llm.generate([PROMPT] * len(SCHEMAS), schema_params())
    assert_all_valid(outputs)
    assert len({o.text for o in outputs}) > len(SCHEMAS) // 2  # sampled, not one canned answer


@pytest.mark.slow  # every schema again (the fast tier keeps the sampled, batched run)
def test_every_schema_output_validates_with_n_penalties_preemption_and_chunking(tiny_models):
    tight = tiny_engine_config(tiny_models["qwen2"], cache={"block_size": 4, "num_blocks": 120},
                               scheduler={"max_num_batched_tokens": 13, "max_model_len": 256})
    with LLM(tight, progress=False) as llm:
        outputs = llm.generate([PROMPT] * len(SCHEMAS), schema_params(n=2, presence_penalty=0.1))
        assert introspect.scheduler(llm).num_preemptions > 0
    assert_all_valid(outputs)


@pytest.mark.slow  # every schema again (the fast tier keeps the sampled, batched run)
def test_every_schema_output_validates_with_ngram_speculation(tiny_models):
    with LLM(tiny_engine_config(tiny_models["qwen2"], speculative={"method": "ngram", "ngram_min": 1}),
             progress=False) as llm:
        outputs = llm.generate([PROMPT] * len(SCHEMAS), schema_params())
        assert introspect.spec_stats(llm).proposed > 0
    assert_all_valid(outputs)


@pytest.mark.slow  # worker processes
@pytest.mark.parametrize("layout", [{"tensor": 2}, {"pipeline": 2}], ids=["tp2", "pp2"])
def test_constrained_outputs_under_parallel_layouts_equal_one_worker(tiny_models, llm, layout):
    expected = llm.generate([PROMPT] * len(SCHEMAS), schema_params())
    with LLM(tiny_engine_config(tiny_models["qwen2"], parallel=layout), progress=False) as parallel:
        got = parallel.generate([PROMPT] * len(SCHEMAS), schema_params())
    assert [o.token_ids for o in got] == [o.token_ids for o in expected]
    assert_all_valid(got)


def test_greedy_constrained_decoding_equals_transformers_masked_by_llguidance(tiny_models, llm):
    """The oracle: transformers' logits, masked by llguidance's own byte mask (not our bitmask code)."""
    from llguidance import LLMatcher, LLTokenizer

    from llm_infer.runtime.tokenizer import Tokenizer

    schema = {"type": "object", "properties": {"id": {"type": "integer"}, "tag": {"enum": ["x", "yy"]}},
              "required": ["id", "tag"]}
    params = SamplingParams(max_tokens=40, temperature=0, logit_bias=CLOSERS, structured_outputs={"json": schema})
    ours = llm.generate([PROMPT], params)[0]
    tok = Tokenizer(tiny_models["qwen2"])
    hf = reference_model(tiny_models["qwen2"])
    matcher = LLMatcher(LLTokenizer(tok.backend.to_str(), n_vocab=320, eos_token=[258]),
                        params.structured_outputs.to_grammar())
    ids, out = tok.encode(PROMPT), []
    with torch.no_grad():
        while len(out) < 40:
            logits = hf(torch.tensor([ids + out])).logits[0, -1].double()
            for t, b in CLOSERS.items():
                logits[t] += b
            allowed = torch.frombuffer(bytearray(matcher.compute_logit_bias()), dtype=torch.uint8)[:320] > 0
            token = int(logits.masked_fill(~allowed, float("-inf")).argmax())
            out.append(token)
            if token == 258:
                break
            assert matcher.consume_token(token)
    assert ours.token_ids == out
    jsonschema.validate(json.loads(ours.text), schema)


def test_regex_choice_and_grammars_match(llm):
    cases = [
        ({"regex": r"[a-z]{3}-[0-9]{2}"}, lambda t: re.fullmatch(r"[a-z]{3}-[0-9]{2}", t)),
        ({"choice": ["red", "green", "blue"]}, lambda t: t in ("red", "green", "blue")),
        ({"grammar": 'start: "(" num ("+" num)* ")"\nnum: /[0-9]/'}, lambda t: re.fullmatch(r"\([0-9](\+[0-9])*\)", t)),
        ({"grammar": 'root ::= "yes" | "no" | "maybe"'}, lambda t: t in ("yes", "no", "maybe")),  # GBNF
        ({"json_object": True}, lambda t: isinstance(json.loads(t), dict)),
    ]
    bias = {ord(c): 3.0 for c in ")}\""}
    for spec, check in cases:
        params = [SamplingParams(max_tokens=60, temperature=1.0, seed=s, logit_bias=bias, structured_outputs=spec)
                  for s in range(8)]
        for out in llm.generate([PROMPT] * 8, params):
            assert out.finish_reason == "stop" and check(out.text), (spec, out.text)


def test_bad_constraints_are_one_line_errors_and_lose_nothing(llm):
    bad = [({"json": {"type": "integer", "minimum": 5, "maximum": 1}}, "Unsatisfiable"),
           ({"json": {"type": "strin"}}, "strin"),
           ({"json": "{not json"}, "not valid JSON"),
           ({"regex": "a(b"}, "unclosed group"),
           ({"grammar": "start: ("}, "invalid structured output|neither Lark nor GBNF"),
           ({"json_object": True, "regex": "a"}, "exactly one"),
           ({"choice": []}, "non-empty list"),
           ({"json": _nested(100)}, "recursion limit"),  # past llguidance's JSON nesting limit (a ValueError)
           ({"json": _nested(5000)}, "nested too deeply"),  # past Python's (json.dumps: a RecursionError)
           # llguidance 1.9.1 would loop forever computing this grammar's first mask (one request hanging
           # the engine thread); zero-width regex terminals are refused, as Lark refuses them.
           ({"grammar": "start: /a*/ start"}, "terminal /a\\*/ can match the empty string"),
           ({"grammar": 'start: "x" s\ns: /(b|)/ s'}, "can match the empty string")]
    for spec, message in bad:
        with pytest.raises(UserError, match=message) as err:
            llm.generate([PROMPT], SamplingParams(max_tokens=4, structured_outputs=spec))
        assert "\n" not in str(err.value)
    assert llm.generate([PROMPT], SamplingParams(max_tokens=2))[0].token_ids  # the engine still serves


def _nested(depth: int) -> dict:
    schema = {"type": "string"}
    for _ in range(depth):
        schema = {"type": "object", "properties": {"a": schema}, "required": ["a"]}
    return schema


def test_a_complete_match_ends_the_request_whatever_min_tokens_and_ignore_eos_say(llm):
    # min_tokens masks the end token that is all a complete grammar allows: the end still comes
    # (a row with nothing allowed once crashed the sampler, then sampled token 0).
    outs = llm.generate([PROMPT] * 2, [SamplingParams(max_tokens=12, temperature=t, min_tokens=8,
                                                      structured_outputs={"choice": ["yes"]}) for t in (0, 1)])
    assert [(o.text, o.finish_reason) for o in outs] == [("yes", "stop")] * 2
    # ignore_eos: end tokens after the match, never free text (the matcher once stopped checking)
    out = llm.generate([PROMPT], SamplingParams(max_tokens=8, ignore_eos=True, structured_outputs={"choice": ["yes"]}))[0]
    eos = llm.engine.eos_token_ids
    assert out.finish_reason == "length" and out.text == "yes"
    assert out.token_ids[:3] == list(b"yes") and all(t in eos for t in out.token_ids[3:])


def test_max_tokens_before_the_match_completes_ends_with_length(llm):
    schema = {"type": "object", "properties": {"words": {"type": "array", "items": {"type": "string"},
                                                         "minItems": 6}}, "required": ["words"]}
    out = llm.generate([PROMPT], SamplingParams(max_tokens=14, temperature=0, structured_outputs={"json": schema}))[0]
    assert out.finish_reason == "length" and out.text.startswith('{"words": [')


def test_proposals_fill_the_same_masks_as_accepting_them_one_by_one(tiny_models):
    from llm_infer.runtime.structured_output.compiler import GrammarCompiler

    from llm_infer.runtime.models.model_config import ModelConfig

    compiler = GrammarCompiler.for_model(tiny_models["qwen2"], ModelConfig.from_dir(tiny_models["qwen2"]))
    grammar = json_grammar({"type": "object", "properties": {"a": {"type": "integer"}}})
    text = [ord(c) for c in '{"a": 12}']
    one_by_one = RequestConstraint(ConstraintSpec(grammar), compiler)
    expected = torch.zeros(len(text) + 1, 10, dtype=torch.int32)
    for j, t in enumerate(text):
        one_by_one.fill(expected[j])
        assert one_by_one.accept(t)
    one_by_one.fill(expected[len(text)])
    at_once = RequestConstraint(ConstraintSpec(grammar), compiler)
    rows = torch.zeros_like(expected)
    assert all(at_once.fill_proposals(rows, text))
    assert torch.equal(rows, expected)
    assert at_once.accept(text[0]) and not at_once.accept(ord("x"))  # rolled back to the start, then checked
    bad = RequestConstraint(ConstraintSpec(grammar), compiler)  # an invalid proposal leaves later rows unconstrained
    assert bad.fill_proposals(torch.zeros(4, 10, dtype=torch.int32), [ord("{"), ord("x"), ord("y")]) == \
        [True, True, False, False]


def json_grammar(schema: dict) -> str:
    return SamplingParams(structured_outputs={"json": schema}).structured_outputs.to_grammar()


END = ord("|")  # the tiny tokenizer has no </think>: any token can play the reasoning end in the engine


START = ord("~")  # plays `<think>` for an undecided start


def _generate(llm, params: SamplingParams, in_reasoning: bool = True, start: int | None = None) -> list[int]:
    rid = llm.engine.add_request(PROMPT, params, reasoning=ReasoningStart(END, in_reasoning, start))
    while True:
        for out in llm.engine.step():
            if out.request_id == rid and out.finished:
                return out.token_ids


def _split(ids: list[int]) -> tuple[list[int], list[int]]:
    cut = ids.index(END) if END in ids else len(ids)
    return ids[:cut], ids[cut + 1 :]


def test_thinking_budget_forces_the_end_of_reasoning_then_the_grammar_applies(llm):
    for budget in (0, 1, 5, 12):
        p = SamplingParams(max_tokens=60, temperature=1.0, seed=budget, thinking_budget=budget,
                           logit_bias={END: -100.0}, structured_outputs={"regex": "[0-9]{4}"})
        reasoning, answer = _split(_generate(llm, p))
        assert len(reasoning) == budget  # the model never closes it (END is biased away): forced at the budget
        assert re.fullmatch(r"[0-9]{4}", bytes(t for t in answer if t < 256).decode())


def test_reasoning_is_unconstrained_and_an_answer_without_reasoning_is_constrained(llm):
    never_closed = SamplingParams(max_tokens=30, temperature=1.0, seed=3, logit_bias={END: -100.0},
                                  structured_outputs={"regex": "[0-9]{4}"})
    reasoning, answer = _split(_generate(llm, never_closed))
    assert len(reasoning) == 30 and not answer  # the grammar never started
    assert not all(chr(t).isdigit() for t in reasoning)
    direct = _generate(llm, SamplingParams(max_tokens=10, temperature=1.0, seed=3,
                                           structured_outputs={"regex": "[0-9]{4}"}), in_reasoning=False)
    assert re.fullmatch(r"[0-9]{4}", bytes(t for t in direct if t < 256).decode())


def test_an_undecided_start_reasons_only_when_the_first_token_opens_it(llm):
    """Qwen3's hybrid template leaves the choice to the reply: `<think>` first opens the reasoning
    (budget and grammar then apply as above); any other first token is the grammar's first."""
    digits = {"regex": "[0-9]{4}"}
    for seed in range(3):
        answered = _generate(llm, SamplingParams(max_tokens=10, temperature=1.0, seed=seed, structured_outputs=digits,
                                                 thinking_budget=2), in_reasoning=False, start=START)
        assert re.fullmatch(r"[0-9]{4}", bytes(t for t in answered if t < 256).decode())
        opened = _generate(llm, SamplingParams(max_tokens=20, temperature=1.0, seed=seed, structured_outputs=digits,
                                               thinking_budget=3, logit_bias={START: 100.0, END: -100.0}),
                           in_reasoning=False, start=START)
        assert opened[0] == START and opened[4] == END  # 3 reasoning tokens (START, biased), then forced closed
        assert re.fullmatch(r"[0-9]{4}", bytes(t for t in opened[5:] if t < 256).decode())
    # Without a grammar or budget nothing is enforced, so there is nothing to track.
    assert constraint_spec(None, None, ReasoningStart(END, False, START)) is None
    assert constraint_spec(None, 4, ReasoningStart(END, False, START)).reasoning_start_id == START
    assert constraint_spec(None, 4, ReasoningStart(END, False, None)) is None  # all answer: nothing to limit


def test_an_undecided_start_rolls_back_through_proposals(tiny_models):
    from llm_infer.runtime.models.model_config import ModelConfig
    from llm_infer.runtime.structured_output.compiler import GrammarCompiler

    compiler = GrammarCompiler.for_model(tiny_models["qwen2"], ModelConfig.from_dir(tiny_models["qwen2"]))
    grammar = json_grammar({"type": "object", "properties": {"a": {"type": "integer"}}})
    spec = ConstraintSpec(grammar, END, False, None, START)
    c = RequestConstraint(spec, compiler)
    rows = torch.zeros(3, 10, dtype=torch.int32)
    assert c.fill_proposals(rows, [START, ord("x")]) == [True, False, False]  # reasoning is unconstrained
    first = rows[0].view(torch.uint8)
    assert first[START // 8] >> (START % 8) & 1 and first[ord("{") // 8] >> (ord("{") % 8) & 1
    assert not first[ord("x") // 8] >> (ord("x") % 8) & 1
    assert c.start_id == START and c.accept(ord("{")) and c.start_id is None  # rolled back, then decided
    assert not c.accept(START)  # once answering, `<think>` is just a token the grammar refuses
    c.rollback(1)
    assert c.start_id == START and c.accept(START) and c.in_reasoning


def test_thinking_budget_without_reasoning_is_an_error(llm):
    with pytest.raises(UserError, match="thinking_budget needs a chat request"):
        llm.generate([PROMPT], SamplingParams(max_tokens=4, thinking_budget=3))
