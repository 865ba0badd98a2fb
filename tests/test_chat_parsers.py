"""Chat output parsers: reasoning (`qwen3`) and tool calls (`hermes`), whole and streamed.

The oracle for streaming is the whole reply's parse: a stream cut at any point (and one fed a
character at a time) must join into exactly the same reasoning, content and tool calls.
"""

from __future__ import annotations

import json
import re

import pytest

from llm_infer.errors import UserError
from llm_infer.runtime.output_parsers import ChatOutputParser, ParsedMessage
from llm_infer.runtime.structured_output.params import ReasoningStart
from llm_infer.runtime.tokenizer import Tokenizer
from tests.checkpoints import write_byte_tokenizer

IM_START, THINK, END_THINK = 257, 259, 260
CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>'
CALL2 = '<tool_call>\n{"name": "get_time", "arguments": {"zone": "CET", "exact": true}}\n</tool_call>'
OSLO = ("get_weather", '{"city": "Oslo"}')
CET = ("get_time", '{"zone": "CET", "exact": true}')


@pytest.fixture(scope="module")
def parser(tmp_path_factory) -> ChatOutputParser:
    path = tmp_path_factory.mktemp("qwen3-parsers")
    write_byte_tokenizer(path, "qwen3")
    return ChatOutputParser(Tokenizer(path))  # auto: qwen3 and hermes, from the template


THINKING = [IM_START, 10, THINK, 10]  # the prompt opened the reasoning (Qwen3-Thinking-2507's template)
ANSWERING = [IM_START, 10, END_THINK, 10]  # enable_thinking: false closed the block in the prompt
UNDECIDED = [IM_START, 10]  # neither (Qwen3's hybrid template): the reply's first text decides

# (text, prompt, parse tools) -> (reasoning_content, content, [(name, arguments)])
CASES = [
    ("<think>\nI should greet.\n</think>\n\nHello!", THINKING, True, ("I should greet.", "Hello!", [])),
    ("Opened by the prompt.</think>Answer", THINKING, True, ("Opened by the prompt.", "Answer", [])),
    ("<think>never closed, cut by max_tokens", THINKING, True, ("never closed, cut by max_tokens", None, [])),
    ("an almost </thin tag </think>done", THINKING, True, ("an almost </thin tag", "done", [])),
    ("ends on a partial </thi", THINKING, True, ("ends on a partial </thi", None, [])),
    ("<think>\n\n</think>\n\nNo thoughts.", THINKING, True, (None, "No thoughts.", [])),
    ("  \n ", THINKING, True, (None, None, [])),
    ("", THINKING, True, (None, None, [])),
    ("<think>x</think>tags are text here", ANSWERING, True, (None, "<think>x</think>tags are text here", [])),
    ("<think>plan " + CALL + "</think>\n\n" + CALL, THINKING, True, ("plan " + CALL, None, [OSLO])),
    ("Let me check.\n" + CALL, ANSWERING, True, (None, "Let me check.", [OSLO])),
    (CALL + "\n" + CALL2 + "\n", ANSWERING, True, (None, None, [OSLO, CET])),
    ("A " + CALL + " B\n", ANSWERING, True, (None, "AB\n", [OSLO])),  # blanks touching a call are not content
    ("<think>why</think>\n" + CALL, THINKING, True, ("why", None, [OSLO])),
    ('x <tool_call>{"name": oops}</tool_call> y', ANSWERING, True,
     (None, 'x <tool_call>{"name": oops}</tool_call> y', [])),
    ('<tool_call>{"arguments": {}}</tool_call>', ANSWERING, True,
     (None, '<tool_call>{"arguments": {}}</tool_call>', [])),
    ('<tool_call>{"name": "f", "arguments": [1]}</tool_call>', ANSWERING, True,
     (None, '<tool_call>{"name": "f", "arguments": [1]}</tool_call>', [])),
    ('<tool_call>{"name": "f"}</tool_call>', ANSWERING, True, (None, None, [("f", "{}")])),
    ('<tool_call>{"name": "f", "arguments": "{\\"a\\": 1}"}</tool_call>', ANSWERING, True,
     (None, None, [("f", '{"a": 1}')])),
    ('<tool_call>{"name": "f", "arguments": {"city": "Zürich"}}', ANSWERING, True,  # unclosed but complete
     (None, None, [("f", '{"city": "Zürich"}')])),
    ('<tool_call>{"name": "f", "argu', ANSWERING, True, (None, None, [])),  # an unfinished call is never content
    ("Checking.\n" + CALL + '\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Os', ANSWERING, True,
     (None, "Checking.", [OSLO])),
    ("ends with <tool", ANSWERING, True, (None, "ends with <tool", [])),
    ("a <tooling> word\n\nand blanks  ", ANSWERING, True, (None, "a <tooling> word\n\nand blanks  ", [])),
    ("Sure.\n" + CALL, ANSWERING, False, (None, "Sure.\n" + CALL, [])),  # tool_choice none: markup stays
    ("<think>\nI should greet.\n</think>\n\nHello!", UNDECIDED, True, ("I should greet.", "Hello!", [])),
    ("<think>\n x</think>y", UNDECIDED, True, ("x", "y", [])),
    ("\n <think>x</think>y", UNDECIDED, True, (None, "\n <think>x</think>y", [])),  # the first token decides
    ("<think>never closed", UNDECIDED, True, ("never closed", None, [])),
    ("Hello! No reasoning here.</think>", UNDECIDED, True, (None, "Hello! No reasoning here.</think>", [])),
    (" <thin but not the tag", UNDECIDED, True, (None, " <thin but not the tag", [])),
    (" <thi", UNDECIDED, True, (None, " <thi", [])),  # held back, then the end says it is text
    ("Let me check.\n" + CALL, UNDECIDED, True, (None, "Let me check.", [OSLO])),
    ("<think>why</think>\n" + CALL, UNDECIDED, True, ("why", None, [OSLO])),
]


def summary(message: ParsedMessage) -> tuple:
    return message.reasoning_content, message.content, [(c.name, c.arguments) for c in message.tool_calls]


@pytest.mark.parametrize("text,prompt,tools,want", CASES)
def test_whole_replies_parse_into_reasoning_content_and_calls(parser, text, prompt, tools, want):
    assert summary(parser.parse(text, prompt, parse_tools=tools)) == want


def streamed(parser: ChatOutputParser, pieces: list[str], prompt: list[int], tools: bool, cut: bool = False) -> tuple:
    stream = parser.stream(prompt, parse_tools=tools)
    reasoning, content, calls = "", "", []
    deltas = [stream.feed(piece) for piece in pieces] + [stream.finish(cut)]
    for delta in deltas:
        reasoning += delta.reasoning
        content += delta.content
        for index, call in delta.tool_calls:
            assert index == len(calls)
            calls.append((call.name, call.arguments))
    assert summary(stream.message) == (reasoning or None, content or None, calls)
    return reasoning or None, content or None, calls


@pytest.mark.parametrize("text,prompt,tools,want", CASES)
def test_a_stream_cut_anywhere_joins_into_the_whole_parse(parser, text, prompt, tools, want):
    for cut in range(len(text) + 1):
        assert streamed(parser, [text[:cut], text[cut:]], prompt, tools) == want, cut
    for cut in range(1, len(text)):
        assert streamed(parser, [text[:cut // 2], text[cut // 2:cut], text[cut:]], prompt, tools) == want, cut
    assert streamed(parser, list(text), prompt, tools) == want


# Replies cut by max_tokens (finish reason `length`): the tag being written is dropped, not shown.
CUT_CASES = [
    ("ends with <tool", ANSWERING, (None, "ends with", [])),
    ("Sure." + CALL + "\n<tool_", ANSWERING, (None, "Sure.", [OSLO])),
    (CALL + '\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Os', ANSWERING, (None, None, [OSLO])),
    (CALL + "\n" + CALL2[:-3], ANSWERING, (None, None, [OSLO, CET])),  # cut inside the end tag: complete
    ("ends on a partial </thi", THINKING, ("ends on a partial", None, [])),
    ("<thi", UNDECIDED, (None, None, [])),
    ("<think>x</think>a <tooling> word  ", UNDECIDED, ("x", "a <tooling> word  ", [])),
]


@pytest.mark.parametrize("text,prompt,want", CUT_CASES)
def test_a_reply_cut_short_never_shows_the_markup_it_was_writing(parser, text, prompt, want):
    assert summary(parser.parse(text, prompt, cut=True)) == want
    for cut in range(len(text) + 1):
        assert streamed(parser, [text[:cut], text[cut:]], prompt, True, cut=True) == want, cut
    assert streamed(parser, list(text), prompt, True, cut=True) == want


def test_a_stream_never_shows_a_partial_tag_or_markup(parser):
    text = "<think>\nStep one.\n</think>\n\nChecking." + "\n" + CALL + "\nDone."
    stream = parser.stream(THINKING)
    for i, char in enumerate(text):
        delta = stream.feed(char)
        for part in (delta.reasoning, delta.content):
            assert "<" not in part and ">" not in part, (i, delta)
        if delta.tool_calls:  # the call is sent when its block closes, not before
            assert text[: i + 1].endswith("</tool_call>")
    stream.finish()
    assert summary(stream.message) == ("Step one.", "Checking.Done.", [OSLO])


def test_tool_calls_have_openai_ids_and_the_finish_reason_follows_them(parser):
    message = parser.parse(CALL + CALL2, ANSWERING)
    ids = [c.id for c in message.tool_calls]
    assert all(re.fullmatch(r"call_[0-9a-f]{24}", i) for i in ids) and len(set(ids)) == 2
    assert message.tool_calls[0].to_openai() == {"id": ids[0], "type": "function", "function": {
        "name": "get_weather", "arguments": '{"city": "Oslo"}'}}
    assert json.loads(message.tool_calls[1].to_openai()["function"]["arguments"]) == {"zone": "CET", "exact": True}
    assert message.finish_reason("stop") == "tool_calls"
    assert message.finish_reason("length") == "length"  # cut short: not a finished call turn
    assert parser.parse("plain", ANSWERING).finish_reason("stop") == "stop"


def test_where_the_reply_starts_is_read_from_the_prompts_last_turn(parser, tmp_path):
    r = parser.reasoning
    assert (r.start_token_id, r.end_token_id) == (THINK, END_THINK)
    assert r.reply_start(THINKING) == "reasoning"
    assert r.reply_start(ANSWERING) == "answer"
    assert r.reply_start(UNDECIDED) == "undecided"
    assert r.reply_start([IM_START, END_THINK, 10, IM_START, 10]) == "undecided"  # an earlier turn's </think>
    assert r.reply_start([IM_START, THINK, 10, IM_START, 10]) == "undecided"  # an earlier turn's <think>
    assert r.reply_start([IM_START, *b"<think>"]) == "undecided"  # typed text, not the token
    user = [{"role": "user", "content": "Hi"}]
    no_thinking = {"chat_template_kwargs": {"enable_thinking": False}}
    continued = [*user, {"role": "assistant", "content": "Hel"}]
    write_byte_tokenizer(tmp_path, "qwen3_thinking")
    for tok, start in ((r.tokenizer, "undecided"), (Tokenizer(tmp_path), "reasoning")):  # hybrid, Thinking-2507
        assert r.reply_start(tok.encode_chat(user)) == start
        assert r.reply_start(tok.encode_chat(user, **no_thinking)) == "answer"
        assert r.reply_start(tok.encode_chat(continued, continue_final_message=True)) == "answer"
    # What the engine is told: the end token, and whether the reasoning is open or may still open.
    assert parser.reasoning_start(THINKING) == ReasoningStart(END_THINK, True, None)
    assert parser.reasoning_start(ANSWERING) == ReasoningStart(END_THINK, False, None)
    assert parser.reasoning_start(UNDECIDED) == ReasoningStart(END_THINK, False, THINK)


def test_parsers_are_chosen_from_the_template_or_the_config(parser, tmp_path):
    assert (parser.reasoning.name, parser.tool_calls.name) == ("qwen3", "hermes")
    write_byte_tokenizer(tmp_path)  # ChatML: no </think>, no tools (they are offered in our Hermes format)
    chatml = Tokenizer(tmp_path)
    auto = ChatOutputParser(chatml)
    assert auto.reasoning is None and auto.tool_calls.name == "hermes"
    assert summary(auto.parse("<think>a</think>" + CALL, [IM_START])) == (None, "<think>a</think>", [OSLO])
    assert summary(auto.parse(CALL, [IM_START], parse_tools=False)) == (None, CALL, [])
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    config["chat_template"] = "{% if tools %}{{ tools | tojson }}{% endif %}" + config["chat_template"]
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    assert ChatOutputParser(Tokenizer(tmp_path)).tool_calls is None  # tools in its own format, not Hermes
    forced = ChatOutputParser(chatml, reasoning="qwen3", tool_calls="hermes")
    assert summary(forced.parse("<think>a</think>" + CALL, [IM_START])) == ("a", None, [OSLO])
    off = ChatOutputParser(parser.reasoning.tokenizer, reasoning=None, tool_calls=None)
    assert summary(off.parse("<think>a</think>", THINKING)) == (None, "<think>a</think>", [])
    with pytest.raises(UserError, match="unknown reasoning parser 'deepseek'"):
        ChatOutputParser(chatml, reasoning="deepseek")


def test_a_thinking_budget_refusal_says_what_is_missing(parser, tmp_path):
    assert parser.budget_problem() is None
    write_byte_tokenizer(tmp_path)  # ChatML: no </think> in the template, nor as a token
    chatml = Tokenizer(tmp_path)
    assert "no reasoning parser" in ChatOutputParser(chatml).budget_problem()
    assert "</think> is not a single token" in ChatOutputParser(chatml, reasoning="qwen3").budget_problem()
