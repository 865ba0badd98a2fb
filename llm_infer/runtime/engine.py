"""The controller loop: admit requests, schedule a step, execute it, post-process.

The engine owns scheduling, tokenization and per-request state; it hands one
`StepPlan` per step to the executor and gets sampled tokens back. With
pipeline stages it keeps up to `executor.max_inflight` steps (micro-batches of
disjoint sequences) in flight, so every stage has work: each `step()` tops the
pipeline up, then finishes the oldest step.
"""

from __future__ import annotations

import itertools
import random
import time
from collections import deque
from dataclasses import dataclass, field

import torch

from llm_infer.config import EngineConfig
from llm_infer.errors import UserError
from llm_infer.runtime.block_manager import BlockManager
from llm_infer.runtime.detokenizer import IncrementalDetokenizer
from llm_infer.runtime.executor import Executor
from llm_infer.runtime.models.model_config import ModelConfig
from llm_infer.runtime.outputs import RequestMetrics, RequestOutput
from llm_infer.runtime.sampling_params import SamplingParams
from llm_infer.runtime.scheduler import Scheduler
from llm_infer.runtime.sequence import Sequence
from llm_infer.runtime.speculative.planner import SpecPlanner
from llm_infer.runtime.step_plan import StepPlan, build_step_plan
from llm_infer.runtime.stop_checker import find_stop_string, partial_stop_suffix, token_stop_reason
from llm_infer.runtime.tokenizer import Tokenizer


@dataclass
class _Request:
    seq: Sequence
    prompt: str | None
    detok: IncrementalDetokenizer
    text: str = ""
    streamed: int = 0  # characters of `text` already reported as new_text
    logits: list[torch.Tensor] = field(default_factory=list)
    logits_len: int = 0


@dataclass
class EngineStats:
    steps: int = 0
    prefill_tokens: int = 0  # tokens computed by prefill (including recomputation)
    decode_tokens: int = 0
    last_worker_time_s: float = 0.0  # sampling rank's time for the last finished step
    last_comm_time_s: float = 0.0


class LLMEngine:
    def __init__(self, config: EngineConfig, executor: Executor, tokenizer: Tokenizer, model_config: ModelConfig):
        self.config = config
        self.executor = executor
        self.tokenizer = tokenizer
        self.model_config = model_config
        self.max_model_len = model_config.max_model_len(config.scheduler.max_model_len)
        self.eos_token_ids = sorted(set(tokenizer.eos_token_ids) | set(model_config.eos_token_ids))
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
        self.scheduler = Scheduler(config.scheduler, self.block_manager)
        self.stats = EngineStats()
        self._rng = random.Random(config.seed)
        self._ids = itertools.count()
        self._requests: dict[str, _Request] = {}
        self._inflight: deque[tuple[list[tuple[Sequence, int]], StepPlan]] = deque()
        self._busy: set[int] = set()
        self.spec = SpecPlanner(config.speculative, self.max_model_len) if config.speculative.method else None

    def add_request(self, prompt: str | list[int], params: SamplingParams | None = None,
                    request_id: str | None = None, return_logits: bool = False) -> str:
        params = params or SamplingParams()
        if isinstance(prompt, str):
            text, ids = prompt, self.tokenizer.encode(prompt)
        else:
            text, ids = None, [int(t) for t in prompt]
        self._check_prompt(ids)
        seq_id = next(self._ids)
        request_id = request_id if request_id is not None else str(seq_id)
        if request_id in self._requests:
            raise UserError(f"request id {request_id!r} is already in use")
        seed = params.seed if params.seed is not None else self._rng.getrandbits(63)
        seq = Sequence(seq_id, request_id, ids, params, seed, return_logits)
        self._requests[request_id] = _Request(seq, text, IncrementalDetokenizer(self.tokenizer, ids))
        self.scheduler.add(seq)
        return request_id

    def _check_prompt(self, ids: list[int]) -> None:
        if not ids:
            raise UserError("the prompt is empty")
        if len(ids) >= self.max_model_len:
            raise UserError(f"the prompt has {len(ids)} tokens; max_model_len is {self.max_model_len} "
                            "(prompt and at least one new token must fit)")
        vocab = self.model_config.vocab_size
        bad = next((t for t in ids if not 0 <= t < vocab), None)
        if bad is not None:
            raise UserError(f"token id {bad} is outside the vocabulary (size {vocab})")

    def has_unfinished(self) -> bool:
        return self.scheduler.has_unfinished()

    def abort(self, request_id: str) -> None:
        req = self._requests.pop(request_id, None)
        if req is not None and not req.seq.finished:
            req.seq.finish_reason = "abort"
            self.scheduler.finish(req.seq)
            if self.spec is not None:
                self.spec.forget(req.seq)

    def step(self) -> list[RequestOutput]:
        """Run one step; return an update for every request that produced a token or finished."""
        self._fill_pipeline()
        if not self._inflight:
            if self.scheduler.has_unfinished():
                raise RuntimeError("scheduler made no progress although requests are waiting")
            return []
        scheduled, plan = self._inflight.popleft()
        result = self.executor.collect()
        self._busy.difference_update(seq.seq_id for seq, _ in scheduled)
        return self._process(scheduled, plan, result)

    def _fill_pipeline(self) -> None:
        depth = self.executor.max_inflight
        while len(self._inflight) < depth:
            # Split the work into `depth` micro-batches so every stage gets a share.
            active = len(self.scheduler.running) + len(self.scheduler.waiting)
            cap = -(-active // depth) if depth > 1 else None
            lookahead = self.spec.lookahead if self.spec is not None else None
            scheduled = self.scheduler.schedule(busy=self._busy, max_seqs=cap, lookahead=lookahead)
            if not scheduled:
                return
            plan = build_step_plan(scheduled, self.stats.steps, self.spec)
            plan.block_copies = self.block_manager.take_copies()
            self.stats.steps += 1
            self.executor.submit(plan)
            self._inflight.append((scheduled, plan))
            self._busy.update(seq.seq_id for seq, _ in scheduled)

    def _process(self, scheduled: list[tuple[Sequence, int]], plan: StepPlan, result) -> list[RequestOutput]:
        now = time.perf_counter()
        self.stats.last_worker_time_s = result.worker_time_s
        self.stats.last_comm_time_s = result.comm_time_s
        if result.accepted is not None:
            return self._process_speculative(scheduled, plan, result, now)
        sampled = iter(result.sampled)
        outputs = []
        for (seq, _), n, samples in zip(scheduled, plan.query_lens, plan.sample):
            token = next(sampled) if samples else None
            req = self._requests.get(seq.request_id)
            if req is None or req.seq is not seq:  # aborted while its step was in flight
                continue
            if seq.first_scheduled_time is None:
                seq.first_scheduled_time = now
            if seq.num_pending_tokens == 1 and n == 1 and seq.output_token_ids:
                self.stats.decode_tokens += 1
            else:
                self.stats.prefill_tokens += n
            if seq.seq_id in result.logits:
                self._keep_logits(req, seq.num_computed_tokens, result.logits[seq.seq_id])
            seq.num_computed_tokens += n
            self.block_manager.register(seq)
            if samples:
                outputs.append(self._append_token(req, token, now))
        return outputs

    def _process_speculative(self, scheduled: list[tuple[Sequence, int]], plan: StepPlan, result,
                             now: float) -> list[RequestOutput]:
        """Append each sequence's accepted tokens, and roll its KV back to what they cover."""
        spec = self.spec.stats
        spec.steps += 1
        spec.draft_time_s += result.draft_time_s
        spec.verify_time_s += result.verify_time_s
        outputs = []
        for i, (seq, _) in enumerate(scheduled):
            req = self._requests.get(seq.request_id)
            if req is None or req.seq is not seq:
                continue
            if seq.first_scheduled_time is None:
                seq.first_scheduled_time = now
            n, tokens, proposed = plan.query_lens[i], result.accepted[i], plan.spec.num_draft[i]
            if seq.seq_id in result.logits:
                self._keep_logits(req, seq.num_computed_tokens, result.logits[seq.seq_id])
            length_before = seq.num_tokens
            # The pending token and the accepted proposals are now in the cache; the rest is stale.
            seq.num_computed_tokens += n - proposed + max(0, len(tokens) - 1)
            if plan.sample[i] and proposed:
                self.spec.record(seq, proposed, length_before, len(tokens))
            if not tokens:
                self.stats.prefill_tokens += n
                continue
            self.stats.decode_tokens += len(tokens)
            update = None
            for token in tokens:
                update = self._append_token(req, token, now, combine=update)
                if update.finished:
                    break
            if not seq.finished:
                self.block_manager.register(seq)
                self.block_manager.trim(seq, seq.num_computed_tokens)
            outputs.append(update)
        return outputs

    def _keep_logits(self, req: _Request, start: int, rows: torch.Tensor) -> None:
        # A preempted sequence recomputes from position 0: drop what it had from `start` on.
        while req.logits_len > start:
            last = req.logits.pop()
            req.logits_len -= last.shape[0]
            if req.logits_len < start:
                req.logits.append(last[: start - req.logits_len])
                req.logits_len = start
        req.logits.append(rows)
        req.logits_len += rows.shape[0]

    def _append_token(self, req: _Request, token: int, now: float,
                      combine: RequestOutput | None = None) -> RequestOutput:
        """Append one token; `combine` (an earlier update of this step) is merged into the result."""
        seq = req.seq
        seq.output_token_ids.append(token)
        if seq.first_token_time is None:
            seq.first_token_time = now
        reason = token_stop_reason(seq.params, token, len(seq.output_token_ids), seq.num_tokens,
                                   self.eos_token_ids, self.max_model_len)
        delta = req.detok.add(token) if reason is None else req.detok.add(token) + req.detok.flush()
        req.text += delta
        stops = seq.params.stop
        if stops and delta:
            at = find_stop_string(req.text, stops, len(delta))
            if at is not None:
                req.text, reason = req.text[:at], "stop"
        if reason is not None:
            seq.finish_reason = reason
            seq.finish_time = now
            self.scheduler.finish(seq)
            del self._requests[seq.request_id]
            if self.spec is not None:
                self.spec.forget(seq)
        visible = len(req.text) if reason is not None else len(req.text) - partial_stop_suffix(req.text, stops)
        new_text = req.text[req.streamed : visible]
        req.streamed = max(req.streamed, visible)
        return self._output(req, (combine.new_text if combine is not None else "") + new_text)

    def _output(self, req: _Request, new_text: str) -> RequestOutput:
        seq = req.seq
        metrics = RequestMetrics(seq.arrival_time, seq.first_scheduled_time, seq.first_token_time, seq.finish_time,
                                 len(seq.prompt_token_ids), len(seq.output_token_ids), seq.num_preemptions)
        logits = torch.cat(req.logits) if (seq.finished and req.logits) else None
        return RequestOutput(seq.request_id, req.prompt, seq.prompt_token_ids, req.text,
                             list(seq.output_token_ids), seq.finished, seq.finish_reason, new_text, metrics, logits)

