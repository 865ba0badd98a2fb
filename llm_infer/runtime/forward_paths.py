"""How a step's tokens go through this rank's model, chosen once when the KV cache exists.

- `ReferenceForward`: the plan's token lists become tensors (`build_inputs`), then
  `CausalLM.forward` runs layer by layer. Every step a faster path does not take runs here.
- `FusedStackForward` (CPU with our C++ kernels, one tensor-parallel rank): steps of at most
  8 short-query tokens (decode, speculative verification) run the stage's layers as one
  C++ call (`models/fused_decode.py`).
- `CudaGraphForward` (our CUDA kernels, one process): steps of one new token per sequence
  replay a captured CUDA graph of the forward pass and the LM head (`cuda_graphs.py`).

A step with LoRA adapter tokens (`lora_active`) runs by reference whatever was chosen: neither
the fused stack nor the captured graphs carry adapters.

`choose_forward` is the one place that picks; the model runner calls whatever it returned.
"""

from __future__ import annotations

from typing import Any

import torch

from llm_infer.kernels.dispatch import Kernels
from llm_infer.runtime.models.decoder import CausalLM, IntermediateTensors
from llm_infer.runtime.models.fused_decode import FusedDecode
from llm_infer.runtime.step_inputs import Placeholders, TokenBatch, build_inputs


class ReferenceForward:
    """Inputs as tensors, then the model's own layer-by-layer forward."""

    name = "reference"

    def __init__(self, model: CausalLM, kernels: Kernels, block_size: int, device: torch.device):
        self.model, self.kernels, self.block_size, self.device = model, kernels, block_size, device

    def __call__(self, batch: TokenBatch, intermediate: IntermediateTensors | None = None,
                 fill: Placeholders | None = None) -> torch.Tensor | IntermediateTensors:
        """Hidden states `[tokens, hidden]` after the final norm (last stage), else what the next stage needs."""
        input_ids, positions, meta = build_inputs(batch, self.block_size, self.kernels.attention, self.device, fill)
        return self.model(input_ids, positions, meta, intermediate)

    def logits(self, batch: TokenBatch, intermediate: IntermediateTensors | None, rows: list[int] | None,
               fill: Placeholders | None = None) -> torch.Tensor | IntermediateTensors | None:
        """float32 logits `[len(rows), vocab]` of the hidden rows `rows` (None: every row) on the
        sampling rank, None on the last stage's other ranks, what the next stage needs elsewhere;
        `fill`: the inputs that are placeholders (overlapped scheduling)."""
        hidden = self(batch, intermediate, fill)
        if isinstance(hidden, IntermediateTensors):
            return hidden
        return self.model.compute_logits(hidden[rows] if rows is not None else hidden)


class FusedStackForward(ReferenceForward):
    """Small decode steps through the fused C++ layer stack; other steps by reference."""

    name = "fused-cpu"

    def __init__(self, model: CausalLM, kernels: Kernels, block_size: int, device: torch.device):
        super().__init__(model, kernels, block_size, device)
        self.stack = FusedDecode(model, kernels.attention.ext, kernels.attention.fixed_chunk)

    def __call__(self, batch: TokenBatch, intermediate: IntermediateTensors | None = None,
                 fill: Placeholders | None = None) -> torch.Tensor | IntermediateTensors:
        input_ids, positions, meta = build_inputs(batch, self.block_size, self.kernels.attention, self.device, fill)
        if not FusedDecode.applicable(meta) or lora_active(self.model):
            return self.model(input_ids, positions, meta, intermediate)
        decoder = self.model.model
        x, residual = decoder.embed(input_ids, intermediate)
        x, residual = self.stack.run(x, residual, positions, meta)
        return decoder.finish(x, residual)


class CudaGraphForward(ReferenceForward):
    """One-token-per-sequence decode steps replay a captured graph; other steps by reference."""

    name = "cuda-graphs"

    def __init__(self, model: CausalLM, kernels: Kernels, block_size: int, device: torch.device, graphs: Any):
        super().__init__(model, kernels, block_size, device)
        self.graphs = graphs

    def logits(self, batch: TokenBatch, intermediate: IntermediateTensors | None, rows: list[int] | None,
               fill: Placeholders | None = None) -> torch.Tensor | IntermediateTensors | None:
        if intermediate is None and rows is None and self.graphs.handles(batch) and not lora_active(self.model):
            return self.graphs.run(batch, fill)
        return super().logits(batch, intermediate, rows, fill)


def lora_active(model: CausalLM) -> bool:
    """Whether some token of this step has a LoRA adapter: the fused C++ stack and the captured
    graphs have no LoRA in them, so such steps take the reference path."""
    return model.lora_context is not None and model.lora_context.token_slots is not None


def choose_forward(model: CausalLM, kernels: Kernels, block_size: int, device: torch.device, world_size: int,
                   tp_size: int, cuda_graphs: bool = False, max_model_len: int = 0,
                   max_num_seqs: int = 0, sampled: torch.Tensor | None = None) -> ReferenceForward:
    """The fastest path that applies to this rank's model and kernels (its KV cache must be bound);
    `sampled`: the runner's buffer of the last step's tokens, read by CUDA graphs."""
    if FusedDecode.supported(model, kernels.name, tp_size):
        return FusedStackForward(model, kernels, block_size, device)
    # Graphs need every step's work on the device: our attention (the torch one reads lengths on the host)
    # and no MoE (the expert loop reads which experts were hit).
    if (cuda_graphs and kernels.name == "cuda" and kernels.attention.capturable and world_size == 1
            and not model.model.rotary.dynamic and model.config.moe is None):
        from llm_infer.runtime.cuda_graphs import DecodeGraphs

        first = model.attention_layers()[0]
        graphs = DecodeGraphs(model, kernels.attention, device, block_size, max_model_len, max_num_seqs,
                              first.num_heads, first.num_kv_heads, first.head_dim, sampled)
        graphs.capture()
        return CudaGraphForward(model, kernels, block_size, device, graphs)
    return ReferenceForward(model, kernels, block_size, device)
