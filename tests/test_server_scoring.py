"""Scores and parallel samples over HTTP: logprobs (completions' legacy lists, chat's content
entries), echo and prompt scoring, n samples and prompt lists, penalties and logit bias, each
equal to the offline engine with the same parameters; refused fields; metrics over all choices.

The tiny model's tokenizer has one token per byte (token id b is byte b), so a token's exact
bytes are known without a tokenizer, and a multi-byte character always spans several tokens.
"""

from __future__ import annotations

import json

import pytest
import torch

from llm_infer import SamplingParams
from llm_infer.entrypoints.server.logprobs import TokenText
from llm_infer.runtime.outputs import TokenLogprob
from llm_infer.runtime.tokenizer import Tokenizer
from tests.conftest import default_model_or_skip
from tests.test_server import (  # noqa: F401 (fixtures: one tiny engine behind a live server, and the oracle)
    COMPLETIONS, CHAT, MODEL, assert_error, client, engine, http, live, offline, prompt_ids, scrape,
    slow_steps, wait_idle)

TOL = 1e-5  # two engines with the same weights; batches may differ
MESSAGES = [{"role": "user", "content": "Name a colour."}]


def token_string(llm, token_id: int) -> str:
    return llm.tokenizer.decode([token_id], skip_special_tokens=False)


def expected_legacy(llm, ids: list[int], scores: list[TokenLogprob | None], offset: int) -> dict:
    """OpenAI's legacy completion logprobs, from the offline engine's scores (None: no score)."""
    tokens = [token_string(llm, t) for t in ids]
    offsets = [offset + sum(len(s) for s in tokens[:i]) for i in range(len(tokens))]
    top: list[dict[str, float] | None] = []
    for s in scores:
        if s is None:
            top.append(None)
            continue
        top.append({token_string(llm, s.token_id): s.logprob})
        for t, lp in s.top:  # several ids may read the same (U+FFFD): the most likely one's value
            top[-1][token_string(llm, t)] = max(lp, top[-1].get(token_string(llm, t), -1e9))
    return {"tokens": tokens, "token_logprobs": [None if s is None else s.logprob for s in scores],
            "top_logprobs": top, "text_offset": offsets}


def same(a, b) -> bool:
    """Equal JSON values, floats within TOL (a request that hits the prefix cache is computed in other batches)."""
    if isinstance(a, float) or isinstance(b, float):
        return isinstance(a, (int, float)) and isinstance(b, (int, float)) and abs(a - b) < TOL
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b


def sse_events(http_client, path: str, body: dict) -> list[dict]:
    with http_client.stream("POST", path, json=body) as r:
        assert r.status_code == 200
        lines = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    return [json.loads(x) for x in lines[:-1]]


# -- completions: legacy logprobs, echo, scoring ----------------------------------------------


def test_completion_logprobs_equal_offline_and_the_openai_client_reads_them(client, offline):
    ids = prompt_ids(1, seed=11)[0]
    want = offline.generate([ids], SamplingParams(max_tokens=6, temperature=0, ignore_eos=True, logprobs=3))[0]
    got = client.completions.create(model=MODEL, prompt=ids, max_tokens=6, temperature=0, logprobs=3,
                                    extra_body={"ignore_eos": True})
    choice = got.choices[0]
    assert choice.text == want.text
    assert same(choice.logprobs.model_dump(), expected_legacy(offline, want.token_ids, want.logprobs, 0))
    # greedy: each token is the most likely one (how lm-eval decides `is_greedy`)
    assert all(lp == max(top.values()) for lp, top in zip(choice.logprobs.token_logprobs, choice.logprobs.top_logprobs))


def test_echo_with_logprobs_scores_the_prompt_first(client, offline):
    prompt = "The cat sat"
    params = SamplingParams(max_tokens=3, temperature=0, ignore_eos=True, logprobs=2, prompt_logprobs=2)
    want = offline.generate([prompt], params)[0]
    got = client.completions.create(model=MODEL, prompt=prompt, max_tokens=3, temperature=0, logprobs=2, echo=True,
                                    extra_body={"ignore_eos": True}).choices[0]
    assert got.text == prompt + want.text
    lp = got.logprobs.model_dump()
    n = len(want.prompt_token_ids)
    assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
    expected = expected_legacy(offline, want.prompt_token_ids, want.prompt_logprobs, 0)
    assert same({k: v[:n] for k, v in lp.items()}, expected)
    completion = expected_legacy(offline, want.token_ids, want.logprobs, len(prompt))  # offsets after the prompt text
    assert same({k: v[n:] for k, v in lp.items()}, completion)


def test_max_tokens_0_with_echo_scores_a_whole_context_from_the_engines_logits(http, offline):
    ids = (prompt_ids(1, seed=12)[0] * 40)[:512]  # exactly max_model_len tokens
    r = http.post(COMPLETIONS, json={"model": MODEL, "prompt": ids, "max_tokens": 0, "echo": True, "logprobs": 1})
    assert r.status_code == 200, r.text
    body = r.json()
    choice = body["choices"][0]
    assert choice["finish_reason"] == "length" and choice["text"] == offline.tokenizer.decode(ids)
    assert body["usage"] == {"prompt_tokens": 512, "completion_tokens": 0, "total_tokens": 512}
    logits = torch.log_softmax(offline.logits(ids).double(), -1)
    want = [None] + [float(logits[i - 1, ids[i]]) for i in range(1, len(ids))]
    assert all(same(a, b) for a, b in zip(choice["logprobs"]["token_logprobs"], want, strict=True))
    assert_error(http.post(COMPLETIONS, json={"model": MODEL, "prompt": ids, "max_tokens": 0}), 400, "max_tokens")


def test_echo_without_logprobs_returns_the_prompt_text(http, offline):
    ids = prompt_ids(1, seed=13)[0]
    want = offline.generate([ids], SamplingParams(max_tokens=4, temperature=0))[0]
    choice = http.post(COMPLETIONS, json={"prompt": ids, "max_tokens": 4, "temperature": 0, "echo": True}).json()
    assert choice["choices"][0] == {"index": 0, "text": offline.tokenizer.decode(ids) + want.text, "logprobs": None,
                                    "finish_reason": want.finish_reason}


def test_streamed_completion_logprobs_join_into_the_whole(http):
    body = {"prompt": ["Once upon", "A cat"], "n": 2, "max_tokens": 8, "temperature": 0.7, "seed": 1, "logprobs": 2,
            "echo": True, "ignore_eos": True}
    whole = http.post(COMPLETIONS, json=body).json()["choices"]
    chunks = [c["choices"][0] for c in sse_events(http, COMPLETIONS, {**body, "stream": True})]
    for choice in whole:
        mine = [c for c in chunks if c["index"] == choice["index"]]
        assert "".join(c["text"] for c in mine) == choice["text"]
        joined = {key: [v for c in mine for v in c["logprobs"][key]] for key in choice["logprobs"]}
        assert same(joined, choice["logprobs"])
    assert [c["text"].startswith(("Once upon", "Once upon", "A cat", "A cat")[c["index"]]) for c in whole] == [True] * 4


# -- chat: content entries with bytes --------------------------------------------------------


def test_chat_logprobs_and_top_logprobs_equal_offline(client, offline):
    want = offline.chat(MESSAGES, SamplingParams(max_tokens=6, temperature=0, logprobs=2))
    got = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=6, temperature=0,
                                         logprobs=True, top_logprobs=2).choices[0]
    assert got.message.content == want.text
    content = got.logprobs.content
    assert len(content) == len(want.token_ids)
    for entry, score in zip(content, want.logprobs, strict=True):
        assert entry.token == token_string(offline, score.token_id) and same(entry.logprob, score.logprob)
        assert entry.bytes == (list(entry.token.encode()) if score.token_id >= 256 else [score.token_id])
        assert [t.token for t in entry.top_logprobs] == [token_string(offline, t) for t, _ in score.top]
        assert all(same(t.logprob, lp) for t, (_, lp) in zip(entry.top_logprobs, score.top, strict=True))
    plain = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=3, temperature=0, logprobs=True)
    assert all(e.top_logprobs == [] for e in plain.choices[0].logprobs.content)
    assert client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=3).choices[0].logprobs is None


def test_a_partial_character_token_reads_as_fffd_with_its_exact_bytes(http):
    # byte 0xC3 alone is half of "é": its string is U+FFFD, its bytes the byte itself
    body = {"messages": MESSAGES, "max_tokens": 2, "logprobs": True, "logit_bias": {"195": 100}}
    content = http.post(CHAT, json=body).json()["choices"][0]["logprobs"]["content"]
    assert [(e["token"], e["bytes"]) for e in content] == [("\ufffd", [195])] * 2
    echo = http.post(COMPLETIONS, json={"prompt": "é", "max_tokens": 0, "echo": True, "logprobs": 0}).json()
    assert echo["choices"][0]["text"] == "é" and echo["choices"][0]["logprobs"]["tokens"] == ["\ufffd", "\ufffd"]


@pytest.mark.slow  # converts the default model on a fresh machine
def test_token_bytes_of_the_default_models_tokenizer_join_into_the_text():
    default_model_or_skip()
    from llm_infer.runtime.models.default_model import ensure_default_model

    tokenizer = Tokenizer(ensure_default_model())
    tokens = TokenText(tokenizer)
    for text in ["héllo 世界 🤖", "naïve café", "<|im_start|>user\nhi<|im_end|>"]:
        ids = tokenizer.encode(text, add_special_tokens=False)
        assert b"".join(bytes(tokens.bytes(t)) for t in ids) == text.encode()
        assert [tokens.text(t) for t in ids] == [tokenizer.decode([t], skip_special_tokens=False) for t in ids]
    assert any("\ufffd" in tokens.text(t) for t in tokenizer.encode("世界🤖"))


def test_streamed_chat_logprobs_join_into_the_whole(http):
    body = {"messages": MESSAGES, "max_tokens": 8, "temperature": 0, "logprobs": True, "top_logprobs": 3}
    whole = http.post(CHAT, json=body).json()["choices"][0]
    chunks = [c["choices"][0] for c in sse_events(http, CHAT, {**body, "stream": True})]
    assert "".join(c["delta"].get("content", "") for c in chunks) == whole["message"]["content"]
    assert same([e for c in chunks if c["logprobs"] for e in c["logprobs"]["content"]], whole["logprobs"]["content"])


# -- n samples and prompt lists ----------------------------------------------------------------


def test_n_samples_equal_offline_streamed_or_not_with_summed_usage(client, offline):
    params = SamplingParams(max_tokens=6, temperature=1.0, seed=7, ignore_eos=True, n=2)
    want = offline.chat(MESSAGES, params)
    got = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=6, seed=7, n=2,
                                         extra_body={"ignore_eos": True})
    assert [c.index for c in got.choices] == [0, 1]
    assert [c.message.content for c in got.choices] == [o.text for o in want.outputs]
    assert got.usage.completion_tokens == 12 and got.usage.prompt_tokens == len(want.prompt_token_ids)
    stream = list(client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=6, seed=7, n=2,
                                                 stream=True, stream_options={"include_usage": True},
                                                 extra_body={"ignore_eos": True}))
    texts = {0: "", 1: ""}
    for chunk in stream[:-1]:
        (choice,) = chunk.choices  # one choice per chunk, named by its index
        texts[choice.index] += choice.delta.content or ""
    assert list(texts.values()) == [o.text for o in want.outputs]
    assert {c.choices[0].index for c in stream[:-1] if c.choices[0].finish_reason} == {0, 1}
    assert stream[-1].choices == [] and stream[-1].usage.completion_tokens == 12


def test_prompt_lists_give_one_choice_per_prompt_and_sample(http, offline):
    prompts = prompt_ids(2, seed=14)
    params = SamplingParams(max_tokens=5, temperature=0.8, seed=3, ignore_eos=True, n=2, logprobs=1)
    want = offline.generate(prompts, params)
    body = {"prompt": prompts, "max_tokens": 5, "temperature": 0.8, "seed": 3, "ignore_eos": True, "n": 2,
            "logprobs": 1, "best_of": 2}
    got = http.post(COMPLETIONS, json=body).json()
    assert [c["index"] for c in got["choices"]] == [0, 1, 2, 3]  # prompt index x n + sample
    assert [c["text"] for c in got["choices"]] == [o.text for out in want for o in out.outputs]
    assert got["usage"] == {"prompt_tokens": sum(map(len, prompts)), "completion_tokens": 20,
                            "total_tokens": sum(map(len, prompts)) + 20}
    for c, o in zip(got["choices"], [o for out in want for o in out.outputs]):
        assert all(same(a, s.logprob) for a, s in zip(c["logprobs"]["token_logprobs"], o.logprobs, strict=True))
    streamed: dict[int, str] = {}
    for event in sse_events(http, COMPLETIONS, {**body, "stream": True}):
        (choice,) = event["choices"]
        streamed[choice["index"]] = streamed.get(choice["index"], "") + choice["text"]
    assert [streamed[i] for i in range(4)] == [c["text"] for c in got["choices"]]


def test_a_disconnect_aborts_every_prompt_and_sample(live, http, engine):
    aborted = scrape(http).get("llm_infer_finished_requests_total{finish_reason=abort}", 0)
    body = {"prompt": [[5, 6, 7], [8, 9]], "n": 3, "max_tokens": 500, "ignore_eos": True, "stream": True}
    with slow_steps(engine):
        with http.stream("POST", COMPLETIONS, json=body) as r:
            assert r.status_code == 200
            next(line for line in r.iter_lines() if line.startswith("data: {"))
            assert engine.snapshot.running + engine.snapshot.waiting >= 2
        wait_idle(engine, timeout=3)
    assert scrape(http)["llm_infer_finished_requests_total{finish_reason=abort}"] == aborted + 2


# -- penalties, bias and the other sampling fields --------------------------------------------


@pytest.mark.parametrize("fields", [
    {"presence_penalty": 2, "frequency_penalty": 2},
    {"repetition_penalty": 1.8},
    {"logit_bias": {"77": 5.0, "101": -100}},
    {"min_tokens": 4, "stop_token_ids": [159]},
    {"top_p": 0, "temperature": 1.0, "seed": 5},
], ids=["presence+frequency", "repetition", "logit-bias", "min-tokens+stop-ids", "top-p-0"])
def test_sampling_fields_equal_offline(http, offline, fields):
    ids = [5, 6, 7] * 6
    sampling = {k: ({int(t): b for t, b in v.items()} if k == "logit_bias" else v) for k, v in fields.items()}
    want = offline.generate([ids], SamplingParams(max_tokens=12, **{"temperature": 0, **sampling}))[0]
    r = http.post(COMPLETIONS, json={"prompt": ids, "max_tokens": 12, "temperature": 0, "logprobs": 0, **fields})
    got = r.json()["choices"][0]
    assert got["text"] == want.text and got["finish_reason"] == want.finish_reason
    assert got["logprobs"]["tokens"] == [token_string(offline, t) for t in want.token_ids]
    plain = offline.generate([ids], SamplingParams(max_tokens=12, temperature=0))[0]
    assert want.token_ids != plain.token_ids or "top_p" in fields  # the field changed the answer (top_p 0: greedy)


@pytest.mark.parametrize("path,body,param", [
    (CHAT, {"messages": MESSAGES, "top_logprobs": 2}, "top_logprobs"),
    (CHAT, {"messages": MESSAGES, "logprobs": 1}, "logprobs"),
    (CHAT, {"messages": MESSAGES, "response_format": {"type": "json_schema"}}, "response_format"),
    (CHAT, {"messages": MESSAGES, "modalities": ["text", "audio"]}, "modalities"),
    (CHAT, {"messages": MESSAGES, "reasoning_effort": "low"}, "reasoning_effort"),
    (COMPLETIONS, {"prompt": "hi", "best_of": 2}, "best_of"),
    (COMPLETIONS, {"prompt": "hi", "suffix": "!"}, "suffix"),
    (COMPLETIONS, {"prompt": "hi", "max_tokens": 0}, "max_tokens"),
    (COMPLETIONS, {"prompt": "hi", "logit_bias": {"9999": 1}}, "logit_bias"),
    (COMPLETIONS, {"prompt": "hi", "guided_json": {"type": "strin"}}, "guided_json"),
])
def test_fields_the_server_does_not_implement_are_400s_naming_them(http, path, body, param):
    assert_error(http.post(path, json=body), 400, param)


def test_fields_that_change_nothing_are_accepted(http):
    body = {"messages": MESSAGES, "max_tokens": 2, "user": "u", "store": False, "metadata": {"a": "b"},
            "service_tier": "auto", "response_format": {"type": "text"}, "tools": [], "parallel_tool_calls": None}
    assert http.post(CHAT, json=body).status_code == 200


def test_generation_tokens_count_every_choice(http):
    before = scrape(http)["llm_infer_generation_tokens_total"]
    body = {"prompt": [[3, 4, 5], [6, 7]], "n": 3, "max_tokens": 4, "ignore_eos": True}
    assert http.post(COMPLETIONS, json=body).json()["usage"]["completion_tokens"] == 24
    assert scrape(http)["llm_infer_generation_tokens_total"] == before + 24

