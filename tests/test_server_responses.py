"""POST /v1/responses (OpenAI's Responses API) through the official client's `responses.create`.

Same setup as test_server_chat.py: a tiny random Qwen3 under the Qwen3-Thinking-style template (its
replies reason), the offline `LLM.chat` as the oracle for prompts and greedy text, and scripted
engine output where a random model would never write a tool call.
"""

from __future__ import annotations

import json

import httpx
import jsonschema
import pytest

from llm_infer import SamplingParams
from tests.test_server_chat import (  # noqa: F401 (fixtures: a live server over the tiny engine, and the oracle)
    CALL_REPLY, GREEDY, MODEL, NO_THINKING, TOOLS, TWO_TOOLS, USER, WANT_CALLS, checkpoint, client, engine, live,
    offline, scripted)

pytestmark = pytest.mark.slow  # a live server
RESPONSE_TOOLS = [{"type": "function", **t["function"]} for t in TOOLS]
WEATHER = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 6},
                                            "days": {"type": "integer", "minimum": 1, "maximum": 7}},
           "required": ["city", "days"], "additionalProperties": False}


def summary(response) -> tuple:
    """(reasoning, text, [(name, arguments)]) of a response's output items."""
    reasoning = [c.text for item in response.output if item.type == "reasoning" for c in item.content]
    calls = [(item.name, item.arguments) for item in response.output if item.type == "function_call"]
    return "".join(reasoning) or None, response.output_text or None, calls


def streamed(events: list) -> tuple:
    """The stream checked against OpenAI's documented order; returns its final response."""
    types = [e.type for e in events]
    assert types[:2] == ["response.created", "response.in_progress"] and types[-1] in ("response.completed",
                                                                                      "response.incomplete")
    assert [e.sequence_number for e in events] == list(range(len(events)))
    final = events[-1].response
    text: dict[str, str] = {}
    open_items: set[str] = set()
    for e in events[2:-1]:
        if e.type == "response.output_item.added":
            open_items.add(e.item.id)
            assert final.output[e.output_index].id == e.item.id
        elif e.type == "response.output_item.done":
            open_items.remove(e.item.id)
            assert e.item.to_dict() == final.output[e.output_index].to_dict()
        elif e.type.endswith(".delta"):
            assert e.item_id in open_items
            text[e.item_id] = text.get(e.item_id, "") + e.delta
        elif e.type in ("response.output_text.done", "response.reasoning_text.done"):
            assert text[e.item_id] == e.text
    assert not open_items
    return final


def body(**extra) -> dict:
    return dict(model=MODEL, input="What is the weather in Oslo?", **extra)


@pytest.mark.parametrize("kwargs", [{}, NO_THINKING], ids=["reasoning", "no-thinking"])
def test_a_response_is_the_chat_reply_streamed_or_not(client, offline, kwargs):
    want = offline.chat(USER, SamplingParams(max_tokens=12, **GREEDY), chat_template_kwargs=kwargs.get(
        "chat_template_kwargs")).outputs[0]
    request = body(max_output_tokens=12, temperature=0.0, extra_body=kwargs)
    got = client.responses.create(**request)
    assert summary(got) == (want.message.reasoning_content, want.message.content, [])
    assert got.status == "incomplete" and got.incomplete_details.reason == "max_output_tokens"  # 12 tokens: cut
    assert got.usage.output_tokens == 12 and got.usage.input_tokens == len(offline.tokenizer.encode_chat(
        USER, chat_template_kwargs=kwargs.get("chat_template_kwargs")))
    assert got.usage.output_tokens_details.reasoning_tokens == (12 if want.message.reasoning_content else 0)
    final = streamed(list(client.responses.create(stream=True, **request)))
    assert summary(final) == summary(got) and final.status == "incomplete"


def test_instructions_and_message_items_reach_the_prompt(client, offline):
    items = [{"role": "developer", "content": "Answer briefly."},
             {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Hi there"}]},
             {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "And now?"}]
    got = client.responses.create(model=MODEL, instructions="You are terse.", input=items, max_output_tokens=2)
    messages = [{"role": "system", "content": "You are terse."}, {"role": "system", "content": "Answer briefly."},
                {"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello."},
                {"role": "user", "content": "And now?"}]
    assert got.usage.input_tokens == len(offline.tokenizer.encode_chat(messages))
    assert got.instructions == "You are terse." and got.max_output_tokens == 2


def test_a_finished_reply_is_completed(client, engine):
    with scripted(engine, "<think>Easy.</think>It is sunny."):
        got = client.responses.create(**body())
        final = streamed(list(client.responses.create(stream=True, **body())))
    assert got.status == final.status == "completed" and got.incomplete_details is None
    assert summary(got) == summary(final) == ("Easy.", "It is sunny.", [])
    assert [item.type for item in got.output] == ["reasoning", "message"]


def test_function_calls_round_trip_across_turns(client, engine, offline):
    """Call -> the client runs the tools -> function_call_output items -> the final answer; the second
    turn's prompt holds the reasoning, the calls and their results, rendered as the chat route would."""
    with scripted(engine, CALL_REPLY):
        first = client.responses.create(**body(tools=RESPONSE_TOOLS))
        final = streamed(list(client.responses.create(stream=True, **body(tools=RESPONSE_TOOLS))))
    assert summary(first) == summary(final) == ("The user wants the weather.", "Let me look.", WANT_CALLS)
    assert [item.type for item in first.output] == ["reasoning", "message", "function_call", "function_call"]
    assert first.status == "completed" and all(i.call_id.startswith("call_") for i in first.output[2:])
    history = [{"role": "user", "content": "What is the weather in Oslo?"}, *first.output]
    history += [{"type": "function_call_output", "call_id": item.call_id, "output": "12 degrees"}
                for item in first.output if item.type == "function_call"]
    with scripted(engine, "<think>Known.</think>12 degrees in both."):
        second = client.responses.create(model=MODEL, input=history, tools=RESPONSE_TOOLS)
    assert summary(second) == ("Known.", "12 degrees in both.", [])
    calls = [{"id": i.call_id, "type": "function", "function": {"name": i.name, "arguments": i.arguments}}
             for i in first.output[2:]]
    chat = [*USER, {"role": "assistant", "content": "Let me look.", "reasoning_content": "The user wants the weather.",
                    "tool_calls": calls}, *({"role": "tool", "tool_call_id": c["id"], "content": "12 degrees"}
                                            for c in calls)]
    assert second.usage.input_tokens == len(offline.tokenizer.encode_chat(chat, tools=TOOLS))


def test_forced_calls_with_the_real_engine_and_one_call_at_most(client):
    for seed in range(2):
        got = client.responses.create(**body(tools=[{"type": "function", **t["function"]} for t in TWO_TOOLS],
                                             tool_choice="required", parallel_tool_calls=False,
                                             max_output_tokens=200, temperature=1.0,
                                             extra_body={**NO_THINKING, "seed": seed}))
        calls = [item for item in got.output if item.type == "function_call"]
        assert len(calls) == 1 and got.status == "completed" and got.parallel_tool_calls is False
        assert calls[0].name in ("get_weather", "ping")
        json.loads(calls[0].arguments)


def test_a_json_schema_text_format_constrains_the_answer(client):
    text = {"format": {"type": "json_schema", "name": "forecast", "schema": WEATHER, "strict": True}}
    for seed in range(2):
        request = body(text=text, max_output_tokens=200, temperature=1.0, extra_body={**NO_THINKING, "seed": seed})
        got = client.responses.create(**request)
        jsonschema.validate(json.loads(got.output_text), WEATHER)
        assert got.status == "completed" and got.text.format.type == "json_schema"
        assert summary(streamed(list(client.responses.create(stream=True, **request)))) == summary(got)


@pytest.mark.parametrize("extra,param,message", [
    ({"previous_response_id": "resp_1"}, "previous_response_id", "keeps no responses"),
    ({"store": True}, "store", "keeps no responses"),
    ({"tools": [{"type": "web_search"}]}, "tools", "tools"),
    ({"reasoning": {"effort": "high"}}, "reasoning", "reasoning.effort is not supported"),
    ({"include": ["reasoning.encrypted_content"]}, "include", "not supported"),
    ({"truncation": "auto"}, "truncation", "not supported"),
    ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input", "input"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]}, "input", "input"),
    ({"max_output_tokens": 5000}, "max_output_tokens", "maximum context length"),
    ({"text": {"format": {"type": "json_schema", "name": "x"}}}, "text", "needs a schema"),
    ({"text": {"format": {"type": "json_schema", "name": "x", "schema": {"type": "nope"}}}}, "text", "Invalid type: nope"),
    ({"tool_choice": {"type": "function", "name": "nope"}, "tools": RESPONSE_TOOLS}, "tool_choice", "not among"),
    ({"temperature": -1}, "temperature", "temperature"),
    ({"n": 2}, "n", "unknown field"),
    ({"thinking_budget": 2, "chat_template_kwargs": {"x": 1}, "model": "other"}, "model", "does not exist"),
])
def test_bad_response_requests_are_400s_naming_the_field(live, extra, param, message):
    r = httpx.post(f"{live.url}/v1/responses", json={**body(), "max_output_tokens": 4, **extra}, timeout=60)
    assert 400 <= r.status_code < 500, r.text
    error = r.json()["error"]
    assert error["param"] == param and message in error["message"] and "\n" not in error["message"], error


def test_bookkeeping_fields_are_accepted(client):
    got = client.responses.create(**body(max_output_tokens=2, metadata={"k": "v"}, user="u", store=False,
                                         truncation="disabled", include=[]))
    assert got.store is False and got.usage.output_tokens == 2


# -- fuzzing: no body yields a 5xx ---------------------------------------------------------------

def _fuzz_bodies():
    from hypothesis import strategies as st

    from tests.test_server_chat import marked_text, mostly

    part = st.fixed_dictionaries({"type": mostly(st.sampled_from(["input_text", "output_text", "input_image"])),
                                  "text": mostly(marked_text)})
    item = st.one_of(
        st.fixed_dictionaries({"role": mostly(st.sampled_from(["user", "assistant", "developer", "tool"])),
                               "content": mostly(marked_text | st.lists(part, max_size=2))}),
        st.fixed_dictionaries({"type": st.just("function_call"), "call_id": mostly(marked_text),
                               "name": mostly(marked_text), "arguments": mostly(marked_text)}),
        st.fixed_dictionaries({"type": st.just("function_call_output"), "call_id": mostly(marked_text),
                               "output": mostly(marked_text)}),
        st.fixed_dictionaries({"type": st.just("reasoning"), "summary": mostly(st.just([])),
                               "content": mostly(st.lists(st.fixed_dictionaries(
                                   {"type": st.just("reasoning_text"), "text": marked_text}), max_size=2))}))
    tool = st.fixed_dictionaries({"type": mostly(st.just("function")), "name": mostly(marked_text)},
                                 optional={"parameters": mostly(st.just({"type": "object"}))})
    return st.fixed_dictionaries(
        {"input": mostly(marked_text | st.lists(item, min_size=1, max_size=4)),
         "max_output_tokens": mostly(st.integers(1, 3))},
        optional={"instructions": mostly(marked_text), "tools": mostly(st.lists(tool, max_size=2)),
                  "tool_choice": mostly(st.sampled_from(["none", "auto", "required"])),
                  "parallel_tool_calls": mostly(st.booleans()), "stream": mostly(st.booleans()),
                  "text": mostly(st.just({"format": {"type": "json_object"}})),
                  "reasoning": mostly(st.just({})), "store": mostly(st.booleans())})


def test_fuzzed_response_bodies_never_get_a_5xx(engine):
    from hypothesis import HealthCheck, given, settings
    from starlette.testclient import TestClient

    from llm_infer.entrypoints.server import build_app

    with TestClient(build_app(engine, MODEL), raise_server_exceptions=False) as app:
        @settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))
        @given(body=_fuzz_bodies())
        def check(body):
            r = app.post("/v1/responses", content=json.dumps(body, allow_nan=True))
            assert r.status_code < 500, (body, r.text)
            if r.status_code >= 400:
                assert set(r.json()["error"]) == {"message", "type", "param", "code"}

        check()
