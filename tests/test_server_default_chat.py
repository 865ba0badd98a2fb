"""Structured output and tools on the default model (SmolLM2-135M-Instruct) over HTTP, through the
official `openai` client and `instructor`.

The default model's chat template is plain ChatML: it never mentions `tools`, so the tools reach
the model in the system prompt we write (`runtime/tool_prompt.py`), the history's calls and
results as `<tool_call>` / `<tool_response>` blocks, and the `hermes` parser reads the reply.
A real (if tiny) instruct model under real grammars: every output is checked against its schema
with `jsonschema`, and streams against the whole replies. Greedy or seeded, a few dozen tokens
each (the model decodes some tens of tokens per second on CPU).
"""

from __future__ import annotations

import json

import jsonschema
import pytest
from openai import OpenAI
from pydantic import BaseModel, ConfigDict, Field

from llm_infer.entrypoints.server import AsyncEngine, build_app
from llm_infer.entrypoints.server.serve import ServerThread, served_model_name
from tests.test_server_chat import joined_stream, message_summary, stream_summary

pytestmark = pytest.mark.slow  # the default model, generating on CPU

WEATHER = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 10}},
           "required": ["city"], "additionalProperties": False}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Current weather in a city",
                                           "parameters": WEATHER}}]
USER = [{"role": "user", "content": "What is the weather in Oslo?"}]
GREEDY = {"temperature": 0}


class City(BaseModel):
    name: str = Field(max_length=12)
    population: int = Field(ge=0, le=99_999_999)


class Forecast(BaseModel):
    model_config = ConfigDict(extra="forbid")  # else the grammar lets the model add properties at length
    city: str = Field(max_length=10)
    days: int = Field(ge=1, le=7)


@pytest.fixture(scope="module")
def llm(default_llm):
    return default_llm


@pytest.fixture(scope="module")
def model(llm) -> str:
    return served_model_name(llm)


@pytest.fixture(scope="module")
def client(llm):
    """A live server over the shared default engine (the engine outlives it: only its thread stops)."""
    engine = AsyncEngine(llm)
    server = ServerThread(build_app(engine, served_model_name(llm)))
    yield OpenAI(base_url=f"{server.url}/v1", api_key="none", max_retries=0)
    server.stop()
    engine.shutdown()


def valid_calls(message) -> list[tuple[str, str]]:
    """The message's tool calls, each checked: a known tool, arguments valid for its schema."""
    assert message.tool_calls, message
    for call in message.tool_calls:
        assert call.type == "function" and call.id.startswith("call_") and call.function.name == "get_weather"
        jsonschema.validate(json.loads(call.function.arguments), WEATHER)
    return [(c.function.name, c.function.arguments) for c in message.tool_calls]


def test_the_template_has_no_tools_so_ours_are_used(llm):
    assert not llm.tokenizer.chat_template.handles_tools and llm.chat_parser.tool_calls.name == "hermes"


def test_parse_with_a_pydantic_model_returns_that_model(client, model):
    schema = City.model_json_schema()
    for sampling in (GREEDY, {"temperature": 1.0, "seed": 4}):
        completion = client.chat.completions.parse(
            model=model, messages=[{"role": "user", "content": "Name a large city and its population, as JSON."}],
            response_format=City, max_tokens=40, **sampling)
        choice = completion.choices[0]
        assert choice.finish_reason == "stop" and isinstance(choice.message.parsed, City)
        jsonschema.validate(json.loads(choice.message.content), schema)


def test_a_tool_round_trip(client, model, llm):
    """tool_choice required -> a valid call -> the tool's result -> a final answer (tool_choice auto),
    whose prompt holds the call and the result, as the server rendered it."""
    first = client.chat.completions.create(model=model, messages=USER, tools=TOOLS, tool_choice="required",
                                           max_tokens=80, **GREEDY)
    assert first.choices[0].finish_reason == "tool_calls" and first.choices[0].message.content is None
    calls = valid_calls(first.choices[0].message)
    message = first.choices[0].message
    history = [*USER, message.model_dump(exclude_none=True, exclude={"refusal", "audio", "function_call",
                                                                       "annotations"})]
    history += [{"role": "tool", "tool_call_id": c.id, "content": "12 degrees and rain"} for c in message.tool_calls]
    final = client.chat.completions.create(model=model, messages=history, tools=TOOLS, max_tokens=16, **GREEDY)
    reply = final.choices[0].message
    assert reply.content or reply.tool_calls
    prompt = llm.tokenizer.render_chat(history, tools=TOOLS)
    assert prompt.count("<tool_response>\n12 degrees and rain\n</tool_response>") == len(calls)
    for name, arguments in calls:
        assert f'<tool_call>\n{{"name": "{name}", "arguments": {arguments}}}\n</tool_call>' in prompt
    assert json.dumps(TOOLS[0]) in prompt  # auto still offers the tools
    assert final.usage.prompt_tokens == len(llm.tokenizer.encode_chat(history, tools=TOOLS)) \
        > len(llm.tokenizer.encode_chat(history))


@pytest.mark.parametrize("choice,sampling", [
    ("required", GREEDY),
    ({"type": "function", "function": {"name": "get_weather"}}, {"temperature": 1.0, "seed": 11}),
], ids=["required-greedy", "named-seeded"])
def test_streamed_tool_calls_equal_the_whole_reply(client, model, choice, sampling):
    body = dict(model=model, messages=USER, tools=TOOLS, tool_choice=choice, max_tokens=80, **sampling)
    whole = client.chat.completions.create(**body).choices[0]
    calls = valid_calls(whole.message)
    assert whole.finish_reason == "tool_calls" and message_summary(whole.message) == (None, None, calls)
    streamed = joined_stream(client.chat.completions.create(stream=True, **body))[0]
    assert stream_summary(streamed) == (None, None, calls) and streamed["finish"] == "tool_calls"


@pytest.mark.parametrize("mode", ["TOOLS", "JSON_SCHEMA"])
def test_instructor_extracts_a_model(client, model, mode):
    import instructor

    extractor = instructor.from_openai(client, mode=getattr(instructor.Mode, mode))
    got = extractor.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "The forecast for Oslo, 3 days ahead."}],
        response_model=Forecast, max_retries=0, max_tokens=60, **GREEDY)
    assert isinstance(got, Forecast)


def test_a_reply_cut_inside_its_second_call_shows_no_markup(client, model):
    """The issue's case: required, max_tokens 60: the second call is cut (greedy fp32: inside its end
    tag, so both bodies are complete). Complete calls come back as tool calls, no markup anywhere, the
    finish reason stays `length`, and the stream agrees; with parallel_tool_calls false the grammar
    stops after the first call."""
    body = dict(model=model, messages=USER, tools=TOOLS, tool_choice="required", max_tokens=60, **GREEDY)
    whole = client.chat.completions.create(**body).choices[0]
    assert whole.finish_reason == "length" and whole.message.content is None
    calls = valid_calls(whole.message)
    streamed = joined_stream(client.chat.completions.create(stream=True, **body))[0]
    assert stream_summary(streamed) == (None, None, calls) and streamed["finish"] == "length"
    one = client.chat.completions.create(**body, parallel_tool_calls=False).choices[0]
    assert one.finish_reason == "tool_calls" and valid_calls(one.message) == calls[:1]
