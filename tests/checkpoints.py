"""Random-weight Hugging Face checkpoints for oracle tests, written with transformers."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=320, max_position_embeddings=512, initializer_range=0.08)
# The 0.5B-sized Qwen2 used by benchmarks.
QWEN2_05B = dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                 num_key_value_heads=2, vocab_size=151936, max_position_embeddings=4096)


def _byte_chars() -> list[str]:
    """The printable stand-in character of each byte in byte-level BPE vocabularies."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + list(range(0xAE, 0xFF + 1))
    chars, extra = {}, 0
    for b in range(256):
        if b in keep:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return [chars[b] for b in range(256)]


def write_byte_tokenizer(path: Path) -> None:
    """A byte-level tokenizer (one token per byte, ChatML specials at 256..258)."""
    vocab = {c: i for i, c in enumerate(_byte_chars())}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(SPECIALS)
    tok.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(json.dumps(
        {"eos_token": "<|im_end|>", "bos_token": None, "chat_template": CHATML}))


def make_checkpoint(path: Path, arch: str = "qwen2", seed: int = 0, dtype: torch.dtype = torch.float32,
                    **overrides) -> Path:
    """Write a random `arch` (qwen2 | qwen3 | llama) checkpoint with a byte tokenizer into `path`."""
    import transformers

    torch.manual_seed(seed)
    params = {**TINY, **overrides}
    if arch == "qwen2":
        config = transformers.Qwen2Config(**params)
        model = transformers.Qwen2ForCausalLM(config)
    elif arch == "qwen3":
        params.setdefault("head_dim", params["hidden_size"] // params["num_attention_heads"])
        config = transformers.Qwen3Config(**params)
        model = transformers.Qwen3ForCausalLM(config)
    elif arch == "llama":
        config = transformers.LlamaConfig(**params)
        model = transformers.LlamaForCausalLM(config)
    else:
        raise ValueError(arch)
    config.eos_token_id = 258
    config.bos_token_id = 257
    path.mkdir(parents=True, exist_ok=True)
    model.to(dtype).save_pretrained(path)
    write_byte_tokenizer(path)
    return path


def reference_model(path: Path, dtype: torch.dtype = torch.float32):
    """The transformers oracle, loaded with the dtype given at load time (not cast afterwards)."""
    import transformers

    return transformers.AutoModelForCausalLM.from_pretrained(path, dtype=dtype).eval()
