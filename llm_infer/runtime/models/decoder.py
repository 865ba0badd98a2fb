"""One decoder for Llama, Qwen2 (q/k/v bias) and Qwen3 (per-head q/k RMSNorm), and their
mixture-of-experts variants Qwen2-MoE and Qwen3-MoE (sparse MLPs: `moe_block.py`).

Module names follow the Hugging Face checkpoints, except that q/k/v and gate/up
are merged (`qkv_proj`, `gate_up_proj`); `checkpoint_names` maps each parameter
back to the checkpoint tensors it is loaded from. Under pipeline parallelism a
stage builds only its own layers (the others are empty placeholders, so names
keep their layer index), the embedding on the first stage and the norm and
head on the last.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Container

import torch
from torch import nn

from llm_infer.errors import ConfigError
from llm_infer.kernels.attention_metadata import AttentionMetadata
from llm_infer.kernels.dispatch import TORCH, Kernels
from llm_infer.parallel.embedding import ParallelLMHead, VocabParallelEmbedding
from llm_infer.parallel.experts import ExpertList, FusedExperts
from llm_infer.parallel.linear import (
    DenseLinearMethod,
    LinearMethod,
    MergedColumnParallelLinear,
    QKVParallelLinear,
    RowParallelLinear,
)
from llm_infer.parallel.pipeline import stage_layer_range
from llm_infer.parallel.state import get_parallel_state
from llm_infer.runtime.layers.attention import Attention
from llm_infer.runtime.layers.rms_norm import RMSNorm
from llm_infer.runtime.layers.rotary import RotaryEmbedding
from llm_infer.runtime.models.model_config import ModelConfig
from llm_infer.runtime.models.moe_block import SparseMoeBlock

# Merged parameter -> the checkpoint projections packed into it, with their shard ids.
PACKED_MODULES: dict[str, list[tuple[str, str | int]]] = {
    "qkv_proj": [("q_proj", "q"), ("k_proj", "k"), ("v_proj", "v")],
    "gate_up_proj": [("gate_proj", 0), ("up_proj", 1)],
}

LinearMethodFor = Callable[[str], LinearMethod]


@dataclass
class IntermediateTensors:
    """What one pipeline stage hands to the next."""

    hidden: torch.Tensor
    residual: torch.Tensor


class DecoderAttention(nn.Module):
    def __init__(self, cfg: ModelConfig, dtype: torch.dtype, kernels: Kernels, method_for: LinearMethodFor,
                 prefix: str):
        super().__init__()
        self.qkv_proj = QKVParallelLinear(cfg.hidden_size, cfg.head_dim, cfg.num_heads, cfg.num_kv_heads,
                                          bias=cfg.qkv_bias, dtype=dtype,
                                          linear_method=method_for(f"{prefix}.qkv_proj"))
        self.o_proj = RowParallelLinear(cfg.num_heads * cfg.head_dim, cfg.hidden_size, bias=cfg.o_proj_bias,
                                        dtype=dtype, linear_method=method_for(f"{prefix}.o_proj"))
        self.num_heads, self.num_kv_heads = self.qkv_proj.num_heads, self.qkv_proj.num_kv_heads
        self.head_dim = cfg.head_dim
        self.q_size, self.kv_size = self.qkv_proj.q_size, self.qkv_proj.kv_size
        self.kernels = kernels
        self.qk_norm = cfg.qk_norm
        self.norm_eps = cfg.rms_norm_eps
        if cfg.qk_norm:
            self.q_norm = RMSNorm(cfg.head_dim, cfg.rms_norm_eps, dtype, kernels)
            self.k_norm = RMSNorm(cfg.head_dim, cfg.rms_norm_eps, dtype, kernels)
        self.attn = Attention(self.num_heads, self.num_kv_heads, cfg.head_dim, cfg.head_dim**-0.5)

    def forward(self, x: torch.Tensor, positions: torch.Tensor, rotary: RotaryEmbedding,
                meta: AttentionMetadata) -> torch.Tensor:
        qkv = self.qkv_proj(x)
        q, k, v = qkv.split_with_sizes([self.q_size, self.kv_size, self.kv_size], dim=-1)
        rope = rotary.lookup(positions, meta)
        fused = getattr(meta.backend, "rotary_write_kv", None)
        if fused is not None:  # (q/k norms,) rotation and the KV-cache write in one kernel
            norms = (self.q_norm.weight, self.k_norm.weight) if self.qk_norm else (None, None)
            fused(qkv, *rope, self.num_heads, self.num_kv_heads, self.head_dim, self.attn.k_cache,
                  self.attn.v_cache, meta, *norms, self.norm_eps)
            return self.o_proj(self.attn(q, k, v, meta, kv_written=True))
        if self.qk_norm:  # per-head norms before the rotation (Qwen3)
            q = self.q_norm(q.reshape(-1, self.head_dim)).view(-1, self.q_size)
            k = self.k_norm(k.reshape(-1, self.head_dim)).view(-1, self.kv_size)
            self.kernels.rotary_(q, *rope, self.num_heads, self.head_dim)
            self.kernels.rotary_(k, *rope, self.num_kv_heads, self.head_dim)
        else:  # q and k are the first heads of the fused projection: rotate them in one pass
            self.kernels.rotary_(qkv, *rope, self.num_heads + self.num_kv_heads, self.head_dim)
        return self.o_proj(self.attn(q, k, v, meta))


class DecoderMLP(nn.Module):
    """SwiGLU MLP of `intermediate_size` (default: the config's); `reduce_results=False` leaves the
    tensor-parallel partial sum to the caller (a MoE block's shared expert)."""

    def __init__(self, cfg: ModelConfig, dtype: torch.dtype, kernels: Kernels, method_for: LinearMethodFor,
                 prefix: str, intermediate_size: int | None = None, reduce_results: bool = True):
        super().__init__()
        inter = intermediate_size or cfg.intermediate_size
        self.gate_up_proj = MergedColumnParallelLinear(cfg.hidden_size, [inter] * 2, bias=False,
                                                       dtype=dtype, linear_method=method_for(f"{prefix}.gate_up_proj"))
        self.down_proj = RowParallelLinear(inter, cfg.hidden_size, bias=False, dtype=dtype,
                                           linear_method=method_for(f"{prefix}.down_proj"),
                                           reduce_results=reduce_results)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.gate_up_proj(x), gated=True)

    def process_weights_after_loading(self) -> None:
        """Act-order checkpoints (GPTQ `desc_act`): down_proj reads its inputs in an order of its
        own (`input_order`). Where gate_up's method can compute its outputs in that order
        (`permute_outputs`), its output rows are permuted once here, before either layer converts
        its weights (the loader runs this before its children's), and down_proj reads its input as
        it comes instead of gathering it every step."""
        order = getattr(self.down_proj.linear_method, "input_order", None)
        permute = getattr(self.gate_up_proj.linear_method, "permute_outputs", None)
        perm = order(self.down_proj) if order is not None else None
        if perm is not None and permute is not None:
            permute(self.gate_up_proj, perm, 2)
            self.down_proj.input_arrives_ordered = True


def make_mlp(cfg: ModelConfig, layer: int, dtype: torch.dtype, kernels: Kernels, method_for: LinearMethodFor,
             prefix: str) -> nn.Module:
    """Decoder layer `layer`'s MLP: a MoE block where the config makes the layer sparse, else dense.
    Routed experts are `FusedExperts` unless `method_for` quantizes them (AWQ): then an `ExpertList`
    of per-expert MLPs. Raises ConfigError for quantized experts under expert parallelism."""
    if cfg.moe is None or not cfg.moe.is_sparse(layer):
        return DecoderMLP(cfg, dtype, kernels, method_for, prefix)
    shared = None
    if cfg.moe.shared_expert_intermediate_size:
        shared = DecoderMLP(cfg, dtype, kernels, method_for, f"{prefix}.shared_expert",
                            cfg.moe.shared_expert_intermediate_size, reduce_results=False)
    experts = None
    if any(not isinstance(method_for(f"{prefix}.experts.{e}.{proj}"), DenseLinearMethod)
           for e in range(cfg.moe.num_experts) for proj in ("gate_up_proj", "down_proj")):
        if get_parallel_state().expert_parallel:
            raise ConfigError("parallel.expert_parallel does not support quantized (AWQ) experts; "
                              "use tensor parallelism")
        experts = ExpertList(DecoderMLP(cfg, dtype, kernels, method_for, f"{prefix}.experts.{e}",
                                        cfg.moe.intermediate_size, reduce_results=False)
                             for e in range(cfg.moe.num_experts))
    return SparseMoeBlock(cfg.hidden_size, cfg.moe, dtype, kernels, shared, experts)


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig, dtype: torch.dtype, kernels: Kernels, method_for: LinearMethodFor,
                 prefix: str, layer: int = 0):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, dtype, kernels)
        self.self_attn = DecoderAttention(cfg, dtype, kernels, method_for, f"{prefix}.self_attn")
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, dtype, kernels)
        self.mlp = make_mlp(cfg, layer, dtype, kernels, method_for, f"{prefix}.mlp")

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None, positions: torch.Tensor,
                rotary: RotaryEmbedding, meta: AttentionMetadata) -> tuple[torch.Tensor, torch.Tensor]:
        if residual is None:
            residual, x = x, self.input_layernorm(x)
        else:
            x, residual = self.input_layernorm(x, residual)
        x = self.self_attn(x, positions, rotary, meta)
        x, residual = self.post_attention_layernorm(x, residual)
        return self.mlp(x), residual


class MissingLayer(nn.Module):
    """Placeholder for a layer that lives on another pipeline stage."""


class DecoderModel(nn.Module):
    def __init__(self, cfg: ModelConfig, dtype: torch.dtype, kernels: Kernels, method_for: LinearMethodFor,
                 pipeline_layers: list[int] | None = None):
        super().__init__()
        state = get_parallel_state()
        self.layer_range = stage_layer_range(cfg.num_layers, state.pp_size, state.pp_rank, pipeline_layers)
        self.dtype = dtype
        if state.is_first_stage:
            self.embed_tokens = VocabParallelEmbedding(cfg.vocab_size, cfg.hidden_size, dtype)
        self.layers = nn.ModuleList(
            DecoderLayer(cfg, dtype, kernels, method_for, f"model.layers.{i}", i) if i in self.layer_range
            else MissingLayer()
            for i in range(cfg.num_layers)
        )
        if state.is_last_stage:
            self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, dtype, kernels)
        self.rotary = RotaryEmbedding(cfg.head_dim, cfg.context_len, scaling=cfg.rope,
                                      original_max_position=cfg.max_position_embeddings)

    def embed(self, input_ids: torch.Tensor, intermediate: IntermediateTensors | None
              ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(hidden, residual) entering this stage's layers: the token embeddings on the first
        stage (no residual yet), what the previous stage sent otherwise."""
        if get_parallel_state().is_first_stage:
            return self.embed_tokens(input_ids), None
        return intermediate.hidden, intermediate.residual

    def run_layers(self, x: torch.Tensor, residual: torch.Tensor | None, positions: torch.Tensor,
                   meta: AttentionMetadata) -> tuple[torch.Tensor, torch.Tensor]:
        for i in self.layer_range:
            x, residual = self.layers[i](x, residual, positions, self.rotary, meta)
        return x, residual

    def finish(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor | IntermediateTensors:
        """The final norm on the last stage; what the next stage needs elsewhere."""
        if not get_parallel_state().is_last_stage:
            return IntermediateTensors(x, residual)
        x, _ = self.norm(x, residual)
        return x

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata,
                intermediate: IntermediateTensors | None = None) -> torch.Tensor | IntermediateTensors:
        """The reference path: hidden states `[tokens, hidden]` (last stage) of the step's tokens."""
        x, residual = self.embed(input_ids, intermediate)
        x, residual = self.run_layers(x, residual, positions, meta)
        return self.finish(x, residual)


class CausalLM(nn.Module):
    # The step's token -> LoRA slot map shared by the layers' LoRA stacks (None: adapters off).
    lora_context: Any = None

    def __init__(self, cfg: ModelConfig, dtype: torch.dtype, kernels: Kernels = TORCH,
                 method_for: LinearMethodFor | None = None, pipeline_layers: list[int] | None = None,
                 lm_head_int8: bool = False):
        super().__init__()
        state = get_parallel_state()
        self.config = cfg
        dense = DenseLinearMethod(kernels.linear, kernels.linear_gated)
        self.model = DecoderModel(cfg, dtype, kernels, method_for or (lambda prefix: dense), pipeline_layers)
        if state.is_last_stage:
            self.lm_head = ParallelLMHead(cfg.vocab_size, cfg.hidden_size, dtype, kernels.linear,
                                          kernels.int8_linear if lm_head_int8 else None)
            if cfg.tie_word_embeddings and state.is_first_stage:
                self.lm_head.tie_to(self.model.embed_tokens)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata,
                intermediate: IntermediateTensors | None = None) -> torch.Tensor | IntermediateTensors:
        return self.model(input_ids, positions, meta, intermediate)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor | None:
        """float32 logits `[rows, vocab]` on the sampling rank, None elsewhere."""
        logits = self.lm_head(hidden)
        return None if logits is None else logits.float()

    def attention_layers(self) -> list[Attention]:
        return [self.model.layers[i].self_attn.attn for i in self.model.layer_range]

    def checkpoint_names(self, param_name: str, available: Container[str] = ()) -> list[tuple[str, Any]]:
        """The checkpoint tensors (and shard ids) that fill one parameter of this stage;
        `available` (the checkpoint's tensor names) picks between layouts of MoE experts."""
        if param_name == "lm_head.weight" and self.config.tie_word_embeddings:
            return [("model.embed_tokens.weight", None)]
        module, _, leaf = param_name.rpartition(".")
        owner = self.get_submodule(module)
        if isinstance(owner, FusedExperts):
            return owner.checkpoint_names(module, leaf, available)
        parent, _, name = module.rpartition(".")
        if name in PACKED_MODULES:
            return [(f"{parent}.{part}.{leaf}", shard) for part, shard in PACKED_MODULES[name]]
        return [(param_name, None)]
