"""Quantize a dense checkpoint layer by layer and write it as AutoAWQ (int4), AutoGPTQ (int4/int8,
`method="gptq"`: the GPTQ algorithm, `gptq_search.py`) or block-wise FP8 (`method="fp8"`: e4m3 with
a scale per 128 x 128 block, round to nearest, as Qwen's FP8 checkpoints) would.

For each decoder layer: run it on the calibration tokens (original weights) while
recording the inputs of its four linear groups (q/k/v, o, gate/up, down); search
per-channel scales for each group and fold their inverse into the op before it
(the two RMSNorms, v_proj for o_proj when there is no GQA, up_proj for
down_proj); optionally search per-group clipping (not for q/k, whose errors the
softmax amplifies); quantize group-wise asymmetric 4-bit with zero points. The
next layer sees the original layer's outputs, as in AutoAWQ. `method="rtn"` skips
both searches: plain round-to-nearest with the same groups, the baseline.

The search's objective is each linear group's output error (the AWQ paper's
formulation), not the whole attention block's.

Mixture-of-experts layers (Qwen2-MoE, Qwen3-MoE): every routed expert's gate/up and the
shared expert's share one scale, folded into the post-attention norm (and, exactly, into the
fp32 router and the shared-expert gate, which stay dense); each expert's down projection gets
its own scale from the tokens the router sends it, folded into that expert's up rows. The
gate/up search and clipping measure every expert on all calibration tokens; an expert that no
calibration token reaches is searched on all of them too. Experts are written per expert
(`mlp.experts.{e}.gate_proj.qweight`, ...), as published checkpoints lay them out.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from llm_infer.errors import UserError
from llm_infer.kernels.attention_metadata import AttentionMetadata, query_start_loc
from llm_infer.kernels.awq_torch import pack_awq
from llm_infer.kernels.dispatch import TORCH
from llm_infer.kernels.fp8_torch import quantize_weight
from llm_infer.kernels.moe_torch import route
from llm_infer.kernels.torch_ref import silu_and_mul
from llm_infer.runtime.kv_cache import KVCache
from llm_infer.runtime.models.decoder import CausalLM
from llm_infer.runtime.models.loader import load_weights
from llm_infer.runtime.models.model_config import ModelConfig
from llm_infer.runtime.models.moe_block import SparseMoeBlock
from llm_infer.runtime.quant.awq_search import quantize_groups, search_clipping, search_scales
from llm_infer.runtime.quant.gptq_search import gptq_quantize, gptq_tensors, inverse_hessian
from llm_infer.runtime.quant.quantized_folder import FP8_BLOCK, QuantizeOptions, dense_dtype, write_folder

def _quantized_widths(cfg: ModelConfig) -> dict[str, int]:
    sizes = {"hidden_size": cfg.hidden_size, "intermediate_size": cfg.intermediate_size,
             "attention width": cfg.num_heads * cfg.head_dim}
    if cfg.moe is not None:
        sizes["moe_intermediate_size"] = cfg.moe.intermediate_size
        if cfg.moe.shared_expert_intermediate_size:
            sizes["shared_expert_intermediate_size"] = cfg.moe.shared_expert_intermediate_size
    return sizes


def fitting_group_sizes(cfg: ModelConfig) -> list[int]:
    """The group sizes (of 32, 64, 128, 256) that divide every quantized input width of the model."""
    return [g for g in (32, 64, 128, 256) if all(v % g == 0 for v in _quantized_widths(cfg).values())]


def check_group_size(cfg: ModelConfig, group: int) -> None:
    """Raises UserError, listing the sizes that fit, unless `group` divides every quantized width."""
    if group <= 0:
        raise UserError(f"group size must be a positive multiple of 32 (got {group})")
    bad = {k: v for k, v in _quantized_widths(cfg).items() if v % group}
    if group % 32 or bad:
        widths = ", ".join(f"{k} {v}" for k, v in bad.items()) or "layers"
        raise UserError(f"group size {group} does not divide the model's {widths} "
                        f"(group sizes that fit: {', '.join(map(str, fitting_group_sizes(cfg))) or 'none'})")


class _Calibration:
    """The calibration batch as `sequences` prefill sequences of `length` tokens, with its own cache."""

    def __init__(self, model: CausalLM, token_ids: torch.Tensor, block_size: int = 16):
        sequences, length = token_ids.shape
        per_seq = -(-length // block_size)
        self.ids = token_ids.reshape(-1)
        self.positions = torch.arange(length).repeat(sequences)
        tables = torch.arange(sequences * per_seq).view(sequences, per_seq)
        slots = tables[:, self.positions[:length] // block_size] * block_size + self.positions[:length] % block_size
        self.meta = AttentionMetadata([length] * sequences, [length] * sequences,
                                      query_start_loc([length] * sequences), slots.reshape(-1), tables,
                                      block_size, TORCH.attention)
        TORCH.attention.prepare(self.meta)
        self.cache = KVCache.for_model(model, sequences * per_seq, block_size, torch.float32, torch.device("cpu"))


def quantize_model(model_dir: Path, out_dir: Path, token_ids: torch.Tensor, options: QuantizeOptions,
                   progress: bool = True) -> None:
    """token_ids `[samples, length]`: the calibration text, tokenized and cut into equal samples."""
    cfg = ModelConfig.from_dir(model_dir)
    if Path(out_dir).exists():
        raise UserError(f"output folder {out_dir} already exists; choose a new one")
    if cfg.quantization is not None:
        raise UserError(f"{model_dir} is already quantized ({cfg.quantization.get('quant_method')})")
    if options.method != "fp8":
        check_group_size(cfg, options.group_size)
    with torch.device("cpu"):
        model = CausalLM(cfg, torch.float32, TORCH)
    load_weights(model, model_dir, progress=progress)
    calib = _Calibration(model, token_ids)
    gen = torch.Generator().manual_seed(0)
    pick = torch.randperm(calib.ids.numel(), generator=gen)
    tensors: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        x, residual = model.model.embed_tokens(calib.ids), None
        for i in tqdm(range(cfg.num_layers), desc="Quantizing layers", unit="layer", disable=not progress):
            layer = model.model.layers[i]
            inputs = _record_inputs(layer, lambda: layer(x.clone(), None if residual is None else residual.clone(),
                                                         calib.positions, model.model.rotary, calib.meta))
            x, residual = inputs.pop("_out")
            if options.method == "awq":
                _apply_scales(layer, cfg, inputs, pick, options)
            elif options.method == "gptq" and isinstance(layer.mlp, SparseMoeBlock):
                inputs.update(_expert_inputs(layer.mlp, inputs["gate_up"]))
            tensors.update(_quantize_layer(layer, cfg, inputs, pick, options, f"model.layers.{i}"))
    for name, param in model.named_parameters():
        if ".layers." not in name:
            tensors[name] = param.detach().to(dense_dtype(options)).contiguous()
    write_folder(model_dir, out_dir, tensors, options)


def _record_inputs(layer, run) -> dict[str, torch.Tensor]:
    """The inputs `[tokens, in]` of the layer's linear groups while `run()` runs it, and its output
    under `_out`. A MoE layer records the block's input ("gate_up") and the shared expert's
    down-projection input ("shared_down"); its experts' down inputs come from `_expert_inputs`."""
    inputs: dict[str, torch.Tensor] = {}
    mlp = layer.mlp
    modules = {"qkv": layer.self_attn.qkv_proj, "o": layer.self_attn.o_proj}
    if isinstance(mlp, SparseMoeBlock):
        modules["gate_up"] = mlp
        if mlp.shared_expert is not None:
            modules["shared_down"] = mlp.shared_expert.down_proj
    else:
        modules.update(gate_up=mlp.gate_up_proj, down=mlp.down_proj)

    def record(key: str):
        def hook(module, args, kwargs):  # a gated down projection's input is silu(gate) * up
            x = args[0].detach()
            inputs[key] = silu_and_mul(x) if kwargs.get("gated") else x
        return hook

    hooks = [m.register_forward_pre_hook(record(key), with_kwargs=True) for key, m in modules.items()]
    try:
        inputs["_out"] = run()
    finally:
        for h in hooks:
            h.remove()
    return inputs


def _apply_scales(layer, cfg: ModelConfig, inputs: dict, pick: torch.Tensor, opt: QuantizeOptions) -> None:
    """Search and fold the per-channel scales; `inputs` become the scaled layers' inputs."""
    attn, mlp = layer.self_attn, layer.mlp
    q_end, kv = attn.q_size + attn.kv_size, attn.kv_size
    inter = cfg.intermediate_size

    def search(w: torch.Tensor, key: str) -> torch.Tensor:
        x = inputs[key]
        return search_scales([w], x[pick[: opt.search_tokens] % x.shape[0]], opt.group_size, opt.grid)

    s = search(attn.qkv_proj.weight, "qkv")
    attn.qkv_proj.weight.mul_(s)
    layer.input_layernorm.weight.div_(s)
    inputs["qkv"] = inputs["qkv"] / s
    if cfg.num_heads == cfg.num_kv_heads:  # o_proj's inputs are v_proj's outputs, channel for channel
        s = search(attn.o_proj.weight, "o")
        attn.o_proj.weight.mul_(s)
        attn.qkv_proj.weight[q_end : q_end + kv].div_(s[:, None])
        if attn.qkv_proj.bias is not None:
            attn.qkv_proj.bias[q_end : q_end + kv].div_(s)
        inputs["o"] = inputs["o"] / s
    if isinstance(mlp, SparseMoeBlock):
        _apply_moe_scales(layer, inputs, search)
        return
    s = search(mlp.gate_up_proj.weight, "gate_up")
    mlp.gate_up_proj.weight.mul_(s)
    layer.post_attention_layernorm.weight.div_(s)
    inputs["gate_up"] = inputs["gate_up"] / s
    s = search(mlp.down_proj.weight, "down")
    mlp.down_proj.weight.mul_(s)
    mlp.gate_up_proj.weight[inter:].div_(s[:, None])  # up_proj's outputs feed down_proj
    inputs["down"] = inputs["down"] / s


def _apply_moe_scales(layer, inputs: dict, search) -> None:
    """One scale for every gate/up (routed and shared) behind the post-attention norm; the router
    and the shared-expert gate read the same scaled input, so their weights take the scale too
    (exactly: they are not quantized). Then a scale per down projection, folded into its up rows.
    Fills `inputs["down.{e}"]` with expert e's (scaled) down inputs."""
    mlp = layer.mlp
    experts, shared = mlp.experts, mlp.shared_expert
    inter = experts.local_intermediate
    group = [experts.gate_up_proj.reshape(-1, experts.hidden_size)]
    if shared is not None:
        group.append(shared.gate_up_proj.weight)
    s = search(torch.cat(group), "gate_up")
    experts.gate_up_proj.mul_(s)
    mlp.gate.weight.mul_(s)
    if shared is not None:
        shared.gate_up_proj.weight.mul_(s)
        mlp.shared_expert_gate.weight.mul_(s)
    layer.post_attention_layernorm.weight.div_(s)
    inputs["gate_up"] = inputs["gate_up"] / s
    inputs.update(_expert_inputs(mlp, inputs["gate_up"]))
    for e in range(experts.num_experts):
        s = search(experts.down_proj[e], f"down.{e}")
        experts.down_proj[e].mul_(s)
        experts.gate_up_proj[e, inter:].div_(s[:, None])
        inputs[f"down.{e}"] = inputs[f"down.{e}"] / s
    if shared is not None:
        s = search(shared.down_proj.weight, "shared_down")
        shared.down_proj.weight.mul_(s)
        shared.gate_up_proj.weight[shared.down_proj.input_size:].div_(s[:, None])
        inputs["shared_down"] = inputs["shared_down"] / s


def _expert_inputs(mlp: SparseMoeBlock, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """x `[tokens, H]` (the block's input) -> {"down.{e}": expert e's down-projection input
    `[n_e, I]` over the tokens the router sends it (all tokens when it gets none)}."""
    _, ids = route(mlp.gate(x.float()), mlp.moe.top_k, mlp.moe.norm_topk_prob)
    out = {}
    for e in range(mlp.experts.num_experts):
        mine = x[(ids == e).any(dim=-1)]
        gate, up = F.linear(mine if mine.shape[0] else x, mlp.experts.gate_up_proj[e]).chunk(2, dim=-1)
        out[f"down.{e}"] = F.silu(gate) * up
    return out


def _mlp_parts(name: str, gate_up: torch.Tensor, down: torch.Tensor, inter: int, gate_up_key: str, down_key: str
               ) -> list[tuple]:
    """The three projections of a SwiGLU MLP `name` (merged gate/up rows [gate | up] of `inter` each)."""
    return [(f"{name}.gate_proj", gate_up, slice(0, inter), gate_up_key, True),
            (f"{name}.up_proj", gate_up, slice(inter, 2 * inter), gate_up_key, True),
            (f"{name}.down_proj", down, slice(None), down_key, True)]


def _quantize_layer(layer, cfg: ModelConfig, inputs: dict, pick: torch.Tensor, opt: QuantizeOptions,
                    prefix: str) -> dict[str, torch.Tensor]:
    attn, mlp = layer.self_attn, layer.mlp
    q, kv = attn.q_size, attn.kv_size
    parts = [  # (checkpoint name, merged weight, rows, input key, clip?)
        ("self_attn.q_proj", attn.qkv_proj.weight, slice(0, q), "qkv", False),
        ("self_attn.k_proj", attn.qkv_proj.weight, slice(q, q + kv), "qkv", False),
        ("self_attn.v_proj", attn.qkv_proj.weight, slice(q + kv, q + 2 * kv), "qkv", True),
        ("self_attn.o_proj", attn.o_proj.weight, slice(None), "o", True),
    ]
    dense: dict[str, torch.Tensor] = {}  # layer tensors kept unquantized (fp16)
    if isinstance(mlp, SparseMoeBlock):
        experts = mlp.experts
        for e in range(experts.num_experts):
            parts += _mlp_parts(f"mlp.experts.{e}", experts.gate_up_proj[e], experts.down_proj[e],
                                experts.local_intermediate, "gate_up", f"down.{e}")
        dense["mlp.gate.weight"] = mlp.gate.weight
        if mlp.shared_expert is not None:
            shared = mlp.shared_expert
            parts += _mlp_parts("mlp.shared_expert", shared.gate_up_proj.weight, shared.down_proj.weight,
                                shared.down_proj.input_size, "gate_up", "shared_down")
            dense["mlp.shared_expert_gate.weight"] = mlp.shared_expert_gate.weight
    else:
        parts += _mlp_parts("mlp", mlp.gate_up_proj.weight, mlp.down_proj.weight, cfg.intermediate_size,
                            "gate_up", "down")
    dtype = dense_dtype(opt)
    out = {f"{prefix}.{name}": w.to(dtype).contiguous() for name, w in dense.items()}
    hessians: dict[str, tuple] = {}  # per input: q/k/v and gate/up share theirs
    for name, weight, rows, key, clip in parts:
        w = weight[rows]
        if opt.method == "fp8":
            q8, scale_inv = quantize_weight(w, FP8_BLOCK, FP8_BLOCK)
            out.update({f"{prefix}.{name}.weight": q8, f"{prefix}.{name}.weight_scale_inv": scale_inv})
            continue
        if opt.method == "gptq":
            if key not in hessians:
                hessians[key] = inverse_hessian(inputs[key])
            out.update(gptq_tensors(f"{prefix}.{name}", *gptq_quantize(w, hessians[key], opt.bits, opt.group_size),
                                    opt.bits))
            continue
        if opt.method == "awq" and opt.clip and clip:
            x = inputs[key]
            w = search_clipping(w, x[pick[: opt.clip_tokens] % x.shape[0]], opt.group_size)
        qw, zeros, scales = quantize_groups(w, opt.group_size)
        out[f"{prefix}.{name}.qweight"] = pack_awq(qw.t().contiguous())
        out[f"{prefix}.{name}.qzeros"] = pack_awq(zeros.t().contiguous())
        out[f"{prefix}.{name}.scales"] = scales.t().contiguous().to(torch.float16)
    if attn.qkv_proj.bias is not None:
        for name, rows in (("q_proj", slice(0, q)), ("k_proj", slice(q, q + kv)), ("v_proj", slice(q + kv, None))):
            out[f"{prefix}.self_attn.{name}.bias"] = attn.qkv_proj.bias[rows].to(dtype).contiguous()
    for norm in ("input_layernorm", "post_attention_layernorm"):
        out[f"{prefix}.{norm}.weight"] = getattr(layer, norm).weight.to(dtype).contiguous()
    if cfg.qk_norm:
        out[f"{prefix}.self_attn.q_norm.weight"] = attn.q_norm.weight.to(dtype).contiguous()
        out[f"{prefix}.self_attn.k_norm.weight"] = attn.k_norm.weight.to(dtype).contiguous()
    return out
