"""Proposers that run a model: a separate draft model (`draft`) or the target's own first
layers (`layers`). They live on the sampling rank, next to the target's logits.

The draft's KV cache has the target's blocks and block tables (one entry per position for
both), so when the controller rolls a sequence back, both caches roll back together. A
separate draft model keeps its own cache tensors; the `layers` draft writes into the target's
cache for its layers, where the verifying pass would write the same values anyway.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any, Iterator

import torch
from torch import nn

from llm_infer.config import QuantizationConfig
from llm_infer.errors import UserError
from llm_infer.kernels import dispatch
from llm_infer.parallel.state import ParallelState, get_parallel_state, set_parallel_state
from llm_infer.runtime.kv_cache import KVCache, bytes_per_block
from llm_infer.runtime.models.fused_decode import FusedDecode
from llm_infer.runtime.models.model_config import ModelConfig
from llm_infer.runtime.sampler import Sampler, draw, draw_seed, per_sequence
from llm_infer.runtime.step_inputs import build_inputs
from llm_infer.runtime.step_plan import StepPlan

DRAFT = 3  # purpose of the draft's own draws (see sampler.draw_seed)


@contextmanager
def single_rank() -> Iterator[None]:
    """Build and run the draft as a one-rank model inside a tensor-parallel worker."""
    saved = get_parallel_state()
    set_parallel_state(ParallelState())
    try:
        yield
    finally:
        set_parallel_state(saved)


@dataclass
class _DraftBatch:
    input_ids: list[int]
    query_lens: list[int]
    seq_lens: list[int]
    block_tables: list[list[int]]


class LayerDraft(nn.Module):
    """The target's embedding, first `n` layers, final norm and head."""

    def __init__(self, target: Any, n: int):
        super().__init__()
        if n >= target.config.num_layers:
            raise UserError(f"speculative.draft_layers={n} must be below the model's {target.config.num_layers} layers")
        self.target, self.n = target, n

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, meta: Any) -> torch.Tensor:
        decoder = self.target.model
        x, residual = decoder.embed_tokens(input_ids), None
        for i in range(self.n):
            x, residual = decoder.layers[i](x, residual, positions, decoder.rotary, meta)
        x, _ = decoder.norm(x, residual)
        return x

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.target.compute_logits(hidden)


class Drafter:
    def __init__(self, runner: Any, method: str, draft_dir: str | None, layers: int):
        self.runner = runner
        self.method = method
        self.sampler = Sampler()
        if method == "layers":
            self.model = LayerDraft(runner.model, layers)
            self.dtype, self.kernels = runner.dtype, runner.kernels
            return
        from llm_infer.runtime.model_runner import build_model, resolve_dtype

        # The draft's precision only shapes proposals (the target decides what is kept), so it
        # has its own dtype (speculative.draft_dtype, auto: bf16 for full-precision checkpoints)
        # and always an int8 head.
        dtype = runner.config.speculative.draft_dtype
        draft_config = replace(runner.config, dtype=dtype, quantization=QuantizationConfig(lm_head="int8"))
        self.dtype = resolve_dtype(dtype, ModelConfig.from_dir(draft_dir), runner.device)
        self.kernels = dispatch.select_kernels(runner.config.kernels, runner.device, self.dtype)
        with single_rank():
            self.model, config = build_model(draft_config, draft_dir, runner.device, self.kernels, progress=False)
        if config.vocab_size != runner.model_config.vocab_size:
            raise UserError(f"the draft model's vocabulary ({config.vocab_size}) differs from the target's "
                            f"({runner.model_config.vocab_size})")
        self.config = config

    def block_bytes(self) -> int:
        """Extra KV bytes per block (a separate draft model keeps its own cache)."""
        if self.method == "layers":
            return 0
        attn = self.model.attention_layers()
        return bytes_per_block(len(attn), self.runner.block_size, attn[0].num_kv_heads, attn[0].head_dim,
                               self.dtype)

    def init_cache(self, num_blocks: int) -> None:
        if self.method == "layers":
            return
        with single_rank():
            attn = self.model.attention_layers()
            self.cache = KVCache(len(attn), num_blocks, self.runner.block_size, attn[0].num_kv_heads,
                                 attn[0].head_dim, self.dtype, self.runner.device)
            for layer, kv in zip(attn, self.cache.layers):
                layer.k_cache, layer.v_cache = kv[0], kv[1]
            if FusedDecode.supported(self.model, self.kernels.name, 1):
                self.model.model.fused = FusedDecode(self.model, self.kernels.attention.ext)

    def _forward_logits(self, batch: _DraftBatch) -> torch.Tensor:
        ids, positions, meta = build_inputs(batch, self.runner.block_size, self.kernels.attention, self.runner.device)
        with single_rank():
            hidden = self.model(ids, positions, meta)
            last = torch.tensor([sum(batch.query_lens[: i + 1]) - 1 for i in range(len(batch.query_lens))],
                                device=hidden.device)
            return self.model.compute_logits(hidden[last])

    @torch.inference_mode()
    def propose(self, plan: StepPlan) -> tuple[list[list[int]], list[torch.Tensor | None]]:
        """For each sequence of the plan, its proposed tokens and (for sampled requests) the draft's
        distributions at them; sequences with nothing to propose get ([], None)."""
        spec = plan.spec
        rows = [i for i, k in enumerate(spec.num_draft) if k > 0]
        tokens: list[list[int]] = [[] for _ in plan.seq_ids]
        dists: list[list[torch.Tensor]] = [[] for _ in plan.seq_ids]
        params = per_sequence(plan.sampling, plan.sample)
        # positions: the catch-up tokens end with the pending token at (seq_len - query_len)
        pending_pos = {i: plan.seq_lens[i] - plan.query_lens[i] for i in rows}
        batch = _DraftBatch([t for i in rows for t in spec.catch_up[i]], [len(spec.catch_up[i]) for i in rows],
                            [pending_pos[i] + 1 for i in rows], [plan.block_tables[i] for i in rows])
        for step in range(max(spec.num_draft[i] for i in rows)):
            logits = self._forward_logits(batch)
            live, next_ids = [], []
            for j, i in enumerate(rows):
                if step >= spec.num_draft[i]:
                    continue
                p = params[i]
                if p.temperature[0] == 0:
                    token = int(logits[j].argmax())
                else:
                    q = self.sampler.probs(logits[j : j + 1], p)[0]
                    token = draw(q, draw_seed(p.seeds[0], p.output_index[0] + step, DRAFT))
                    dists[i].append(q)
                tokens[i].append(token)
                if step + 1 < spec.num_draft[i]:
                    live.append(i)
                    next_ids.append(token)
            if not live:
                break
            batch = _DraftBatch(next_ids, [1] * len(live), [pending_pos[i] + step + 2 for i in live],
                                [plan.block_tables[i] for i in live])
            rows = live
        return tokens, [torch.stack(d) if d else None for d in dists]

