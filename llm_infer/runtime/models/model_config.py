"""The architecture facts the runtime needs, read from a Hugging Face `config.json`."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llm_infer.errors import UserError
from llm_infer.runtime.layers.rope_scaling import RopeScaling
from llm_infer.runtime.models.moe_config import MoEConfig

SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM", "Qwen2MoeForCausalLM",
                           "Qwen3MoeForCausalLM")
_QWEN3_STYLE = ("Qwen3ForCausalLM", "Qwen3MoeForCausalLM")  # per-head q/k RMSNorm
# Bare decoders (no LM head; embedding models saved with AutoModel) are read as their causal LM.
_BARE = {"Qwen2Model": "Qwen2ForCausalLM", "Qwen3Model": "Qwen3ForCausalLM", "LlamaModel": "LlamaForCausalLM"}


@dataclass
class ModelConfig:
    architecture: str
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    rms_norm_eps: float
    rope: RopeScaling
    max_position_embeddings: int
    tie_word_embeddings: bool
    qkv_bias: bool
    o_proj_bias: bool
    qk_norm: bool
    torch_dtype: str | None
    bos_token_id: int | None
    eos_token_ids: list[int] = field(default_factory=list)
    # AWQ and similar: the raw `quantization_config` mapping, or None.
    quantization: dict[str, Any] | None = None
    moe: MoEConfig | None = None  # Qwen2-MoE / Qwen3-MoE routing; None for dense models

    @property
    def rope_theta(self) -> float:
        return self.rope.theta

    @property
    def context_len(self) -> int:
        """Positions the model serves: `max_position_embeddings`, stretched by RoPE scaling."""
        return self.rope.context_len(self.max_position_embeddings)

    def max_model_len(self, requested: int | None) -> int:
        """The context length to serve: `requested` (scheduler.max_model_len) or the model's maximum."""
        if requested is None:
            return self.context_len
        if requested > self.context_len:
            raise UserError(f"scheduler.max_model_len={requested} exceeds the model's context of "
                            f"{self.context_len} positions (max_position_embeddings with RoPE scaling)")
        return requested

    @classmethod
    def from_dir(cls, model_dir: str | Path) -> "ModelConfig":
        path = Path(model_dir) / "config.json"
        if not path.is_file():
            raise UserError(f"no config.json in model folder {model_dir}")
        try:
            raw = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise UserError(f"{path}: not valid JSON ({e.msg}, line {e.lineno})") from None
        return cls.from_dict(raw, source=str(path))

    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: str = "config.json") -> "ModelConfig":
        archs = [_BARE.get(a, a) for a in raw.get("architectures") or []]
        arch = next((a for a in archs if a in SUPPORTED_ARCHITECTURES), None)
        if arch is None:
            raise UserError(
                f"{source}: unsupported architecture {archs or raw.get('model_type')!r}; "
                f"supported: {', '.join(SUPPORTED_ARCHITECTURES)}"
            )
        rope = RopeScaling.from_config(raw, source)
        if raw.get("mlp_bias"):
            raise UserError(f"{source}: MLP biases (mlp_bias) are not supported")
        if raw.get("hidden_act", "silu") != "silu":
            raise UserError(f"{source}: activation {raw.get('hidden_act')!r} is not supported (only silu)")
        if raw.get("use_sliding_window"):
            raise UserError(f"{source}: sliding-window attention is not supported")
        num_heads = _req(raw, "num_attention_heads", source)
        hidden = _req(raw, "hidden_size", source)
        head_dim = raw.get("head_dim") or hidden // num_heads
        eos = raw.get("eos_token_id")
        eos_ids = [eos] if isinstance(eos, int) else list(eos or [])
        quant = raw.get("quantization_config")
        return cls(
            architecture=arch,
            hidden_size=hidden,
            intermediate_size=_req(raw, "intermediate_size", source),
            num_layers=_req(raw, "num_hidden_layers", source),
            num_heads=num_heads,
            num_kv_heads=raw.get("num_key_value_heads") or num_heads,
            head_dim=head_dim,
            vocab_size=_req(raw, "vocab_size", source),
            rms_norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
            rope=rope,
            max_position_embeddings=int(raw.get("max_position_embeddings", 4096)),
            tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
            qkv_bias=bool(raw.get("qkv_bias", True)) if arch == "Qwen2MoeForCausalLM"
            else arch == "Qwen2ForCausalLM" or bool(raw.get("attention_bias", False)),
            o_proj_bias=arch in ("LlamaForCausalLM", "Qwen3MoeForCausalLM") and bool(raw.get("attention_bias", False)),
            qk_norm=arch in _QWEN3_STYLE,
            torch_dtype=raw.get("torch_dtype") or raw.get("dtype"),
            bos_token_id=raw.get("bos_token_id"),
            eos_token_ids=eos_ids,
            quantization=quant if isinstance(quant, dict) else None,
            moe=MoEConfig.from_config(raw, arch == "Qwen2MoeForCausalLM", source) if arch.endswith("MoeForCausalLM")
            else None,
        )


def _req(raw: dict[str, Any], key: str, source: str) -> Any:
    if key not in raw:
        raise UserError(f"{source}: missing required key {key!r}")
    return raw[key]
