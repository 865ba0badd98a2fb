"""Convert a Llama-architecture GGUF file into a Hugging Face model folder, without transformers."""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from gguf import GGUFReader, ReaderTensor
from gguf.quants import dequantize
from safetensors.torch import save_file
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
from tqdm import tqdm

from llm_infer.errors import UserError


_TOP_LEVEL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_LAYER_NAMES = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}
_TOKEN_TYPE_CONTROL = 3
_TOKEN_TYPE_USER_DEFINED = 4
_SPECIAL_TOKEN_KEYS = {
    "bos_token": "tokenizer.ggml.bos_token_id",
    "eos_token": "tokenizer.ggml.eos_token_id",
    "pad_token": "tokenizer.ggml.padding_token_id",
    "unk_token": "tokenizer.ggml.unknown_token_id",
}


def _smollm_pre_tokenizer() -> pre_tokenizers.PreTokenizer:
    """llama.cpp's "smollm": every digit on its own, then the GPT-2 regex (checked against llama.cpp in tests)."""
    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )


_PRE_TOKENIZERS: dict[str, Callable[[], pre_tokenizers.PreTokenizer]] = {"smollm": _smollm_pre_tokenizer}


def _read_metadata(reader: GGUFReader) -> dict[str, Any]:
    return {key: field.contents() for key, field in reader.fields.items()}


def _open_gguf(gguf_path: Path) -> GGUFReader:
    if not gguf_path.is_file():
        raise UserError(f"GGUF file not found: {gguf_path}")
    try:
        return GGUFReader(gguf_path)
    except ValueError as exc:
        raise UserError(f"{gguf_path} is not a readable GGUF file: {exc}") from exc


def _check_supported(meta: dict[str, Any], gguf_path: Path) -> None:
    arch = meta.get("general.architecture")
    if arch != "llama":
        raise UserError(f"{gguf_path}: architecture {arch!r} is not supported (only 'llama')")
    problems = []
    if meta.get("llama.rope.scaling.type", "none") != "none":
        problems.append(f"RoPE scaling {meta['llama.rope.scaling.type']!r}")
    if meta.get("tokenizer.ggml.model") != "gpt2":
        problems.append(f"tokenizer model {meta.get('tokenizer.ggml.model')!r} (only byte-level BPE 'gpt2')")
    if meta.get("tokenizer.ggml.pre") not in _PRE_TOKENIZERS:
        problems.append(f"pre-tokenizer {meta.get('tokenizer.ggml.pre')!r} (supported: {sorted(_PRE_TOKENIZERS)})")
    if meta.get("tokenizer.ggml.add_bos_token"):
        problems.append("tokenizers that add a BOS token")
    if problems:
        raise UserError(f"{gguf_path}: unsupported " + "; ".join(problems))


def _hf_name(gguf_name: str) -> str | None:
    if gguf_name in _TOP_LEVEL_NAMES:
        return _TOP_LEVEL_NAMES[gguf_name]
    parts = gguf_name.split(".")
    if len(parts) == 4 and parts[0] == "blk" and parts[3] == "weight" and parts[2] in _LAYER_NAMES:
        return f"model.layers.{parts[1]}.{_LAYER_NAMES[parts[2]]}.weight"
    return None


def _unpermute_rope(weight: torch.Tensor, n_heads: int) -> torch.Tensor:
    """llama.cpp's converter interleaves each head's rows as (pair, 2) for GPT-J style RoPE;
    Hugging Face Llama rotates halves, so restore the (2, pair) row order."""
    rows = weight.shape[0]
    return weight.reshape(n_heads, rows // n_heads // 2, 2, *weight.shape[1:]).transpose(1, 2).reshape(weight.shape)


def _dequantize(tensor: ReaderTensor) -> torch.Tensor:
    shape = tuple(int(n) for n in reversed(tensor.shape))  # GGUF lists dimensions innermost first
    values = np.array(dequantize(tensor.data, tensor.tensor_type), dtype=np.float32)  # copy out of the mmap
    return torch.from_numpy(values.reshape(shape))


def _convert_tensors(reader: GGUFReader, meta: dict[str, Any], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    n_heads = int(meta["llama.attention.head_count"])
    n_kv_heads = int(meta.get("llama.attention.head_count_kv", n_heads))
    state: dict[str, torch.Tensor] = {}
    for tensor in tqdm(reader.tensors, desc="Converting GGUF", unit="tensor"):
        name = _hf_name(tensor.name)
        if name is None:
            raise UserError(f"unsupported tensor {tensor.name!r} in a llama GGUF")
        weight = _dequantize(tensor)
        if name.endswith("q_proj.weight"):
            weight = _unpermute_rope(weight, n_heads)
        elif name.endswith("k_proj.weight"):
            weight = _unpermute_rope(weight, n_kv_heads)
        state[name] = weight.to(dtype).contiguous()
    return state


def _float32_value(value: float) -> float:
    """GGUF stores floats as float32; keep the shortest decimal that rounds to it (1e-05, not 9.99999974e-06)."""
    return float(str(np.float32(value)))


def _model_config(meta: dict[str, Any], tied: bool, dtype: torch.dtype) -> dict[str, Any]:
    hidden = int(meta["llama.embedding_length"])
    n_heads = int(meta["llama.attention.head_count"])
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hidden,
        "intermediate_size": int(meta["llama.feed_forward_length"]),
        "num_hidden_layers": int(meta["llama.block_count"]),
        "num_attention_heads": n_heads,
        "num_key_value_heads": int(meta.get("llama.attention.head_count_kv", n_heads)),
        "head_dim": int(meta.get("llama.attention.key_length", hidden // n_heads)),
        "rms_norm_eps": _float32_value(meta["llama.attention.layer_norm_rms_epsilon"]),
        "rope_theta": _float32_value(meta.get("llama.rope.freq_base", 10000.0)),
        "max_position_embeddings": int(meta["llama.context_length"]),
        "vocab_size": int(meta.get("llama.vocab_size", len(meta["tokenizer.ggml.tokens"]))),
        "tie_word_embeddings": tied,
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "torch_dtype": str(dtype).removeprefix("torch."),
    }
    for key in ("bos", "eos"):
        config[f"{key}_token_id"] = int(meta[f"tokenizer.ggml.{key}_token_id"])
    if "tokenizer.ggml.padding_token_id" in meta:
        config["pad_token_id"] = int(meta["tokenizer.ggml.padding_token_id"])
    return config


def _build_tokenizer(meta: dict[str, Any]) -> Tokenizer:
    tokens: list[str] = meta["tokenizer.ggml.tokens"]
    merges = [tuple(merge.split(" ", 1)) for merge in meta["tokenizer.ggml.merges"]]
    tokenizer = Tokenizer(models.BPE(vocab={token: i for i, token in enumerate(tokens)}, merges=merges))
    tokenizer.pre_tokenizer = _PRE_TOKENIZERS[meta["tokenizer.ggml.pre"]]()
    tokenizer.decoder = decoders.ByteLevel()
    token_types = meta["tokenizer.ggml.token_type"]
    tokenizer.add_tokens(
        [
            AddedToken(token, special=kind == _TOKEN_TYPE_CONTROL, normalized=False)
            for token, kind in zip(tokens, token_types)
            if kind in (_TOKEN_TYPE_CONTROL, _TOKEN_TYPE_USER_DEFINED)
        ]
    )
    return tokenizer


def _tokenizer_config(meta: dict[str, Any]) -> dict[str, Any]:
    tokens = meta["tokenizer.ggml.tokens"]
    config: dict[str, Any] = {"tokenizer_class": "PreTrainedTokenizerFast", "add_bos_token": False}
    for name, key in _SPECIAL_TOKEN_KEYS.items():
        if key in meta:
            config[name] = tokens[int(meta[key])]
    if "tokenizer.chat_template" in meta:
        config["chat_template"] = meta["tokenizer.chat_template"]
    return config


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def convert_gguf_to_hf(
    gguf_path: str | os.PathLike[str], out_dir: str | os.PathLike[str], dtype: torch.dtype = torch.float32
) -> None:
    gguf_path, out = Path(gguf_path), Path(out_dir)
    reader = _open_gguf(gguf_path)
    meta = _read_metadata(reader)
    _check_supported(meta, gguf_path)
    state = _convert_tensors(reader, meta, dtype)
    out.mkdir(parents=True, exist_ok=True)
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    config = _model_config(meta, tied="lm_head.weight" not in state, dtype=dtype)
    _write_json(out / "config.json", config)
    _write_json(out / "generation_config.json", {k: config[k] for k in ("bos_token_id", "eos_token_id")})
    _build_tokenizer(meta).save(str(out / "tokenizer.json"))
    tokenizer_config = _tokenizer_config(meta)
    _write_json(out / "tokenizer_config.json", tokenizer_config)
    if "chat_template" in tokenizer_config:
        (out / "chat_template.jinja").write_text(tokenizer_config["chat_template"], encoding="utf-8")


def convert_atomically(gguf_path: Path, target: Path) -> None:
    """Convert into a temp dir beside the target, then rename: an interrupted run never leaves a half model."""
    tmp_prefix = f".tmp-{target.name}-"
    for stale in target.parent.glob(f"{tmp_prefix}*"):  # left by a killed run; we hold the lock
        shutil.rmtree(stale, ignore_errors=True)
    print(f"Converting the default model once into {target} ...", file=sys.stderr)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=tmp_prefix))
    try:
        convert_gguf_to_hf(gguf_path, tmp)
        if target.exists():
            shutil.rmtree(target)  # an incomplete folder not written by us
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
