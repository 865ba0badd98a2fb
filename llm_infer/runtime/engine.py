"""The controller loop: admit requests, schedule a step, execute it, post-process.

The engine owns scheduling, tokenization and per-request state; it hands one
`StepPlan` per step to the executor and gets sampled tokens back. With
pipeline stages it keeps up to `executor.max_inflight` steps (micro-batches of
disjoint sequences) in flight, so every stage has work: each `step()` tops the
pipeline up, then finishes the oldest step.

Overlapped scheduling (an executor whose device runs steps asynchronously, no
speculation, every request plain): the engine plans and submits step N+1 before it
collects step N, so the host's work (output processing, scheduling, input building)
runs while the device computes. Step N+1 takes the tokens step N samples as
placeholders that the worker fills on the device. Each request's computed count and
placeholder count advance when a step is submitted; a request that step N finishes
still runs in step N+1, whose token for it is dropped.
"""

from __future__ import annotations

import itertools
import random
import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING


from llm_infer.config import EngineConfig
from llm_infer.errors import UserError, WorkerError
from llm_infer.runtime.block_manager import BlockManager
from llm_infer.runtime.detokenizer import IncrementalDetokenizer
from llm_infer.runtime.lora.registry import NO_LORA, LoRAInfo, LoRARegistry
from llm_infer.runtime.models.model_config import ModelConfig
from llm_infer.runtime.output_processor import OutputProcessor
from llm_infer.runtime.outputs import CompletionOutput, EngineSnapshot, RequestOutput
from llm_infer.runtime.pooling import PoolingParams
from llm_infer.runtime.recovery import WorkerRecovery
from llm_infer.runtime.request import Request, RequestStatus
from llm_infer.runtime.sampling_params import SamplingParams, SamplingParamsError, needs_processing
from llm_infer.runtime.scheduler import Scheduler
from llm_infer.runtime.speculative.planner import SpecPlanner
from llm_infer.runtime.structured_output.compiler import GrammarCompiler, end_of_sequence_ids
from llm_infer.runtime.structured_output.params import ReasoningStart, constraint_spec
from llm_infer.runtime.step_plan import StepOutput, StepPlan, StepTiming, build_step_plan
from llm_infer.runtime.tokenizer import Tokenizer

if TYPE_CHECKING:
    from llm_infer.executor.base import Executor


@dataclass
class EngineStats:
    steps: int = 0
    prefill_tokens: int = 0  # tokens computed by prefill (including recomputation)
    decode_tokens: int = 0
    last_step_timing: StepTiming | None = None  # profiling only: StepOutput.timing of the last step


class LLMEngine:
    def __init__(self, config: EngineConfig, executor: Executor, tokenizer: Tokenizer, model_config: ModelConfig):
        self.config = config
        self.executor = executor
        self.tokenizer = tokenizer
        self.model_config = model_config
        self.max_model_len = model_config.max_model_len(config.scheduler.max_model_len)
        self.eos_token_ids = end_of_sequence_ids(tokenizer, model_config)
        self._grammar_compiler: GrammarCompiler | None = None  # made for the first constrained request
        bs = config.cache.block_size
        per_seq = -(-self.max_model_len // bs)
        num_blocks = min(executor.available_blocks(), per_seq * config.scheduler.max_num_seqs)
        if num_blocks < per_seq:
            raise UserError(
                f"the KV cache holds {num_blocks * bs} tokens, less than max_model_len={self.max_model_len}; "
                "raise cache.memory_fraction or cache.num_blocks, or lower scheduler.max_model_len"
            )
        executor.init_cache(num_blocks)
        # The draft model of draft/layers speculation keeps its own cache, which prefix caching would not fill.
        prefix_caching = config.cache.prefix_caching and config.speculative.method not in ("draft", "layers")
        self.block_manager = BlockManager(num_blocks, bs, prefix_caching)
        self.loras = LoRARegistry(config.lora, model_config) if config.lora.enabled else None
        self.scheduler = Scheduler(config.scheduler, self.block_manager,
                                   config.lora.max_loras if config.lora.enabled else None)
        self.stats = EngineStats()
        self._rng = random.Random(config.seed)
        self._ids = itertools.count()
        self._groups: dict[str, list[Request]] = {}  # request id -> its samples (the first holds the rest as forks)
        # Steps in flight: what was scheduled, the plan, and (overlapped steps) the requests given a placeholder.
        self._inflight: deque[tuple[list[tuple[Request, int]], StepPlan, set[int]]] = deque()
        self._busy: set[int] = set()
        self._finished_ids: list[int] = []  # told to the workers with the next plan
        self.outputs = OutputProcessor(self.eos_token_ids, self.max_model_len)
        self.spec = SpecPlanner(config.speculative, self.max_model_len) if config.speculative.method else None
        self.recovery = WorkerRecovery(config.parallel)

    def add_request(self, prompt: str | list[int], params: SamplingParams | None = None,
                    request_id: str | None = None, return_logits: bool = False,
                    reasoning: ReasoningStart | None = None, pooling: PoolingParams | None = None) -> str:
        """Queue a request (`params.n` samples of it) and return its id. `reasoning`: how a chat
        request's output begins (for the thinking budget and for constraints that apply after the
        reasoning). `pooling` (without `params`): an embedding request, prefilled and pooled
        (`runtime/pooling.py`), its output's `embedding` set when it finishes. Raises UserError for
        an empty or too long prompt, token ids outside the vocabulary, an id already in use, or an
        invalid output constraint or pooling."""
        if pooling is not None:
            if params is not None:
                raise UserError("an embedding request (pooling) takes no sampling parameters")
            pooling.check(self.model_config.hidden_size)
            params = SamplingParams(max_tokens=0, temperature=0)
        params = params or SamplingParams()
        if isinstance(prompt, str):
            text, ids = prompt, self.tokenizer.encode(prompt)
        else:
            text, ids = None, [int(t) for t in prompt]
        self._check_prompt(ids, params, return_logits)
        lora_id = self._lora_id(params)
        constraint = constraint_spec(self._grammar(params), params.thinking_budget, reasoning)
        first_id = next(self._ids)
        while request_id is None and str(first_id) in self._groups:  # a caller chose this id earlier
            first_id = next(self._ids)
        request_id = request_id if request_id is not None else str(first_id)
        if request_id in self._groups:
            raise UserError(f"request id {request_id!r} is already in use")
        seed = params.seed if params.seed is not None else self._rng.getrandbits(63)
        samples = []
        for index in range(params.n):
            seq_id = first_id if index == 0 else next(self._ids)
            req = Request(seq_id, request_id, ids, params, seed + index, return_logits, prompt=text,
                          detokenizer=IncrementalDetokenizer(self.tokenizer, ids), index=index,
                          processed=needs_processing(params), constraint=constraint,
                          logprobs=[] if params.logprobs is not None else None,
                          prompt_logprobs=[None] if params.prompt_logprobs is not None and index == 0 else None,
                          pooling=pooling, lora_id=lora_id)
            if self.spec is not None:
                req.spec = self.spec.new_state(req)
            samples.append(req)
        samples[0].forks = samples[1:]  # started once the first sample's prompt is computed
        self._groups[request_id] = samples
        self.scheduler.add(samples[0])
        return request_id

    # -- LoRA adapters (runtime/lora/) -------------------------------------------------------

    def add_lora(self, name: str, path: str) -> LoRAInfo:
        """Load the PEFT adapter folder `path` under `name`; requests name it in `SamplingParams.lora`.
        Only its headers are read here; each worker reads its shard when a request first needs it.
        Raises UserError when adapters are not enabled (`lora.enabled`), the name is taken, or the
        adapter does not fit the model (the message names the file and tensor)."""
        return self._lora_registry().add(name, path)

    def remove_lora(self, name: str) -> LoRAInfo:
        """Forget the adapter `name`: new requests naming it are refused; requests already added
        finish with it. Raises UserError for an unknown name."""
        return self._lora_registry().remove(name)

    def list_loras(self) -> list[LoRAInfo]:
        """The adapters loaded now, in the order they were added ([] when adapters are off)."""
        return self.loras.list() if self.loras is not None else []

    def _lora_registry(self) -> LoRARegistry:
        if self.loras is None:
            raise UserError("LoRA adapters are off: set lora.enabled: true")
        return self.loras

    def _lora_id(self, params: SamplingParams) -> int:
        if params.lora is None:
            return NO_LORA
        try:
            return self._lora_registry().resolve(params.lora)
        except UserError as e:
            raise SamplingParamsError("lora", str(e)) from None

    def _lora_step(self, scheduled: list[tuple[Request, int]]) -> tuple[list[int], list, list[int]] | None:
        """The step's adapter slots, slot loads and dropped adapters (None: adapters are off)."""
        if self.loras is None:
            return None
        if self.loras.has_removed:
            self.loras.collect({s.lora_id for samples in self._groups.values() for s in samples})
        slots, loads = self.loras.assign([req.lora_id for req, _ in scheduled])
        return slots, loads, self.loras.take_dropped()

    def _grammar(self, params: SamplingParams) -> str | None:
        """The request's grammar, checked against the model's tokenizer (None: unconstrained)."""
        if params.structured_outputs is None:
            return None
        if self._grammar_compiler is None:
            self._grammar_compiler = GrammarCompiler(self.tokenizer, self.model_config.vocab_size, self.eos_token_ids)
        try:
            grammar = params.structured_outputs.to_grammar()
            self._grammar_compiler.check(grammar, user_grammar=params.structured_outputs.grammar is not None)
        except UserError as e:
            raise SamplingParamsError("structured_outputs", str(e)) from None
        return grammar

    def _check_prompt(self, ids: list[int], params: SamplingParams, return_logits: bool) -> None:
        if not ids:
            raise UserError("the prompt is empty")
        scoring_only = return_logits or params.max_tokens == 0
        if len(ids) > self.max_model_len or (len(ids) == self.max_model_len and not scoring_only):
            raise UserError(f"the prompt has {len(ids)} tokens; max_model_len is {self.max_model_len} "
                            "(prompt and at least one new token must fit)")
        vocab = self.model_config.vocab_size
        bad = next((t for t in [*ids, *params.logit_bias, *params.stop_token_ids] if not 0 <= t < vocab), None)
        if bad is not None:
            raise UserError(f"token id {bad} is outside the vocabulary (size {vocab})")

    def has_unfinished(self) -> bool:
        return self.scheduler.has_unfinished()

    def abort(self, request_id: str) -> None:
        """Stop every sample of a request and free its blocks (a no-op for unknown ids)."""
        for req in self._groups.pop(request_id, []):
            for sample in [req, *req.forks]:
                if not sample.finished:
                    sample.finish_reason = "abort"
                    self._release(sample)

    def snapshot(self) -> EngineSnapshot:
        """The counters the server publishes: queue lengths, KV usage, prefix hits, acceptance."""
        spec = self.spec.stats if self.spec is not None else None
        blocks = self.block_manager
        return EngineSnapshot(
            running=len(self.scheduler.running), waiting=len(self.scheduler.waiting), kv_usage=blocks.usage(),
            prefix_query_tokens=blocks.query_tokens, prefix_hit_tokens=blocks.hit_tokens,
            spec_proposed=spec.proposed if spec else 0, spec_accepted=spec.accepted if spec else 0,
            restarts=self.recovery.restarts, recovered_requests=self.recovery.recovered_requests)

    def step(self) -> list[RequestOutput]:
        """Run one step; return an update for every request that produced a token or finished.
        A worker failure within the restart budget returns no updates: the workers are replaced
        and the requests resume in the next steps (see `runtime/recovery.py`)."""
        try:
            self._fill_pipeline()
            if not self._inflight:
                if self.scheduler.has_unfinished():
                    raise RuntimeError("scheduler made no progress although requests are waiting")
                return []
            scheduled, plan, placeheld = self._inflight.popleft()
            result = self.executor.collect()
        except WorkerError as error:
            self._recover(error)
            return []
        self._busy.difference_update(req.seq_id for req, _ in scheduled)
        return self._process(scheduled, plan, result, placeheld)

    def _can_overlap(self) -> bool:
        """Whether the next step may be planned before the last one's tokens are known."""
        if not self.executor.overlaps or self.spec is not None:
            return False
        return all(r.plain for r in itertools.chain(self.scheduler.running, self.scheduler.waiting))

    def _fill_pipeline(self) -> None:
        overlap = self._can_overlap()
        depth = 2 if overlap else self.executor.max_inflight
        while len(self._inflight) < depth:
            # Split the work into `depth` micro-batches so every stage gets a share.
            active = len(self.scheduler.running) + len(self.scheduler.waiting)
            cap = -(-active // depth) if depth > 1 and not overlap else None
            if overlap:
                in_flight = {req.seq_id for scheduled, _, _ in self._inflight for req, _ in scheduled}
                scheduled = self.scheduler.schedule(max_seqs=cap, protected=in_flight)
            else:
                scheduled = self.scheduler.schedule(busy=self._busy, max_seqs=cap)
            if not scheduled:
                return
            plan = build_step_plan(scheduled, self.stats.steps, self.block_manager.take_copies(),
                                   self._finished_ids, self.spec.draft_method if self.spec is not None else None,
                                   self.eos_token_ids, overlapped=overlap, lora=self._lora_step(scheduled))
            self._finished_ids = []
            self.stats.steps += 1
            self.executor.submit(plan)
            self._inflight.append((scheduled, plan, self._advance(scheduled, plan) if overlap else set()))
            self._busy.update(req.seq_id for req, _ in scheduled)

    def _advance(self, scheduled: list[tuple[Request, int]], plan: StepPlan) -> set[int]:
        """Overlapped step submitted: its tokens count as computed, and each token it samples becomes
        a placeholder unless it is certainly the request's last (max_tokens, max_model_len). Returns
        the requests given a placeholder."""
        placeheld = set()
        for (req, n), samples in zip(scheduled, plan.sample):
            req.num_computed_tokens += n
            if samples and req.num_outputs + 1 < req.params.max_tokens and req.num_tokens + 1 < self.max_model_len:
                req.num_placeholders += 1
                placeheld.add(req.seq_id)
        return placeheld

    def _process(self, scheduled: list[tuple[Request, int]], plan: StepPlan, result: StepOutput,
                 placeheld: set[int] = frozenset()) -> list[RequestOutput]:
        """Append each request's tokens (one, or accepted proposals plus one), and roll its KV
        back to what they cover. Plain decoding is speculation with no proposals. An overlapped
        step's placeholders (`placeheld`) give way to the tokens they stood for."""
        now = time.perf_counter()
        self.stats.last_step_timing = result.timing
        if plan.spec_lens is not None or plan.draft is not None:
            self.spec.stats.steps += 1
            if result.timing is not None:
                self.spec.stats.draft_time_s += result.timing.draft_s
                self.spec.stats.verify_time_s += result.timing.verify_s
        updates: dict[str, list[CompletionOutput]] = {}
        for i, (req, n) in enumerate(scheduled):
            if req.finished:  # aborted while its step was in flight
                continue
            if req.first_scheduled_time is None:
                req.first_scheduled_time = now
            proposed, tokens = plan.spec_len(i), result.token_ids[i]
            if req.seq_id in result.logits:
                req.keep_logits(req.num_computed_tokens, result.logits[req.seq_id])
            if req.seq_id in result.pooled:
                req.add_pooled(result.pooled[req.seq_id])
            if req.seq_id in result.prompt_logprobs and req.prompt_logprobs is not None:
                start = req.num_computed_tokens + 1  # row p scores prompt token p + 1
                req.prompt_logprobs[start:] = result.prompt_logprobs[req.seq_id]
            if tokens and n - proposed == 1 and req.output_token_ids:
                self.stats.decode_tokens += len(tokens)
            else:
                self.stats.prefill_tokens += n
            # The step's own tokens and the accepted proposals are now in the cache; the rest is stale.
            if plan.overlapped:  # counted when it was submitted
                req.num_placeholders -= req.seq_id in placeheld
            else:
                req.num_computed_tokens += n - proposed + max(0, len(tokens) - 1)
            if req.forks and req.num_computed_tokens >= len(req.prompt_token_ids):
                self._start_forks(req, now)
            if tokens:
                update = self.outputs.append(req, tokens, result.logprobs[i] if result.logprobs else None, now)
                updates.setdefault(req.request_id, []).append(update)
            elif req.params.max_tokens == 0 and req.num_computed_tokens >= req.num_tokens:
                # scored (or pooled) the prompt; nothing to generate
                self.outputs.finish(req, "length" if req.pooling is None else "stop", now)
                updates.setdefault(req.request_id, []).append(self.outputs.completion(req))
            if req.finish_reason is not None:
                self._release(req)
                continue
            self.block_manager.register(req)
            self.block_manager.trim(req, req.num_computed_tokens)
            if self.spec is not None and tokens:
                drafted = result.draft_token_ids[i] if plan.draft and plan.draft.num_draft[i] else None
                self.spec.after_step(req, proposed, len(tokens), drafted)
        results = []
        for request_id, changed in updates.items():
            samples = self._groups[request_id]
            out = self.outputs.request_output(samples, changed)
            if out.finished:
                del self._groups[request_id]
            results.append(out)
        return results

    def _recover(self, error: WorkerError) -> None:
        """Replace the failed workers and put every running request back for recomputation; raises
        the error when no restart is allowed."""
        self.recovery.check(error, self.executor)
        self._inflight.clear()
        self._busy.clear()
        self._finished_ids = []
        moved = self.scheduler.preempt_all()
        self.block_manager.drop_cache()
        if self.loras is not None:
            self.loras.forget_slots()
        for samples in self._groups.values():
            for sample in samples:
                sample.forget_worker_state()
        self.recovery.restart(error, self.executor, len(moved))

    def _start_forks(self, parent: Request, now: float) -> None:
        """The prompt is computed: samples 1..n-1 start from its blocks, each recomputing only the
        last prompt token (whose logits give it its own first draw), or end at once when nothing
        is to be generated."""
        for child in parent.forks:
            if child.finished:
                continue
            child.first_scheduled_time = now
            if parent.params.max_tokens == 0:
                self.outputs.finish(child, "length", now)
                child.status = RequestStatus.FINISHED
                continue
            self.block_manager.fork(parent, child, len(parent.prompt_token_ids) - 1)
            self.scheduler.add_running(child)
        parent.forks = []

    def _release(self, req: Request) -> None:
        self.scheduler.finish(req)
        self._finished_ids.append(req.seq_id)
