"""`llm-infer serve`: the OpenAI-compatible server on a tiny model, checked against offline generation.

One live uvicorn server (API key on) and one in-process app without a key share one
engine thread; the offline `LLM` built from the same config is the oracle.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from openai import AsyncOpenAI, OpenAI
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient

from llm_infer import LLM, SamplingParams
from llm_infer.errors import WorkerError
from llm_infer.entrypoints.cli import main as cli_main
from llm_infer.entrypoints.server import AsyncEngine, build_app
from llm_infer.entrypoints.server.serve import ServerThread, served_model_name
from tests import introspect
from tests.conftest import served_engine, tiny_engine_config

KEY = "test-key"
MODEL = "qwen2"  # the tiny checkpoint's folder name
GREEDY = {"temperature": 0}


def server_config(model) -> dict:
    # Room for 64 concurrent requests: 64 sequences in the batch, 1024 blocks of 4 tokens.
    return tiny_engine_config(model, scheduler={"max_num_seqs": 64}, cache={"num_blocks": 1024})


@pytest.fixture(scope="module")
def offline(tiny_models):
    llm = LLM(server_config(tiny_models["qwen2"]), progress=False)
    yield llm
    llm.close()


@pytest.fixture(scope="module")
def engine(tiny_models):
    with served_engine(server_config(tiny_models["qwen2"])) as async_engine:
        yield async_engine


@pytest.fixture(scope="module")
def live(engine):
    server = ServerThread(build_app(engine, served_model_name(engine.llm), api_key=KEY))
    assert httpx.get(f"{server.url}/health").status_code == 200
    yield server
    server.stop()


@pytest.fixture(scope="module")
def client(live):
    return OpenAI(base_url=f"{live.url}/v1", api_key=KEY, max_retries=0)


@pytest.fixture(scope="module")
def http(live):
    with httpx.Client(base_url=live.url, headers={"Authorization": f"Bearer {KEY}"}, timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def open_app(engine):
    """A second app on the same engine, without an API key, called in-process."""
    with TestClient(build_app(engine, MODEL), raise_server_exceptions=False) as c:
        yield c


def prompt_ids(n: int, seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(3, 256) for _ in range(rng.randrange(4, 24))] for _ in range(n)]


def wait_idle(engine: AsyncEngine, timeout: float = 5.0):
    """The engine's published snapshot once nothing runs, waits or holds KV blocks."""
    deadline = time.monotonic() + timeout
    while True:
        snap = engine.snapshot
        if snap.running == 0 and snap.waiting == 0 and snap.kv_usage == 0:
            return snap
        assert time.monotonic() < deadline, f"the engine is not idle: {snap}"
        time.sleep(0.05)


@contextlib.contextmanager
def slow_steps(engine: AsyncEngine, seconds: float = 0.02):
    """Make each engine step take a while, so a long request is surely still running when we hang up."""
    llm_engine = engine.llm.engine
    real_step = llm_engine.step

    def step():
        time.sleep(seconds)
        return real_step()

    llm_engine.step = step  # the engine thread looks the method up on every step
    try:
        yield
    finally:
        del llm_engine.step


def scrape(http_client) -> dict[str, float]:
    """/metrics as {name{label=value,...}: value}."""
    r = http_client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    values = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            values[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return values


# -- the official client against the offline oracle ------------------------------------------


def test_completion_equals_offline_greedy_streamed_or_not(client, offline):
    ids = prompt_ids(1, seed=1)[0]
    want = offline.generate([ids], SamplingParams(max_tokens=10, **GREEDY))[0]
    got = client.completions.create(model=MODEL, prompt=ids, max_tokens=10, **GREEDY)
    assert got.choices[0].text == want.text
    assert got.choices[0].finish_reason == want.finish_reason
    assert (got.usage.prompt_tokens, got.usage.completion_tokens) == (len(ids), len(want.token_ids))
    chunks = list(client.completions.create(model=MODEL, prompt=ids, max_tokens=10, stream=True,
                                            stream_options={"include_usage": True}, **GREEDY))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == want.text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == want.finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == len(want.token_ids)


def test_string_prompt_is_tokenized_like_offline(client, offline):
    want = offline.generate(["Hello there"], SamplingParams(max_tokens=6, **GREEDY))[0]
    got = client.completions.create(model=MODEL, prompt="Hello there", max_tokens=6, **GREEDY)
    assert got.choices[0].text == want.text and got.usage.prompt_tokens == len(want.prompt_token_ids)


def test_chat_and_streaming_chat_equal_offline_chat(client, offline):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Why is the sky blue?"}]
    want = offline.chat(messages, SamplingParams(max_tokens=12, **GREEDY))
    got = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=12, **GREEDY)
    assert got.object == "chat.completion" and got.model == MODEL
    assert got.choices[0].message.role == "assistant" and got.choices[0].message.content == want.text
    assert got.usage.prompt_tokens == len(want.prompt_token_ids)
    stream = list(client.chat.completions.create(model=MODEL, messages=messages, max_completion_tokens=12,
                                                 stream=True, **GREEDY))
    assert stream[0].object == "chat.completion.chunk" and stream[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in stream) == want.text
    assert stream[-1].choices[0].finish_reason == want.finish_reason
    parts = [{"role": "system", "content": [{"type": "text", "text": "Be brief."}]}, messages[1]]
    got_parts = client.chat.completions.create(model=MODEL, messages=parts, max_tokens=12, **GREEDY)
    assert got_parts.choices[0].message.content == want.text


def test_chat_without_max_tokens_may_fill_the_context(client, offline):
    messages = [{"role": "user", "content": "x"}]
    got = client.chat.completions.create(model=MODEL, messages=messages, stop=["\n", "a"], seed=3, temperature=1.0)
    assert got.choices[0].finish_reason in ("stop", "length")
    assert got.usage.total_tokens <= introspect.max_model_len(offline)


def test_64_concurrent_streams_each_equal_their_offline_output(live, offline, engine):
    prompts = prompt_ids(64, seed=2)
    want = [o.text for o in offline.generate(prompts, SamplingParams(max_tokens=12, ignore_eos=True, **GREEDY))]

    async def run() -> list[str]:
        async with AsyncOpenAI(base_url=f"{live.url}/v1", api_key=KEY, max_retries=0, timeout=60) as aclient:
            async def one(ids: list[int]) -> str:
                stream = await aclient.completions.create(model=MODEL, prompt=ids, max_tokens=12, stream=True,
                                                          extra_body={"ignore_eos": True}, **GREEDY)
                return "".join([c.choices[0].text async for c in stream])

            return await asyncio.gather(*(one(p) for p in prompts))

    assert asyncio.run(run()) == want
    wait_idle(engine)


# -- disconnects free the request's KV blocks -------------------------------------------------


def test_stream_disconnect_aborts_the_request(live, http, engine):
    aborted = scrape(http).get("llm_infer_finished_requests_total{finish_reason=abort}", 0)
    body = {"model": MODEL, "prompt": [5, 6, 7, 8], "max_tokens": 500, "ignore_eos": True, "stream": True}
    with slow_steps(engine):  # 500 tokens now take 10 s: only an abort makes the engine idle within 3 s
        with http.stream("POST", "/v1/completions", json=body) as r:  # read two chunks, then hang up
            assert r.status_code == 200
            seen = 0
            for line in r.iter_lines():
                seen += line.startswith("data: {")
                if seen == 2:
                    break
            assert engine.snapshot.running + engine.snapshot.waiting == 1
        wait_idle(engine, timeout=3)
    assert scrape(http)["llm_infer_finished_requests_total{finish_reason=abort}"] == aborted + 1


def test_non_streaming_disconnect_aborts_the_request(live, http, engine):
    aborted = scrape(http).get("llm_infer_finished_requests_total{finish_reason=abort}", 0)
    body = {"model": MODEL, "prompt": [9, 10, 11], "max_tokens": 500, "ignore_eos": True}
    with slow_steps(engine):
        with pytest.raises(httpx.ReadTimeout):
            http.post("/v1/completions", json=body, timeout=0.3)
        wait_idle(engine, timeout=3)
    assert scrape(http)["llm_infer_finished_requests_total{finish_reason=abort}"] == aborted + 1
    assert http.post("/v1/completions", json={**body, "max_tokens": 2}).status_code == 200


# -- bad requests: the right 4xx and the OpenAI error body ------------------------------------


def assert_error(r: httpx.Response, status: int, param: str | None = "any", code: str | None = None) -> dict:
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert error["type"] == "invalid_request_error" and error["code"] == code
    if param != "any":
        assert error["param"] == param
    return error


CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
OK_CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
OK_COMPLETION = {"model": MODEL, "prompt": "hi", "max_tokens": 2}


@pytest.mark.parametrize("path,body,status,param,message", [
    (COMPLETIONS, b"{not json", 400, None, "not valid JSON"),
    (COMPLETIONS, b"\xff\xfe", 400, None, "not valid JSON"),
    (COMPLETIONS, b"[1, 2]", 400, None, "JSON object"),
    (COMPLETIONS, b'{"prompt": "a\\ud800"}', 400, None, "unpaired surrogates"),
    (CHAT, b'{"model": "\\udfff", "messages": []}', 400, None, "unpaired surrogates"),
    (COMPLETIONS, b"[" * 100000, 400, None, "not valid JSON"),
    (COMPLETIONS, {**OK_COMPLETION, "max_tokens": "5"}, 400, "max_tokens", "integer"),
    (COMPLETIONS, {**OK_COMPLETION, "max_tokens": True}, 400, "max_tokens", "integer"),
    (COMPLETIONS, {**OK_COMPLETION, "temperature": -1}, 400, "temperature", "number"),
    (COMPLETIONS, {**OK_COMPLETION, "prompt": 5}, 400, "prompt", "string"),
    (COMPLETIONS, {**OK_COMPLETION, "prompt": ["a", ""]}, 400, "prompt", "prompt 1: the prompt is empty"),
    (COMPLETIONS, {**OK_COMPLETION, "prompt": [1, 100000]}, 400, "prompt", "outside the vocabulary"),
    (COMPLETIONS, {**OK_COMPLETION, "prompt": ""}, 400, "prompt", "empty"),
    (COMPLETIONS, {"model": MODEL, "max_tokens": 2}, 400, "prompt", "required"),
    (COMPLETIONS, {**OK_COMPLETION, "n": 0}, 400, "n", "n must be an integer in [1, 128]"),
    (COMPLETIONS, {**OK_COMPLETION, "suffix": "x"}, 400, "suffix", "not supported"),
    (COMPLETIONS, {**OK_COMPLETION, "stop": [1]}, 400, "stop", "string"),
    (COMPLETIONS, {**OK_COMPLETION, "prompt": [7] * 500, "max_tokens": 13}, 400, "max_tokens",
     "maximum context length is 512"),
    (COMPLETIONS, {**OK_COMPLETION, "prompt": [7] * 600}, 400, "prompt", "maximum context length"),
    (CHAT, {**OK_CHAT, "messages": []}, 400, "messages", "non-empty list"),
    (CHAT, {**OK_CHAT, "messages": [{"role": "user"}]}, 400, "messages", "content"),
    (CHAT, {**OK_CHAT, "messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, 400, "messages",
     "text"),
    (CHAT, {**OK_CHAT, "n": 129}, 400, "n", "n must be an integer in [1, 128]"),
    (CHAT, {**OK_CHAT, "top_p": 1.5}, 400, "top_p", "number"),
    (CHAT, {**OK_CHAT, "max_completion_tokens": 600}, 400, "max_tokens", "maximum context length"),
    (CHAT, {**OK_CHAT, "stream": "yes"}, 400, "stream", "true or false"),
    (CHAT, {**OK_CHAT, "seed": 1 << 70}, 400, "seed", "integer"),
    (CHAT, {**OK_CHAT, "thinking_budget": 4}, 400, "thinking_budget", "this model has no reasoning parser"),
])
def test_bad_requests_get_a_4xx_with_the_openai_error_body(http, path, body, status, param, message):
    if isinstance(body, bytes):
        r = http.post(path, content=body, headers={"Content-Type": "application/json"})
    else:
        r = http.post(path, json=body)
    assert message in assert_error(r, status, param)["message"]


def test_unknown_model_is_404_model_not_found(http, client):
    assert_error(http.post(CHAT, json={**OK_CHAT, "model": "gpt-4o"}), 404, "model", "model_not_found")
    with pytest.raises(Exception) as info:
        client.completions.create(model="gpt-4o", prompt="hi", max_tokens=2)
    assert getattr(info.value, "status_code", None) == 404


def test_oversized_body_is_413(http):
    big = {**OK_COMPLETION, "prompt": "x" * (1 << 20)}
    assert_error(http.post(COMPLETIONS, json=big), 413)
    chunked = (part for part in (b'{"prompt": "', b"x" * (1 << 20), b'"}'))  # no Content-Length
    assert_error(http.post(COMPLETIONS, content=chunked, headers={"Content-Type": "application/json"}), 413)


def test_api_key_is_required_on_v1_only(live, http):
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
        r = httpx.post(f"{live.url}{COMPLETIONS}", json=OK_COMPLETION, headers=headers)
        assert_error(r, 401, code="invalid_api_key")
        assert_error(httpx.get(f"{live.url}/v1/models", headers=headers), 401, code="invalid_api_key")
    assert httpx.get(f"{live.url}/health").status_code == 200
    assert httpx.get(f"{live.url}/metrics").status_code == 200
    assert http.post(COMPLETIONS, json=OK_COMPLETION).status_code == 200


def test_unknown_routes_and_methods_use_the_error_body(http):
    assert_error(http.get("/v1/engines"), 404)
    assert_error(http.post("/nothing/here", json={}), 404)
    assert_error(http.get(COMPLETIONS), 405)


def test_server_still_serves_after_errors(http, open_app):
    r = http.post(COMPLETIONS, json=OK_COMPLETION)
    assert r.status_code == 200 and r.json()["choices"][0]["finish_reason"] in ("stop", "length")
    r = open_app.post(CHAT, json={k: v for k, v in OK_CHAT.items() if k != "model"})  # no key needed here
    assert r.status_code == 200 and r.json()["object"] == "chat.completion"


# -- fuzzing: no client input yields a 5xx ----------------------------------------------------

surrogates = st.text(st.characters(categories=["Cs", "Ll"]), min_size=1, max_size=4)  # "\ud800" is valid JSON
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20) | surrogates,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12)


def field(valid: st.SearchStrategy) -> st.SearchStrategy:
    """Mostly valid values, sometimes any JSON value (so a whole body is often valid)."""
    return st.integers(0, 5).flatmap(lambda i: json_values if i == 5 else valid)


small_tokens = field(st.integers(1, 3))
sampling = {
    "model": field(st.sampled_from([MODEL, MODEL, "nope"])),
    "temperature": field(st.floats(0, 2)),
    "top_p": field(st.floats(0, 1)),
    "top_k": field(st.integers(-1, 400)),
    "min_p": field(st.floats(0, 1)),
    "seed": field(st.integers(0, 2**63 - 1)),
    "n": field(st.integers(1, 2)),
    "stop": field(st.text(min_size=1, max_size=3) | st.lists(st.text(min_size=1, max_size=3), max_size=3)),
    "stream": field(st.booleans()),
    "stream_options": field(st.fixed_dictionaries({"include_usage": st.booleans()})),
    "ignore_eos": field(st.booleans()),
    "presence_penalty": field(st.floats(-2, 2)),
    "frequency_penalty": field(st.floats(-2, 2)),
    "repetition_penalty": field(st.floats(0.5, 2)),
    "logit_bias": field(st.dictionaries(st.integers(0, 400).map(str), st.floats(-100, 100), max_size=3)),
    "min_tokens": field(st.integers(0, 3)),
    "stop_token_ids": field(st.lists(st.integers(0, 400), max_size=3)),
    "response_format": field(st.just({"type": "text"})),
    "user": json_values,
}
token_ids = st.lists(st.integers(0, 319), min_size=1, max_size=8)
completion_bodies = st.fixed_dictionaries(
    {"max_tokens": field(st.integers(0, 3)),
     "prompt": field(st.text(min_size=1, max_size=30) | surrogates | token_ids
                     | st.lists(st.text(min_size=1, max_size=5), min_size=1, max_size=3)
                     | st.lists(token_ids, min_size=1, max_size=2))},
    optional={**sampling, "echo": field(st.booleans()), "logprobs": field(st.integers(0, 5)),
              "best_of": field(st.integers(1, 2))})
message = st.fixed_dictionaries({"role": field(st.sampled_from(["user", "system", "assistant"])),
                                 "content": field(st.text(max_size=20) | surrogates
                                                  | st.lists(st.fixed_dictionaries(
                                                      {"type": st.just("text"), "text": st.text(max_size=8)}),
                                                      max_size=2))})
chat_bodies = st.fixed_dictionaries(
    {"max_completion_tokens": small_tokens, "messages": field(st.lists(message, min_size=1, max_size=3))},
    optional={**sampling, "max_tokens": small_tokens, "logprobs": field(st.booleans()),
              "top_logprobs": field(st.integers(0, 5))})


@pytest.mark.slow  # hypothesis: 200 fuzzed bodies
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                   HealthCheck.too_slow])
@given(request=st.one_of(
    st.tuples(st.just(COMPLETIONS), completion_bodies),
    st.tuples(st.just(CHAT), chat_bodies),
    st.tuples(st.sampled_from([COMPLETIONS, CHAT]),
              json_values | chat_bodies | completion_bodies | st.binary(max_size=40)),
))
def test_fuzzed_bodies_never_get_a_5xx(open_app, request):
    path, body = request
    if isinstance(body, bytes):
        r = open_app.post(path, content=body, headers={"Content-Type": "application/json"})
    else:
        r = open_app.post(path, content=json.dumps(body, allow_nan=True))
    event(f"{path} {r.status_code} {r.json()['error']['param'] if r.status_code >= 400 else ''}")
    assert r.status_code < 500, r.text
    if r.status_code >= 400:
        assert set(r.json()["error"]) == {"message", "type", "param", "code"}


def test_after_fuzzing_the_engine_is_healthy_and_idle(open_app, engine):
    r = open_app.post(COMPLETIONS, json=OK_COMPLETION)
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] >= 1
    assert open_app.get("/health").status_code == 200
    wait_idle(engine)


# -- observability ----------------------------------------------------------------------------


def test_metrics_models_and_health(http, client):
    client.completions.create(model=MODEL, prompt=[1, 2, 3], max_tokens=3, **GREEDY)
    assert http.post(COMPLETIONS, json={**OK_COMPLETION, "n": 0}).status_code == 400
    m = scrape(http)
    assert m["llm_infer_requests_total{endpoint=/v1/completions,status=200}"] >= 1
    assert m["llm_infer_requests_total{endpoint=/v1/completions,status=400}"] >= 1
    assert m["llm_infer_time_to_first_token_seconds_count"] >= 1
    assert m["llm_infer_time_per_output_token_seconds_count"] >= 1
    assert m["llm_infer_generation_tokens_total"] >= 3 and m["llm_infer_prompt_tokens_total"] >= 3
    assert m["llm_infer_finished_requests_total{finish_reason=length}"] >= 1
    for gauge in ("running_requests", "waiting_requests", "kv_cache_usage_ratio", "prefix_cache_hit_rate"):
        assert 0 <= m[f"llm_infer_{gauge}"] <= 64
    assert "llm_infer_spec_acceptance_rate" not in m  # speculation is off
    models = client.models.list().data
    assert [x.id for x in models] == [MODEL]
    assert http.get("/health").json() == {"status": "ok"}


def test_the_config_model_string_is_also_accepted(http, engine):
    r = http.post(COMPLETIONS, json={**OK_COMPLETION, "model": str(engine.llm.config.model)})
    assert r.status_code == 200 and r.json()["model"] == MODEL


# -- a failing engine: errors to open requests, unhealthy, but no crash -----------------------


def test_a_failed_step_fails_requests_and_marks_the_server_unhealthy(tiny_models):
    llm = LLM(tiny_engine_config(tiny_models["qwen2"]), progress=False)
    steps = 0
    real_step = llm.engine.step

    def dying_step():
        nonlocal steps
        steps += 1
        if steps > 3:
            raise WorkerError("worker rank 0 died: test")
        return real_step()

    llm.engine.step = dying_step
    async_engine = AsyncEngine(llm)
    try:
        with TestClient(build_app(async_engine, MODEL), raise_server_exceptions=False) as c:
            r = c.post(COMPLETIONS, json={"prompt": [1, 2], "max_tokens": 50, "ignore_eos": True})
            assert r.status_code == 503 and "worker rank 0 died" in r.json()["error"]["message"]
            health = c.get("/health")
            assert health.status_code == 503 and "worker rank 0 died" in health.json()["error"]["message"]
            r = c.post(COMPLETIONS, json={"prompt": [1, 2], "max_tokens": 2, "stream": True})
            assert r.status_code == 503
            assert c.post(COMPLETIONS, json={"prompt": 5}).status_code == 400  # validation still answers
    finally:
        async_engine.shutdown()
        llm.close()


# -- the command ------------------------------------------------------------------------------


def test_serve_with_a_bad_config_exits_2_with_one_error_line(capsys):
    assert cli_main(["serve", "--config", "/no/such.yaml", "--port", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: config file not found: /no/such.yaml"]


def test_serve_prints_its_url_answers_and_stops_on_ctrl_c(tiny_models, tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny_engine_config(tiny_models["qwen2"])))
    env = dict(os.environ, LLM_INFER_API_KEY="env-key")
    proc = subprocess.Popen([sys.executable, "-m", "llm_infer.entrypoints.cli", "serve", "--config", str(config),
                             "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline()
        assert line.startswith(f"serving {MODEL} at http://127.0.0.1:"), (line, proc.stderr.read())
        base = line.split(" at ")[1].split()[0]  # http://127.0.0.1:PORT/v1
        assert httpx.get(f"{base}/models").status_code == 401
        r = httpx.get(f"{base}/models", headers={"Authorization": "Bearer env-key"})
        assert r.status_code == 200 and r.json()["data"][0]["id"] == MODEL
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
        assert "Traceback" not in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_serve_on_a_busy_port_exits_2_before_loading_the_model(capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert cli_main(["serve", "--config", "/no/such.yaml", "--port", str(port)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: cannot listen on 127.0.0.1:{port}: ")


@pytest.mark.slow  # worker processes
def test_the_server_over_a_tensor_parallel_engine_streams_tp1s_text(tiny_models, offline):
    """Any parallel layout serves: TP=2 workers behind the same routes give TP=1's greedy text."""
    prompts = prompt_ids(3, seed=5)
    params = SamplingParams(max_tokens=10, temperature=0, ignore_eos=True)
    want = [o.text for o in offline.generate(prompts, params)]
    with LLM(tiny_engine_config(tiny_models["qwen2"], parallel={"tensor": 2}), progress=False) as llm:
        async_engine = AsyncEngine(llm)
        try:
            with TestClient(build_app(async_engine, MODEL), raise_server_exceptions=False) as c:
                for prompt, text in zip(prompts, want):
                    body = {"prompt": prompt, "max_tokens": 10, "ignore_eos": True, "stream": True, **GREEDY}
                    with c.stream("POST", COMPLETIONS, json=body) as r:
                        lines = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
                    assert lines[-1] == "[DONE]"
                    assert "".join(json.loads(x)["choices"][0]["text"] for x in lines[:-1]) == text
        finally:
            async_engine.shutdown()
