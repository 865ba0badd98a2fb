"""Random-weight Hugging Face checkpoints for oracle tests, written with transformers."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
# Qwen3's added (not special) tokens of the thinking and tool-call formats: ids 259..264 after the specials.
QWEN3_ADDED = ["<think>", "</think>", "<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>"]
QWEN3_TEMPLATE = Path(__file__).parent / "data" / "qwen3_chat_template.jinja"
CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=320, max_position_embeddings=512, initializer_range=0.08)
# Mixture-of-experts additions to TINY: 8 experts, top-2.
TINY_MOE = dict(num_experts=8, num_experts_per_tok=2, moe_intermediate_size=32)
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


def qwen3_template(opens_thinking: bool = False) -> str:
    """Our Qwen3-style template: the hybrid models' (the reply opens `<think>` itself, or not), or
    with `opens_thinking` Qwen3-Thinking-2507's way (the generation prompt ends with `<think>\n`)."""
    template = QWEN3_TEMPLATE.read_text()
    if opens_thinking:
        closed = "{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}"
        assert closed in template
        template = template.replace(closed, closed.removesuffix("{%- endif %}") + "{%- else %}{{- '<think>\\n' }}{%- endif %}")
    return template


def write_byte_tokenizer(path: Path, chat_template: str = "chatml") -> None:
    """A byte-level tokenizer (one token per byte, ChatML specials at 256..258). `chat_template`:
    `chatml` (in tokenizer_config.json), or `qwen3` / `qwen3_thinking`: our Qwen3-style template
    (`qwen3_template`, as chat_template.jinja) and Qwen3's added tokens `QWEN3_ADDED` at 259..264,
    not special and not normalized, as Qwen's tokenizer declares them."""
    vocab = {c: i for i, c in enumerate(_byte_chars())}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(SPECIALS)
    config = {"eos_token": "<|im_end|>", "bos_token": None}
    if chat_template == "chatml":
        config["chat_template"] = CHATML
    elif chat_template in ("qwen3", "qwen3_thinking"):
        tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in QWEN3_ADDED])
        (path / "chat_template.jinja").write_text(qwen3_template(chat_template == "qwen3_thinking"))
    else:
        raise ValueError(chat_template)
    tok.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(json.dumps(config))


_TRANSFORMERS_CLASSES = {
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM"), "qwen3": ("Qwen3Config", "Qwen3ForCausalLM"),
    "llama": ("LlamaConfig", "LlamaForCausalLM"), "qwen2_moe": ("Qwen2MoeConfig", "Qwen2MoeForCausalLM"),
    "qwen3_moe": ("Qwen3MoeConfig", "Qwen3MoeForCausalLM"),
}


def make_checkpoint(path: Path, arch: str = "qwen2", seed: int = 0, dtype: torch.dtype = torch.float32,
                    fused_experts: bool = False, chat_template: str = "chatml", **overrides) -> Path:
    """Write a random `arch` (qwen2 | qwen3 | llama | qwen2_moe | qwen3_moe) checkpoint with a byte
    tokenizer into `path` (`chat_template`: `chatml`, `qwen3` or `qwen3_thinking`, see `write_byte_tokenizer`). MoE
    checkpoints are saved per expert (`experts.{e}.gate_proj.weight`, what transformers writes by
    default) or, with `fused_experts`, as transformers holds them in memory (`experts.gate_up_proj`
    `[E, 2I, H]`, `experts.down_proj` `[E, H, I]`)."""
    import transformers

    torch.manual_seed(seed)
    params = {**TINY, **(TINY_MOE if arch.endswith("_moe") else {}), **overrides}
    if arch not in _TRANSFORMERS_CLASSES:
        raise ValueError(arch)
    if arch.startswith("qwen3"):  # Qwen3 configs default head_dim to 128
        params.setdefault("head_dim", params["hidden_size"] // params["num_attention_heads"])
    if arch == "qwen2_moe":
        params.setdefault("shared_expert_intermediate_size", 48)
    config_class, model_class = (getattr(transformers, name) for name in _TRANSFORMERS_CLASSES[arch])
    config = config_class(**params)
    model = model_class(config)
    config.eos_token_id = 258
    config.bos_token_id = 257
    path.mkdir(parents=True, exist_ok=True)
    model.to(dtype).save_pretrained(path, save_original_format=not fused_experts)
    write_byte_tokenizer(path, chat_template)
    return path


def reference_model(path: Path, dtype: torch.dtype = torch.float32, **kwargs):
    """The transformers oracle, loaded with the dtype given at load time (not cast afterwards);
    `kwargs` go to `from_pretrained` (e.g. `experts_implementation="eager"`)."""
    import transformers

    return transformers.AutoModelForCausalLM.from_pretrained(path, dtype=dtype, **kwargs).eval()
