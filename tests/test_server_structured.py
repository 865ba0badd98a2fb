"""Structured output over HTTP through the official `openai` client: `response_format` (JSON schema
from a pydantic model via `chat.completions.parse`, JSON object), the `structured_outputs`
extension and vLLM's `guided_*` aliases, equal to the offline engine, streamed or not; bad
constraints are 400s naming the field."""

from __future__ import annotations

import json
import re

import httpx
import pytest
from openai import BadRequestError, OpenAI
from pydantic import BaseModel, Field

from llm_infer import LLM, SamplingParams
from llm_infer.entrypoints.server import AsyncEngine, build_app
from llm_infer.entrypoints.server.serve import ServerThread, served_model_name
from tests.conftest import tiny_engine_config

CLOSERS = {str(ord(c)): 4.0 for c in '",]}'}  # short JSON from a random byte-level model (see test_structured_output)
MESSAGES = [{"role": "user", "content": "Describe a city as JSON."}]


class City(BaseModel):
    name: str = Field(max_length=8)
    population: int
    capital: bool


@pytest.fixture(scope="module")
def offline(tiny_models):
    with LLM(tiny_engine_config(tiny_models["qwen2"]), progress=False) as llm:
        yield llm


@pytest.fixture(scope="module")
def server(tiny_models):
    llm = LLM(tiny_engine_config(tiny_models["qwen2"]), progress=False)
    engine = AsyncEngine(llm)
    thread = ServerThread(build_app(engine, served_model_name(llm)))
    yield thread
    thread.stop()
    engine.shutdown()
    llm.close()


@pytest.fixture(scope="module")
def client(server):
    return OpenAI(base_url=f"{server.url}/v1", api_key="none", max_retries=0)


def test_parse_with_a_pydantic_model_returns_that_model(client, offline):
    for seed in range(4):
        completion = client.chat.completions.parse(model="qwen2", messages=MESSAGES, response_format=City,
                                                   temperature=1.0, seed=seed, logit_bias=CLOSERS, max_tokens=120)
        city = completion.choices[0].message.parsed
        assert isinstance(city, City) and completion.choices[0].finish_reason == "stop"
        schema = City.model_json_schema()
        schema["additionalProperties"] = False  # what the openai client sends (strict)
        ref = offline.chat([MESSAGES], SamplingParams(max_tokens=120, temperature=1.0, seed=seed,
                                                      logit_bias={int(k): v for k, v in CLOSERS.items()},
                                                      structured_outputs={"json": schema}))[0]
        assert completion.choices[0].message.content == ref.text


def test_json_object_streamed_equals_not_streamed(client):
    kwargs = dict(model="qwen2", messages=MESSAGES, response_format={"type": "json_object"}, temperature=1.0,
                  seed=5, logit_bias=CLOSERS, max_tokens=200)
    whole = client.chat.completions.create(**kwargs).choices[0].message.content
    streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(stream=True, **kwargs)
                       if c.choices)
    assert streamed == whole and isinstance(json.loads(whole), dict)


@pytest.mark.parametrize("extra, check", [
    ({"structured_outputs": {"regex": "[A-Z][a-z]{2,5}"}}, lambda t: re.fullmatch("[A-Z][a-z]{2,5}", t)),
    ({"structured_outputs": {"choice": ["cat", "dog"]}}, lambda t: t in ("cat", "dog")),
    ({"guided_choice": ["up", "down"]}, lambda t: t in ("up", "down")),
    ({"guided_regex": "[0-9]{3}"}, lambda t: re.fullmatch("[0-9]{3}", t)),
    ({"guided_json": {"type": "array", "items": {"type": "integer"}, "maxItems": 3}},
     lambda t: isinstance(json.loads(t), list)),
], ids=["regex", "choice", "guided_choice", "guided_regex", "guided_json"])
def test_completions_take_the_extension_fields(client, extra, check):
    out = client.completions.create(model="qwen2", prompt="Say:", max_tokens=40, temperature=1.0, seed=1,
                                    logit_bias=CLOSERS, extra_body=extra, n=3)
    for choice in out.choices:
        assert choice.finish_reason == "stop" and check(choice.text), choice.text


@pytest.mark.parametrize("body, param, message", [
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "strin"}}}},
     "response_format", "strin"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x",
                                                                 "schema": {"type": "integer", "minimum": 3,
                                                                            "maximum": 1}}}},
     "response_format", "Unsatisfiable"),
    ({"response_format": {"type": "json_schema"}}, "response_format", "needs json_schema"),
    ({"response_format": {"type": "yaml"}}, "response_format", "type"),
    ({"guided_regex": "a(", "structured_outputs": {"regex": "b"}}, "guided_regex", "only one of"),
    ({"structured_outputs": {"regex": "a", "choice": ["b"]}}, "structured_outputs", "exactly one"),
    ({"structured_outputs": {"json": {"type": "object"}, "whitespace": True}}, "structured_outputs", "whitespace"),
])
def test_bad_constraints_are_400s_naming_the_field(server, body, param, message):
    r = httpx.post(f"{server.url}/v1/chat/completions", json={"messages": MESSAGES, "max_tokens": 4, **body})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == param and message in error["message"], error
    ok = httpx.post(f"{server.url}/v1/chat/completions", json={"messages": MESSAGES, "max_tokens": 2})
    assert ok.status_code == 200


def test_openai_client_raises_bad_request_for_an_invalid_schema(client):
    with pytest.raises(BadRequestError):
        client.chat.completions.create(model="qwen2", messages=MESSAGES, max_tokens=4, response_format={
            "type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object", "required": 5}}})


def test_instructor_extracts_a_pydantic_model_in_json_schema_mode(client):
    import instructor

    extractor = instructor.from_openai(client, mode=instructor.Mode.JSON_SCHEMA)
    city = extractor.chat.completions.create(model="qwen2", messages=MESSAGES, response_model=City, max_retries=0,
                                             temperature=1.0, seed=2, logit_bias=CLOSERS, max_tokens=120)
    assert isinstance(city, City)
