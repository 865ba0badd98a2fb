"""Proposers that run a model: a separate draft model (`draft`) or the target's own first
layers (`layers`). They live on the sampling rank and run at the end of a step, once the
step's tokens are known; their proposals go back to the controller with the step's output
and are verified in the request's next step.

The draft's KV cache has the target's blocks and block tables (one entry per position for
both); the scheduler reserves room for the proposals (lookahead slots). A separate draft
model keeps its own cache tensors; the `layers` draft writes into the target's cache for
its layers, where the verifying pass writes the same values again. For sampled requests
the draft's distributions at its proposals stay here until the verifying step asks for them.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch
from torch import nn

from llm_infer.errors import UserError
from llm_infer.kernels import dispatch
from llm_infer.parallel.state import ParallelState, get_parallel_state, set_parallel_state
from llm_infer.runtime.forward_paths import ReferenceForward, choose_forward
from llm_infer.runtime.kv_cache import KVCache, model_block_bytes
from llm_infer.runtime.models.build import build_model, resolve_model
from llm_infer.runtime.models.decoder import CausalLM
from llm_infer.runtime.random_draws import draw, draw_seed
from llm_infer.runtime.sampler import Sampler, per_sequence, select_rows
from llm_infer.runtime.step_plan import StepPlan

DRAFT = 3  # purpose of the draft's own draws (see random_draws.draw_seed)


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

    def __init__(self, target: CausalLM, n: int):
        super().__init__()
        if n >= target.config.num_layers:
            raise UserError(f"speculative.draft_layers={n} must be below the model's {target.config.num_layers} layers")
        self.target, self.n = target, n

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, meta, intermediate=None) -> torch.Tensor:
        decoder = self.target.model
        x, residual = decoder.embed_tokens(input_ids), None
        for i in range(self.n):
            x, residual = decoder.layers[i](x, residual, positions, decoder.rotary, meta)
        x, _ = decoder.norm(x, residual)
        return x

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.target.compute_logits(hidden)


class Drafter:
    """Proposes tokens for the next step of each request the plan asks it to (`plan.draft`)."""

    def __init__(self, method: str, model: nn.Module, kernels: dispatch.Kernels, dtype: torch.dtype,
                 device: torch.device, block_size: int):
        self.method, self.model, self.kernels = method, model, kernels
        self.dtype, self.device, self.block_size = dtype, device, block_size
        self.sampler = Sampler()
        self.forward: ReferenceForward = ReferenceForward(model, kernels, block_size, device)
        self.cache: KVCache | None = None
        self._probs: dict[int, torch.Tensor] = {}  # seq_id -> draft distributions at its proposals

    @classmethod
    def from_layers(cls, target: CausalLM, n: int, kernels: dispatch.Kernels, dtype: torch.dtype,
                    device: torch.device, block_size: int) -> "Drafter":
        """The `layers` method: the target's first `n` layers draft (sharing the target's cache)."""
        return cls("layers", LayerDraft(target, n), kernels, dtype, device, block_size)

    @classmethod
    def from_model_dir(cls, model_dir: str | Path, dtype: str, kernels_setting: str, target_vocab: int,
                       device: torch.device, block_size: int) -> "Drafter":
        """The `draft` method: a separate model (dense or AWQ) in its own `dtype`, with an int8 head
        on CPU (its precision only shapes proposals; the target decides what is kept; on CUDA,
        which has no int8 kernel, the head would be dequantized every step, so it stays as
        loaded). Raises UserError when its vocabulary differs from the target's."""
        resolved = resolve_model(str(model_dir), dtype, device)
        kernels = dispatch.select_kernels(kernels_setting, device, resolved.dtype, head_dim=resolved.config.head_dim)
        with single_rank():
            model = build_model(resolved, device, kernels, lm_head_int8=device.type == "cpu", progress=False)
        if resolved.config.vocab_size != target_vocab:
            raise UserError(f"the draft model's vocabulary ({resolved.config.vocab_size}) differs from the target's "
                            f"({target_vocab})")
        return cls("draft", model, kernels, resolved.dtype, device, block_size)

    def block_bytes(self) -> int:
        """Extra KV bytes per block (a separate draft model keeps its own cache)."""
        return 0 if self.method == "layers" else model_block_bytes(self.model, self.block_size, self.dtype)

    def init_cache(self, num_blocks: int) -> None:
        if self.method == "layers":
            return
        with single_rank():
            self.cache = KVCache.for_model(self.model, num_blocks, self.block_size, self.dtype, self.device)
            self.forward = choose_forward(self.model, self.kernels, self.block_size, self.device, 1, 1)

    def forget(self, seq_ids: list[int]) -> None:
        for seq_id in seq_ids:
            self._probs.pop(seq_id, None)

    def probs_for(self, seq_id: int, k: int) -> torch.Tensor | None:
        """The draft's distributions `[k, vocab]` at the first k proposals it made for `seq_id`
        (None for greedy requests)."""
        probs = self._probs.pop(seq_id, None)
        return None if probs is None else probs[:k]

    def _last_logits(self, batch: _DraftBatch) -> torch.Tensor:
        with single_rank():
            hidden = self.forward(batch)
            ends = torch.tensor(batch.query_lens, device=hidden.device).cumsum(0) - 1
            return self.model.compute_logits(hidden[ends])

    @torch.inference_mode()
    def propose(self, plan: StepPlan, appended: list[list[int]]) -> list[list[int]]:
        """For each request of the plan, the tokens proposed for its next step ([] for none), given
        the tokens this step `appended`. The draft first catches up: a separate draft model
        processes what it has not seen (`plan.draft.catch_up[i]`) and the appended tokens; the
        layers draft only the last appended token (the target's cache holds the rest)."""
        spec = plan.draft
        rows = [i for i, k in enumerate(spec.num_draft) if k > 0 and appended[i]]
        tokens: list[list[int]] = [[] for _ in plan.seq_ids]
        dists: dict[int, list[torch.Tensor]] = {i: [] for i in rows}
        params = per_sequence(plan.sampling, plan.sample)
        inputs, next_pos = {}, {}
        for i in rows:
            seen = spec.catch_up[i] + appended[i] if self.method == "draft" else appended[i][-1:]
            next_pos[i] = plan.seq_lens[i] - plan.spec_len(i) + len(appended[i])  # after the last appended
            inputs[i] = seen
        batch = _DraftBatch([t for i in rows for t in inputs[i]], [len(inputs[i]) for i in rows],
                            [next_pos[i] for i in rows], [plan.block_tables[i] for i in rows])
        for step in range(max((spec.num_draft[i] for i in rows), default=0)):
            logits = self._last_logits(batch)
            live, next_ids = [], []
            for j, i in enumerate(rows):
                row = params[i]
                if plan.sampling.temperature[row] == 0:
                    token = int(logits[j].argmax())
                else:
                    q = self.sampler.probs(logits[j : j + 1], select_rows(plan.sampling, [row]))[0]
                    index = plan.sampling.output_index[row] + len(appended[i]) + step
                    token = draw(q, draw_seed(plan.sampling.seeds[row], index, DRAFT))
                    dists[i].append(q)
                tokens[i].append(token)
                if step + 1 < spec.num_draft[i]:
                    live.append(i)
                    next_ids.append(token)
            if not live:
                break
            batch = _DraftBatch(next_ids, [1] * len(live), [next_pos[i] + step + 1 for i in live],
                                [plan.block_tables[i] for i in live])
            rows = live
        for i, d in dists.items():
            if d:
                self._probs[plan.seq_ids[i]] = torch.stack(d)
        return tokens
