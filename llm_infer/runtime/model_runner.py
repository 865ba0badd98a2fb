"""Turns a step plan into this worker's part of the forward pass, and logits into tokens.

`execute` reads in the order data flows: copy shared blocks -> forward (the path chosen
once in `init_cache`: reference, fused C++ stack or CUDA graphs; see `forward_paths.py`)
-> logits of the rows that need them -> tokens (`Sampler.sample_step`) and scores -> the
drafter's proposals for the next step. A step with embedding requests (`plan.pool`) keeps the
hidden states to pool them (`pooling.pool_rows`) before the logits of the other rows. The runner
never sees requests, only the plan's flat lists; the model never sees the plan, only tensors and
attention metadata.

An overlapped plan (`StepPlan.overlapped`) is planned before the previous step's tokens reach
the host: its `PLACEHOLDER` inputs are filled on the device from `sampled`, where the previous
step left its tokens, and its own tokens are returned pending (copied to the host in the
background, `StepOutput.resolve`), so nothing here waits for the device.
"""

from __future__ import annotations

import time
from bisect import bisect_right

import torch

from llm_infer.config import EngineConfig
from llm_infer.kernels import dispatch
from llm_infer.parallel.state import get_parallel_state
from llm_infer.runtime.forward_paths import ReferenceForward, choose_forward
from llm_infer.runtime.kv_cache import KVCache, available_memory, model_block_bytes
from llm_infer.runtime.logprobs import prompt_logprobs
from llm_infer.runtime.models.build import ResolvedModel, build_model
from llm_infer.kernels.attention_metadata import query_start_loc
from llm_infer.runtime.models.decoder import IntermediateTensors
from llm_infer.runtime.pooling import pool_rows
from llm_infer.runtime.request import PLACEHOLDER
from llm_infer.runtime.sampler import Sampler
from llm_infer.runtime.structured_output.compiler import GrammarCompiler
from llm_infer.runtime.step_inputs import Placeholders, logit_rows, spec_proposals
from llm_infer.runtime.step_plan import PendingTokens, StepOutput, StepPlan, StepTiming


class ModelRunner:
    def __init__(self, config: EngineConfig, resolved: ResolvedModel, device: torch.device, progress: bool = True):
        self.config = config
        self.model_config = resolved.config
        self.device = device
        self.dtype = resolved.dtype
        self.block_size = config.cache.block_size
        self.max_model_len = resolved.max_model_len
        self.kernels = dispatch.select_kernels(config.kernels, device, self.dtype, config.deterministic,
                                               resolved.config.head_dim)
        self.model = build_model(resolved, device, self.kernels, config.quantization.lm_head == "int8", progress,
                                 config.parallel.pipeline_layers)
        self.lora = None
        if config.lora.enabled:  # LoRA stacks on this rank's projections (runtime/lora/worker_lora.py)
            from llm_infer.runtime.lora.worker_lora import WorkerLoRA

            self.lora = WorkerLoRA(self.model, config.lora, self.kernels, self.dtype, device)
        self.sampler = Sampler(lambda: GrammarCompiler.for_model(resolved.model_dir, resolved.config))
        self.kv_cache: KVCache | None = None
        self.reference = ReferenceForward(self.model, self.kernels, self.block_size, device)
        self.forward: ReferenceForward = self.reference  # replaced by a faster path in init_cache
        self.drafter = self._make_drafter() if get_parallel_state().samples else None
        self.profiling = False  # time the step's parts (StepOutput.timing); set by Worker.set_profiling
        # Overlapped scheduling: the last overlapped step's tokens on the device (row j: its j-th
        # sampling request, `_sampled_row` by seq id), and pinned buffers their copies land in.
        rows = config.scheduler.max_num_seqs
        self.sampled = torch.zeros(rows, dtype=torch.int64, device=device)
        self._sampled_row: dict[int, int] = {}
        self._host_tokens = [torch.zeros(rows, dtype=torch.int64, pin_memory=device.type == "cuda")
                             for _ in range(3)]
        self._host_turn = 0

    def _make_drafter(self):
        spec = self.config.speculative
        if spec.method not in ("draft", "layers"):
            return None
        from llm_infer.runtime.models.resolve import resolve_model_dir
        from llm_infer.runtime.speculative.draft import Drafter

        if spec.method == "layers":
            return Drafter.from_layers(self.model, spec.draft_layers, self.kernels, self.dtype, self.device,
                                       self.block_size)
        return Drafter.from_model_dir(resolve_model_dir(spec.draft_model, "draft model"), spec.draft_dtype, self.config.kernels,
                                      self.model_config.vocab_size, self.device, self.block_size)

    def describe(self) -> dict[str, str]:
        """What runs here: device, dtype, kernel set and forward path (for reports and benchmarks)."""
        return {"device": str(self.device), "dtype": str(self.dtype).removeprefix("torch."),
                "kernels": self.kernels.name, "forward": self.forward.name}

    def block_bytes(self) -> int:
        target = model_block_bytes(self.model, self.block_size, self.dtype)
        return target + (self.drafter.block_bytes() if self.drafter is not None else 0)

    def available_blocks(self) -> int:
        """Blocks that fit in `cache.memory_fraction` of the memory still free (or `cache.num_blocks`)."""
        if self.config.cache.num_blocks is not None:
            return self.config.cache.num_blocks
        budget = available_memory(self.device) * self.config.cache.memory_fraction
        return int(budget // self.block_bytes())

    def init_cache(self, num_blocks: int) -> None:
        """Allocate and bind the KV cache, then choose the forward path for the steps to come."""
        self.kv_cache = KVCache.for_model(self.model, num_blocks, self.block_size, self.dtype, self.device)
        if self.drafter is not None:
            self.drafter.init_cache(num_blocks)
        state = get_parallel_state()
        self.forward = choose_forward(self.model, self.kernels, self.block_size, self.device,
                                      state.tp_size * state.pp_size, state.tp_size, self.config.cuda_graphs,
                                      self.max_model_len, self.config.scheduler.max_num_seqs, self.sampled)

    @torch.inference_mode()
    def execute(self, plan: StepPlan, intermediate: IntermediateTensors | None = None
                ) -> StepOutput | IntermediateTensors | None:
        """Run one step. Non-final pipeline stages return what the next stage needs; the
        sampling rank returns the step's tokens; other ranks return None."""
        if plan.block_copies:
            self.kv_cache.copy_blocks(plan.block_copies)
            if self.drafter is not None and self.drafter.cache is not None:  # the draft's cache shares the tables
                self.drafter.cache.copy_blocks(plan.block_copies)
        if self.lora is not None:  # slot loads, and which slot each token reads
            self.lora.prepare(plan)
        if plan.finished_seq_ids:
            self.sampler.forget(plan.finished_seq_ids)
            if self.drafter is not None:
                self.drafter.forget(plan.finished_seq_ids)
        start = time.perf_counter() if self.profiling else 0.0
        rows, spans = logit_rows(plan)
        pooled: dict[int, torch.Tensor] = {}
        if plan.pool is None:
            logits = self.forward.logits(plan, intermediate, rows, self._placeholders(plan))
        else:  # embedding requests: their hidden states are pooled, the other rows' logits computed from them
            hidden = self.forward(plan, intermediate)
            if isinstance(hidden, IntermediateTensors):
                return hidden
            pooled = pool_rows(hidden, plan)
            logits = self.model.compute_logits(hidden[rows] if rows is not None else hidden)
        if logits is None or isinstance(logits, IntermediateTensors):
            return logits
        if plan.overlapped:
            return self._sample_overlapped(plan, logits, spans)
        proposals = spec_proposals(plan)
        draft_probs = [self.drafter.probs_for(seq_id, len(p)) if p and self.drafter is not None else None
                       for seq_id, p in zip(plan.seq_ids, proposals)]
        if self.config.deterministic:  # plain draws decide every position: the tokens of speculation off
            draft_probs = [None] * len(draft_probs)
        tokens, logprobs = self.sampler.sample_step(plan, logits, spans, proposals, draft_probs)
        out = StepOutput(plan.step_id, tokens, logprobs=logprobs, pooled=pooled)
        for i, want in enumerate(plan.return_logits):
            if want:
                out.logits[plan.seq_ids[i]] = logits[spans[i][0] : spans[i][1]].cpu()
        if plan.prompt_targets is not None:
            out.prompt_logprobs = prompt_logprobs(plan, logits, spans)
        if self.profiling:
            out.timing = StepTiming(verify_s=time.perf_counter() - start)
        if plan.draft is not None and self.drafter is not None:
            start = time.perf_counter() if self.profiling else 0.0
            out.draft_token_ids = self.drafter.propose(plan, out.token_ids)
            if self.profiling:
                out.timing.draft_s = time.perf_counter() - start
        return out

    def _placeholders(self, plan: StepPlan) -> Placeholders | None:
        """Where an overlapped plan's placeholder inputs come from: the previous step's tokens."""
        if not plan.overlapped:
            return None
        index = [j for j, token in enumerate(plan.input_ids) if token == PLACEHOLDER]
        if not index:
            return None
        starts = query_start_loc(plan.query_lens)
        seq_of = [bisect_right(starts, j) - 1 for j in index]
        return Placeholders(index, [self._sampled_row[plan.seq_ids[i]] for i in seq_of], self.sampled)

    def _sample_overlapped(self, plan: StepPlan, logits: torch.Tensor, spans: list[tuple[int, int]]) -> StepOutput:
        """Every request is plain: one token per sampling request, left on the device in `sampled`
        for the next step's placeholders and copied to the host in the background."""
        samplers = [i for i, s in enumerate(plan.sample) if s]
        rows = [spans[i][1] - 1 for i in samplers]
        tokens = self.sampler.sample_tokens(logits if len(rows) == logits.shape[0] else logits[rows], plan.sampling)
        self.sampled[: len(rows)].copy_(tokens)
        self._sampled_row = {plan.seq_ids[i]: j for j, i in enumerate(samplers)}
        host = self._host_tokens[self._host_turn]
        self._host_turn = (self._host_turn + 1) % len(self._host_tokens)
        return StepOutput(plan.step_id, [], pending=PendingTokens(tokens, plan.sample, host))
