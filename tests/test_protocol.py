"""Request bodies -> GenerationRequest, without a server: types declared, ranges left to SamplingParams."""

from __future__ import annotations

import pytest

from llm_infer.entrypoints.server.errors import ApiError
from llm_infer.entrypoints.server.protocol import IGNORED, REFUSED, SamplingFields, parse_chat, parse_completion
from llm_infer.runtime.sampling_params import SamplingParams, SamplingParamsError

MAX_MODEL_LEN, VOCAB = 64, 320
OK_COMPLETION = {"prompt": "hi", "max_tokens": 2}
OK_CHAT = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


class ByteTokenizer:
    """One token per character; a chat is its contents, one after the other."""

    def encode(self, text: str) -> list[int]:
        return [ord(c) % VOCAB for c in text]

    def encode_chat(self, messages: list[dict[str, str]], add_generation_prompt: bool | None = None,
                    **template: object) -> list[int]:
        return self.encode("".join(m["content"] for m in messages))


def completion(body: dict):
    return parse_completion(body, ByteTokenizer(), MAX_MODEL_LEN, VOCAB)


def chat(body: dict):
    return parse_chat(body, ByteTokenizer(), MAX_MODEL_LEN, VOCAB)


def rejected(parse, body: dict) -> ApiError:
    with pytest.raises(ApiError) as e:
        parse(body)
    assert e.value.status == 400
    return e.value


def test_the_protocol_declares_no_sampling_ranges():
    assert all(not info.metadata for info in SamplingFields.model_fields.values())


@pytest.mark.parametrize("field,value", [
    ("temperature", -1), ("temperature", float("inf")), ("top_p", 1.5), ("top_k", -2),
    ("min_p", 1.5), ("min_p", float("nan")), ("seed", 1 << 70), ("seed", -(1 << 63) - 1), ("stop", [""]),
    ("max_tokens", -1), ("presence_penalty", 2.5), ("frequency_penalty", -3), ("repetition_penalty", 0),
    ("min_tokens", -1), ("n", 0), ("n", 129), ("stop_token_ids", [-1]),
])
def test_sampling_ranges_are_checked_by_sampling_params_alone(field, value):
    with pytest.raises(SamplingParamsError) as want:
        SamplingParams(**{field: value})
    for parse, body in ((completion, OK_COMPLETION), (chat, OK_CHAT)):
        got = rejected(parse, {**body, field: value})
        assert (got.param, got.message) == (want.value.param, str(want.value))


def test_score_ranges_are_sampling_params_and_name_the_field_sent():
    with pytest.raises(SamplingParamsError) as want:
        SamplingParams(logprobs=21)
    got = rejected(completion, {**OK_COMPLETION, "logprobs": 21, "echo": True})
    assert (got.param, got.message) == ("logprobs", str(want.value))
    got = rejected(chat, {**OK_CHAT, "logprobs": True, "top_logprobs": 21})
    assert (got.param, got.message) == ("top_logprobs", f"{want.value} (sent as 'top_logprobs')")
    got = rejected(completion, {**OK_COMPLETION, "logit_bias": {"5": 100.5}})
    assert got.param == "logit_bias" and "[-100, 100]" in got.message


@pytest.mark.parametrize("body,param,message", [
    ({**OK_COMPLETION, "max_tokens": "5"}, "max_tokens", "'max_tokens': must be an integer"),
    ({**OK_COMPLETION, "max_tokens": True}, "max_tokens", "'max_tokens': must be an integer"),
    ({**OK_COMPLETION, "temperature": "0.5"}, "temperature", "'temperature': must be a number"),
    ({**OK_COMPLETION, "ignore_eos": 1}, "ignore_eos", "'ignore_eos': must be true or false"),
    ({**OK_COMPLETION, "stop": [1]}, "stop", "'stop': must be a string or a list of strings"),
    ({**OK_COMPLETION, "prompt": 5}, "prompt", "'prompt': must be a string, a list of token ids, or a list of either"),
    ({"max_tokens": 2}, "prompt", "'prompt': is required"),
    ({**OK_COMPLETION, "best_of": 3}, "best_of",
     "'best_of': only best_of equal to n is supported (this server returns every sample)"),
    ({**OK_COMPLETION, "best_of": 2, "n": 3}, "best_of",
     "'best_of': only best_of equal to n is supported (this server returns every sample)"),
    ({**OK_COMPLETION, "max_tokens": 0}, "max_tokens",
     "'max_tokens': must be at least 1 (max_tokens 0 scores the prompt, with echo: true)"),
    ({**OK_COMPLETION, "logprobs": True}, "logprobs", "'logprobs': must be an integer"),
    ({**OK_COMPLETION, "logit_bias": {"a": 1}}, "logit_bias", "'logit_bias': key 'a' is not a token id"),
    ({**OK_COMPLETION, "logit_bias": {"-1": 1}}, "logit_bias", "'logit_bias': key '-1' is not a token id"),
    ({**OK_COMPLETION, "logit_bias": {"320": 1}}, "logit_bias",
     "'logit_bias': token id 320 is outside the vocabulary (size 320)"),
    ({**OK_COMPLETION, "logit_bias": {"1": "x"}}, "logit_bias",
     "'logit_bias': must be an object of token ids (as strings) to numbers"),
    ({**OK_COMPLETION, "stop_token_ids": [320]}, "stop_token_ids",
     "'stop_token_ids': token id 320 is outside the vocabulary (size 320)"),
    ({**OK_COMPLETION, "suffix": "x"}, "suffix",
     "'suffix': not supported by this server (only null or '' is accepted)"),
    ({**OK_COMPLETION, "stream_options": {"include_usage": "yes"}}, "stream_options",
     "'stream_options': stream_options.include_usage must be true or false"),
    ({**OK_COMPLETION, "stream_options": {"include_usage": True}}, "stream_options",
     "'stream_options': only allowed when stream is true"),
])
def test_completion_type_mistakes_name_the_field(body, param, message):
    got = rejected(completion, body)
    assert (got.param, got.message) == (param, message)


@pytest.mark.parametrize("messages,message", [
    ([], "'messages': must be a non-empty list of {role, content} objects"),
    ([5], "'messages': must be a non-empty list of {role, content} objects"),
    ([{"content": "x"}], "'messages': messages[0].role is required"),
    ([{"role": "user", "content": "x"}, {"role": "user"}], "'messages': messages[1].content is required"),
    ([{"role": "user", "content": [{"type": "image_url"}]}],
     "'messages': messages[0].content must be a string or a list of {type: 'text', text: string} parts"),
])
def test_chat_message_mistakes_name_where(messages, message):
    got = rejected(chat, {**OK_CHAT, "messages": messages})
    assert (got.param, got.message) == ("messages", message)


@pytest.mark.parametrize("body,param,message", [
    ({**OK_CHAT, "top_logprobs": 2}, "top_logprobs", "'top_logprobs': needs logprobs: true"),
    ({**OK_CHAT, "logprobs": False, "top_logprobs": 2}, "top_logprobs", "'top_logprobs': needs logprobs: true"),
    ({**OK_CHAT, "logprobs": 2}, "logprobs", "'logprobs': must be true or false"),
    ({**OK_CHAT, "max_tokens": 0}, "max_tokens", "'max_tokens': must be at least 1"),
    ({**OK_CHAT, "max_completion_tokens": 0}, "max_tokens", "'max_tokens': must be at least 1"),
    ({**OK_CHAT, "echo": True}, "echo", "'echo': unknown field"),
    ({**OK_CHAT, "tools": [{"type": "function"}]}, "tools", "'tools': tools[0].function is required"),
    ({**OK_CHAT, "tool_choice": "required"}, "tool_choice", "'tool_choice': 'required' needs tools"),
    ({**OK_CHAT, "tool_choice": "sometimes"}, "tool_choice",
     "'tool_choice': must be 'none', 'auto', 'required' or {type: 'function', function: {name}}"),
    ({**OK_CHAT, "response_format": {"type": "json_schema"}}, "response_format",
     "'response_format': type json_schema needs json_schema: {name, schema}"),
    ({**OK_CHAT, "guided_regex": "a", "guided_choice": ["b"]}, "guided_choice", "'guided_choice': only one of"),
])
def test_chat_score_and_unsupported_field_mistakes(body, param, message):
    got = rejected(chat, body)
    assert got.param == param and got.message.startswith(message)


def test_refused_fields_are_400s_naming_them_unless_they_ask_for_nothing():
    for name, harmless in REFUSED.items():
        for parse, body in ((completion, OK_COMPLETION), (chat, OK_CHAT)):
            assert rejected(parse, {**body, name: {"asks": "something"}}).param == name
            for value in harmless:
                parse({**body, name: value})
    for bad in ({**OK_COMPLETION, "tool_choice": "auto"}, {**OK_COMPLETION, "parallel_tool_calls": False},
                {**OK_COMPLETION, "suffix": 0}):
        assert rejected(completion, bad).param == next(iter(set(bad) - set(OK_COMPLETION)))


def test_ignored_fields_change_nothing_unknown_ones_are_named_and_null_means_the_default():
    ignored = {name: {"any": ["thing"]} for name in IGNORED}
    req = completion({**OK_COMPLETION, **ignored, "logit_bias": None, "temperature": None, "seed": None,
                      "logprobs": None, "best_of": None, "n": None})
    assert req.params == SamplingParams(max_tokens=2)
    assert chat({**OK_CHAT, **ignored, "logprobs": None, "top_logprobs": None}).params == SamplingParams(max_tokens=2)
    assert completion({"prompt": "hi", "max_tokens": None}).params.max_tokens == 16  # OpenAI's default
    got = rejected(completion, {**OK_COMPLETION, "frobnicate": 1})
    assert got.param == "frobnicate" and got.message.startswith("'frobnicate': unknown field; this route takes ")
    assert "logprobs" in got.message and "user" in got.message


def test_values_reach_sampling_params():
    req = completion({**OK_COMPLETION, "temperature": 0, "top_p": 0.5, "top_k": 5, "min_p": 0.1, "seed": 2**64 - 1,
                      "stop": "x", "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True},
                      "presence_penalty": 1.5, "frequency_penalty": -0.5, "repetition_penalty": 1.2,
                      "logit_bias": {"7": -100, "12": 2.5}, "min_tokens": 1, "stop_token_ids": [3, 4], "n": 3,
                      "best_of": 3, "logprobs": 4, "user": "u"})
    assert req.params == SamplingParams(max_tokens=2, temperature=0, top_p=0.5, top_k=5, min_p=0.1, seed=2**64 - 1,
                                        stop=["x"], ignore_eos=True, presence_penalty=1.5, frequency_penalty=-0.5,
                                        repetition_penalty=1.2, logit_bias={7: -100, 12: 2.5}, min_tokens=1,
                                        stop_token_ids=[3, 4], n=3, logprobs=4)
    assert (req.stream, req.include_usage, req.echo) == (True, True, None)
    assert completion({**OK_COMPLETION, "top_p": 0}).params.top_p == 0  # valid in OpenAI's API: the top token


def test_echo_with_logprobs_scores_the_prompt_and_max_tokens_0_only_scores():
    req = completion({**OK_COMPLETION, "prompt": ["ab", "c"], "echo": True, "logprobs": 2})
    assert (req.params.logprobs, req.params.prompt_logprobs, req.echo) == (2, 2, ["ab", "c"])
    assert completion({**OK_COMPLETION, "prompt": [[5, 6]], "echo": True}).echo == [None]  # decoded once accepted
    assert completion({**OK_COMPLETION, "echo": True}).params.prompt_logprobs is None  # echo alone: text only
    full = completion({"prompt": [7] * MAX_MODEL_LEN, "max_tokens": 0, "echo": True, "logprobs": 0})
    assert full.params.max_tokens == 0 and full.params.prompt_logprobs == 0
    got = rejected(completion, {"prompt": [7] * (MAX_MODEL_LEN + 1), "max_tokens": 0, "echo": True})
    assert got.param == "prompt"
    assert got.message == "the prompt has 65 tokens; this model's maximum context length is 64 tokens"


def test_chat_logprobs_map_to_top_logprobs():
    assert chat({**OK_CHAT, "logprobs": True}).params.logprobs == 0
    assert chat({**OK_CHAT, "logprobs": True, "top_logprobs": 5}).params.logprobs == 5
    assert chat({**OK_CHAT, "logprobs": False}).params.logprobs is None


def test_top_k_beyond_the_vocabulary_is_clipped_and_minus_one_disables():
    assert completion({**OK_COMPLETION, "top_k": 10**30}).params.top_k == VOCAB
    assert completion({**OK_COMPLETION, "top_k": -1}).params.top_k == 0


def test_prompt_forms():
    assert completion({**OK_COMPLETION, "prompt": "ab"}).prompts == [[97, 98]]
    assert completion({**OK_COMPLETION, "prompt": [1, 2]}).prompts == [[1, 2]]
    assert completion({**OK_COMPLETION, "prompt": ["ab"]}).prompts == [[97, 98]]
    assert completion({**OK_COMPLETION, "prompt": [[3, 4]]}).prompts == [[3, 4]]
    assert completion({**OK_COMPLETION, "prompt": ["ab", "c"]}).prompts == [[97, 98], [99]]
    assert completion({**OK_COMPLETION, "prompt": [[3, 4], [5]]}).prompts == [[3, 4], [5]]
    got = rejected(completion, {**OK_COMPLETION, "prompt": ["a", "b" * 70]})
    assert got.param == "prompt" and got.message.startswith("prompt 1 has 70 tokens")


def test_chat_lengths():
    parts = [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]
    assert chat({**OK_CHAT, "messages": parts}).prompts == [[97, 10, 98]]  # parts joined by newlines
    assert chat({**OK_CHAT, "max_tokens": 5, "max_completion_tokens": 3}).params.max_tokens == 3
    assert chat({"messages": OK_CHAT["messages"]}).params.max_tokens == MAX_MODEL_LEN - 2  # fills the context
    got = rejected(chat, {**OK_CHAT, "max_completion_tokens": 63})
    assert got.param == "max_tokens" and "maximum context length is 64 tokens" in got.message
    got = rejected(completion, {**OK_COMPLETION, "prompt": [7] * 64})
    assert got.param == "prompt" and "the prompt has 64 tokens" in got.message


@pytest.mark.parametrize("parse,body,param,nested", [
    (chat, {**OK_CHAT, "messages": [{"role": "assistant", "content": "hi", "function_call": {"name": "f"}}]},
     "messages", "function_call"),
    (chat, {**OK_CHAT, "messages": [{"role": "assistant", "tool_calls": [{"id": "x", "function": {
        "name": "f", "arguments": "{}", "strict": True}}]}]}, "messages", "strict"),
    (chat, {**OK_CHAT, "tools": [{"type": "function", "function": {"name": "f", "returns": "int"}}]},
     "tools", "returns"),
    (chat, {**OK_CHAT, "messages": [{"role": "user", "content": [{"type": "text", "text": "hi",
                                                                 "cache_control": {"type": "ephemeral"}}]}]},
     "messages", "cache_control"),
    (completion, {**OK_COMPLETION, "stream": True, "stream_options": {"include_usage": True,
                                                                      "continuous_usage_stats": True}},
     "stream_options", "continuous_usage_stats"),
])
def test_unknown_nested_fields_are_refused_not_dropped(parse, body, param, nested):
    error = rejected(parse, body)
    assert error.param == param and nested in str(error)


class RecordingTokenizer(ByteTokenizer):
    """Remembers what the chat template would have received."""

    def encode_chat(self, messages, add_generation_prompt=None, **template):
        self.sent = (messages, add_generation_prompt, template)
        return super().encode_chat(messages)


TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Weather now",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]
CALL = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}


def test_chat_history_tools_and_template_options_reach_the_template():
    tok = RecordingTokenizer()
    messages = [{"role": "user", "content": [{"type": "text", "text": "Weather?"}], "name": "ann"},
                {"role": "assistant", "content": None, "reasoning_content": "Look it up.", "tool_calls": [CALL]},
                {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
                {"role": "assistant", "content": "It is"}]
    req = parse_chat({**OK_CHAT, "messages": messages, "tools": TOOLS, "continue_final_message": True,
                      "chat_template_kwargs": {"enable_thinking": False}, "add_generation_prompt": False},
                     tok, MAX_MODEL_LEN, VOCAB)
    sent, add_generation_prompt, template = tok.sent
    assert sent == [{"role": "user", "content": "Weather?", "name": "ann"},
                    {"role": "assistant", "content": "", "reasoning_content": "Look it up.", "tool_calls": [CALL]},
                    {"role": "tool", "content": "sunny", "tool_call_id": "call_1"},
                    {"role": "assistant", "content": "It is"}]
    assert add_generation_prompt is False
    assert template == {"tools": TOOLS, "tool_choice": "auto", "continue_final_message": True,
                        "chat_template_kwargs": {"enable_thinking": False}}
    assert req.parse_tools and req.params.structured_outputs is None


def test_tool_choice_decides_parsing_and_none_keeps_the_tools_in_the_prompt():
    tok = RecordingTokenizer()
    assert not chat(OK_CHAT).parse_tools  # no tools: nothing to parse
    assert chat({**OK_CHAT, "tools": TOOLS, "tool_choice": "auto"}).parse_tools
    req = parse_chat({**OK_CHAT, "tools": TOOLS, "tool_choice": "none"}, tok, MAX_MODEL_LEN, VOCAB)
    assert not req.parse_tools and tok.sent[2]["tools"] == TOOLS and tok.sent[2]["tool_choice"] == "none"
    got = rejected(chat, {**OK_CHAT, "tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}})
    assert (got.param, got.message) == ("tool_choice", "'tool_choice': function 'nope' is not among the tools "
                                                       "(get_weather)")
    assert chat({**OK_CHAT, "parallel_tool_calls": True}).params == chat(OK_CHAT).params


@pytest.mark.parametrize("choice", ["required", {"type": "function", "function": {"name": "get_weather"}}])
def test_tool_choice_that_needs_a_grammar_is_constrained(choice):
    req = chat({**OK_CHAT, "tools": TOOLS, "tool_choice": choice})
    assert req.parse_tools and req.params.structured_outputs is not None
    # Without a tool-call parser the forced calls could not come back as tool_calls: a 400.
    with pytest.raises(ApiError) as e:
        parse_chat({**OK_CHAT, "tools": TOOLS, "tool_choice": choice}, ByteTokenizer(), MAX_MODEL_LEN, VOCAB,
                   tool_parser=False)
    assert (e.value.status, e.value.param) == (400, "tool_choice")
    assert e.value.message == ("'tool_choice': 'required' and named functions need a tool-call parser to return "
                               "the calls (this server's chat.tool_call_parser is off)")
    auto = parse_chat({**OK_CHAT, "tools": TOOLS}, ByteTokenizer(), MAX_MODEL_LEN, VOCAB, tool_parser=False)
    assert auto.params.structured_outputs is None  # auto: the reply may hold calls; they stay content


@pytest.mark.parametrize("messages,message", [
    ([{"role": "user"}], "'messages': messages[0].content is required"),
    ([{"role": "assistant"}], "'messages': messages[0].content is required"),
    ([{"role": "user", "content": "x", "tool_calls": [CALL]}],
     "'messages': messages[0].tool_calls is only for assistant messages"),
    ([{"role": "assistant", "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f"}}]}],
     "'messages': messages[0].tool_calls[0].function.arguments is required"),
])
def test_chat_history_mistakes_name_the_message(messages, message):
    got = rejected(chat, {**OK_CHAT, "messages": messages})
    assert (got.param, got.message) == ("messages", message)


def test_parallel_tool_calls_false_allows_one_call():
    """required: the grammar takes one block; auto: the reply stops at the first </tool_call> (the parser
    takes the unclosed block as the call); without tools it changes nothing."""
    many = chat({**OK_CHAT, "tools": TOOLS, "tool_choice": "required"}).params.structured_outputs.grammar
    one = chat({**OK_CHAT, "tools": TOOLS, "tool_choice": "required", "parallel_tool_calls": False})
    assert "call)*" in many and one.params.structured_outputs.grammar.startswith("start: \"<tool_call>")
    auto = chat({**OK_CHAT, "tools": TOOLS, "parallel_tool_calls": False, "stop": ["END"]})
    assert auto.params.stop == ["END", "</tool_call>"] and auto.params.structured_outputs is None
    assert chat({**OK_CHAT, "parallel_tool_calls": False}).params == chat(OK_CHAT).params
    with pytest.raises(ApiError) as e:
        parse_chat({**OK_CHAT, "tools": TOOLS, "parallel_tool_calls": False}, ByteTokenizer(), MAX_MODEL_LEN, VOCAB,
                   tool_parser=False)
    assert e.value.param == "parallel_tool_calls" and "tool-call parser" in e.value.message
