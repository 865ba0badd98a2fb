"""Request bodies -> GenerationRequest, without a server: types declared, ranges left to SamplingParams."""

from __future__ import annotations

import pytest

from llm_infer.entrypoints.server.errors import ApiError
from llm_infer.entrypoints.server.protocol import SamplingFields, parse_chat, parse_completion
from llm_infer.runtime.sampling_params import SamplingParams, SamplingParamsError

MAX_MODEL_LEN, VOCAB = 64, 320
OK_COMPLETION = {"prompt": "hi", "max_tokens": 2}
OK_CHAT = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


class ByteTokenizer:
    """One token per character; a chat is its contents, one after the other."""

    def encode(self, text: str) -> list[int]:
        return [ord(c) % VOCAB for c in text]

    def encode_chat(self, messages: list[dict[str, str]]) -> list[int]:
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
    ("temperature", -1), ("temperature", float("inf")), ("top_p", 0), ("top_p", 1.5), ("top_k", -2),
    ("min_p", 1.5), ("min_p", float("nan")), ("seed", 1 << 70), ("seed", -(1 << 63) - 1), ("stop", [""]),
    ("max_tokens", 0),
])
def test_sampling_ranges_are_checked_by_sampling_params_alone(field, value):
    with pytest.raises(SamplingParamsError) as want:
        SamplingParams(**{field: value})
    for parse, body in ((completion, OK_COMPLETION), (chat, OK_CHAT)):
        got = rejected(parse, {**body, field: value})
        assert (got.param, got.message) == (want.value.param, str(want.value))


@pytest.mark.parametrize("body,param,message", [
    ({**OK_COMPLETION, "max_tokens": "5"}, "max_tokens", "'max_tokens': must be an integer"),
    ({**OK_COMPLETION, "max_tokens": True}, "max_tokens", "'max_tokens': must be an integer"),
    ({**OK_COMPLETION, "temperature": "0.5"}, "temperature", "'temperature': must be a number"),
    ({**OK_COMPLETION, "ignore_eos": 1}, "ignore_eos", "'ignore_eos': must be true or false"),
    ({**OK_COMPLETION, "stop": [1]}, "stop", "'stop': must be a string or a list of strings"),
    ({**OK_COMPLETION, "prompt": 5}, "prompt",
     "'prompt': must be a string, a list of token ids, or a one-element list of either"),
    ({**OK_COMPLETION, "prompt": ["a", "b"]}, "prompt",
     "'prompt': got 2 prompts; this server takes one prompt per request"),
    ({"max_tokens": 2}, "prompt", "'prompt': is required"),
    ({**OK_COMPLETION, "n": 2}, "n", "'n': only n=1 is supported (send one request per completion)"),
    ({**OK_COMPLETION, "echo": True}, "echo", "'echo': only echo=false is supported"),
    ({**OK_COMPLETION, "stream_options": {"include_usage": "yes"}}, "stream_options",
     "'stream_options': stream_options.include_usage must be true or false"),
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


def test_unknown_fields_are_ignored_and_null_means_the_default():
    req = completion({**OK_COMPLETION, "user": {"id": 1}, "logit_bias": None, "temperature": None, "seed": None})
    assert req.params == SamplingParams(max_tokens=2)
    assert completion({"prompt": "hi", "max_tokens": None}).params.max_tokens == 16  # OpenAI's default


def test_values_reach_sampling_params():
    req = completion({**OK_COMPLETION, "temperature": 0, "top_p": 0.5, "top_k": 5, "min_p": 0.1, "seed": 2**64 - 1,
                      "stop": "x", "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}})
    assert req.params == SamplingParams(max_tokens=2, temperature=0, top_p=0.5, top_k=5, min_p=0.1, seed=2**64 - 1,
                                        stop=["x"], ignore_eos=True)
    assert (req.stream, req.include_usage) == (True, True)


def test_top_k_beyond_the_vocabulary_is_clipped_and_minus_one_disables():
    assert completion({**OK_COMPLETION, "top_k": 10**30}).params.top_k == VOCAB
    assert completion({**OK_COMPLETION, "top_k": -1}).params.top_k == 0


def test_prompt_forms():
    assert completion({**OK_COMPLETION, "prompt": "ab"}).prompt_ids == [97, 98]
    assert completion({**OK_COMPLETION, "prompt": [1, 2]}).prompt_ids == [1, 2]
    assert completion({**OK_COMPLETION, "prompt": ["ab"]}).prompt_ids == [97, 98]
    assert completion({**OK_COMPLETION, "prompt": [[3, 4]]}).prompt_ids == [3, 4]


def test_chat_lengths():
    parts = [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]
    assert chat({**OK_CHAT, "messages": parts}).prompt_ids == [97, 10, 98]  # parts joined by newlines
    assert chat({**OK_CHAT, "max_tokens": 5, "max_completion_tokens": 3}).params.max_tokens == 3
    assert chat({"messages": OK_CHAT["messages"]}).params.max_tokens == MAX_MODEL_LEN - 2  # fills the context
    got = rejected(chat, {**OK_CHAT, "max_completion_tokens": 63})
    assert got.param == "max_tokens" and "maximum context length is 64 tokens" in got.message
    got = rejected(completion, {**OK_COMPLETION, "prompt": [7] * 64})
    assert got.param == "prompt" and "the prompt has 64 tokens" in got.message
