"""Logits -> tokens: the one place where a step's logits become the tokens it appends.

Per-row temperature, top-k, top-p, min-p and seed. Each random draw comes from a
generator seeded by (request seed, output index) (`random_draws.py`), so a seeded
request samples the same tokens whether it runs alone, in a batch, or is preempted
and recomputed. A request verifying speculative proposals keeps the accepted prefix
plus one token by the rejection rule (`speculative/rejection.py`); plain decoding is
the case with no proposals. Order per row: processing (bias, min_tokens, penalties) ->
output constraint (grammar / reasoning gate bitmask, `structured_output/`) -> temperature
and filters -> draw.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import fields

import torch

from llm_infer.runtime.logits_processors import LogitsProcessorState
from llm_infer.runtime.logprobs import token_logprobs
from llm_infer.runtime.outputs import TokenLogprob
from llm_infer.runtime.random_draws import draw_seed, exponential_noise
from llm_infer.runtime.speculative.rejection import verify_greedy, verify_sampled
from llm_infer.runtime.structured_output.compiler import GrammarCompiler
from llm_infer.runtime.structured_output.constraint import ConstraintState
from llm_infer.runtime.step_plan import SamplingBatch, StepPlan

def apply_top_k(logits: torch.Tensor, top_k: torch.Tensor) -> torch.Tensor:
    """Keep the `k` largest logits of each row (k == 0 keeps all); ties at the k-th value are kept."""
    k = torch.where(top_k > 0, top_k, logits.shape[-1]).clamp(max=logits.shape[-1])
    kth = logits.sort(dim=-1, descending=True).values.gather(-1, (k - 1).unsqueeze(-1))
    return logits.masked_fill(logits < kth, float("-inf"))


def apply_top_p(logits: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """Keep the smallest set of most likely tokens whose probability reaches `top_p`."""
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    probs = sorted_logits.softmax(dim=-1)
    before = probs.cumsum(dim=-1) - probs  # mass of strictly more likely tokens
    drop_sorted = before >= top_p.unsqueeze(-1)
    drop_sorted[:, 0] = False
    drop = torch.zeros_like(drop_sorted).scatter_(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def apply_min_p(logits: torch.Tensor, min_p: torch.Tensor) -> torch.Tensor:
    """Drop tokens whose probability is below `min_p` times the most likely token's."""
    probs = logits.softmax(dim=-1)
    threshold = min_p.unsqueeze(-1) * probs.max(dim=-1, keepdim=True).values
    return logits.masked_fill(probs < threshold, float("-inf"))


class Sampler:
    def __init__(self, grammar_compiler: Callable[[], GrammarCompiler] | None = None) -> None:
        """`grammar_compiler` makes the model's grammar compiler (called when a request first
        needs one)."""
        self.state: LogitsProcessorState | None = None  # made when a request first asks for processing
        self.constraints = ConstraintState(grammar_compiler)

    def probs(self, logits: torch.Tensor, batch: SamplingBatch) -> torch.Tensor:
        """The distribution each (non-greedy) row samples from, after all filters."""
        device = logits.device
        temperature = torch.tensor(batch.temperature, device=device, dtype=torch.float32)
        logits = logits / temperature.clamp(min=1e-6).unsqueeze(-1)
        if any(k > 0 for k in batch.top_k):
            logits = apply_top_k(logits, torch.tensor(batch.top_k, device=device))
        if any(p < 1.0 for p in batch.top_p):
            logits = apply_top_p(logits, torch.tensor(batch.top_p, device=device, dtype=torch.float32))
        if any(p > 0.0 for p in batch.min_p):
            logits = apply_min_p(logits, torch.tensor(batch.min_p, device=device, dtype=torch.float32))
        return logits.softmax(dim=-1)

    def __call__(self, logits: torch.Tensor, batch: SamplingBatch) -> list[int]:
        """One token per row: logits float32 `[rows, vocab]`, one row per entry of `batch`."""
        return self.sample_tokens(logits, batch).tolist()  # one device-to-host copy, not one per row

    def sample_tokens(self, logits: torch.Tensor, batch: SamplingBatch) -> torch.Tensor:
        """As `__call__`, but the tokens stay where the logits are: int64 `[rows]`, no host sync."""
        greedy = logits.argmax(dim=-1)
        if batch.all_greedy:
            return greedy
        rows = [i for i, t in enumerate(batch.temperature) if t > 0]
        sub = select_rows(batch, rows)
        probs = self.probs(logits[rows], sub)
        noise = torch.empty_like(probs)
        for j, (seed, index) in enumerate(zip(sub.seeds, sub.output_index)):
            exponential_noise(noise[j], torch.Generator(device=probs.device).manual_seed(draw_seed(seed, index)))
        sampled = (probs / noise).argmax(dim=-1)
        if len(rows) == len(batch.temperature):
            return sampled
        return greedy.index_copy_(0, torch.tensor(rows, device=logits.device), sampled)

    def sample_step(self, plan: StepPlan, logits: torch.Tensor, spans: list[tuple[int, int]],
                    proposals: list[list[int]], draft_probs: list[torch.Tensor | None]
                    ) -> tuple[list[list[int]], list[list[TokenLogprob]] | None]:
        """Per request of the plan, the tokens it appends: none when it does not sample; one sampled
        token without proposals (all such rows in one batched call); else the accepted prefix of
        its `proposals` plus one token. `logits` float32 `[rows, vocab]`, request i's rows at
        `spans[i]` (its proposals' and the row before them last); `draft_probs[i]`: the draft's
        distributions `[k, vocab]` at its proposals (None: greedy, or a deterministic proposer).
        Logits are processed (bias, min_tokens, penalties) before the draw or the acceptance
        test, per position for proposals. Also returns the appended tokens' scores for requests
        that asked for logprobs (None when none did)."""
        batch, params = plan.sampling, per_sequence(plan.sampling, plan.sample)
        if batch.first_seen:
            if self.state is None:
                self.state = LogitsProcessorState(logits.shape[-1], logits.device)
            for row, (prompt_ids, bias, output_ids) in batch.first_seen.items():
                seq_id = plan.seq_ids[self._request_of(params, row)]
                self.state.add(seq_id, prompt_ids, bias)
                if output_ids:  # new workers after a restart: count what was generated before
                    self.state.record([seq_id], [output_ids])
        for row, (spec, output_ids) in batch.constraints.items():
            seq_id = plan.seq_ids[self._request_of(params, row)]
            self.constraints.add(seq_id, spec)
            self.constraints.advance([seq_id], [output_ids])  # nonempty only on new workers after a restart
        out: list[list[int]] = [[] for _ in plan.seq_ids]
        plain = [i for i, s in enumerate(plan.sample) if s and not proposals[i]]
        if plain:
            rows = [spans[i][1] - 1 for i in plain]
            sub = batch if len(plain) == len(params) else select_rows(batch, [params[i] for i in plain])
            scores = self._process(logits[rows], [plan.seq_ids[i] for i in plain], [params[i] for i in plain], batch)
            if any(batch.constrained[params[i]] for i in plain):
                scores = self.constraints.mask(scores, [plan.seq_ids[i] for i in plain])
            for i, token in zip(plain, self(scores, sub)):
                out[i] = [token]
        for i, draft in enumerate(proposals):
            if not draft or not plan.sample[i]:
                continue
            row, k = params[i], len(draft)
            target = self._process(logits[spans[i][1] - 1 - k : spans[i][1]], [plan.seq_ids[i]] * (k + 1),
                                   [row] * (k + 1), batch, [draft[:j] for j in range(k + 1)], list(range(k + 1)))
            if batch.constrained[row]:
                target = self.constraints.mask(target, [plan.seq_ids[i]], [draft])
            if batch.temperature[row] == 0:
                out[i] = verify_greedy(target, draft)
            else:
                p = self.probs(target, select_rows(batch, [row] * len(target)))
                out[i] = verify_sampled(p, draft, draft_probs[i], batch.seeds[row], batch.output_index[row])
        if self.state is not None:
            self.state.record(plan.seq_ids, out)
        if self.constraints.by_seq:
            self.constraints.advance(plan.seq_ids, out)
        return out, self._logprobs(plan, logits, spans, proposals, params, out)

    def _process(self, logits: torch.Tensor, seq_ids: list[int], rows: list[int], batch: SamplingBatch,
                 earlier: list[list[int]] | None = None, offsets: list[int] | None = None) -> torch.Tensor:
        if self.state is None or not any(batch.process[r] for r in rows):
            return logits
        return self.state.process(logits, seq_ids, rows, batch, earlier, offsets)

    @staticmethod
    def _request_of(params: dict[int, int], row: int) -> int:
        return next(i for i, r in params.items() if r == row)

    @staticmethod
    def _logprobs(plan: StepPlan, logits: torch.Tensor, spans: list[tuple[int, int]], proposals: list[list[int]],
                  params: dict[int, int], out: list[list[int]]) -> list[list[TokenLogprob]] | None:
        """Scores of each appended token from the raw logits of the row that produced it."""
        wanted = [i for i, toks in enumerate(out) if toks and plan.sampling.logprobs[params[i]] >= 0]
        if not wanted:
            return None
        rows, tokens, top = [], [], []
        for i in wanted:
            first = spans[i][1] - 1 - len(proposals[i])
            rows += range(first, first + len(out[i]))
            tokens += out[i]
            top += [plan.sampling.logprobs[params[i]]] * len(out[i])
        scores = iter(token_logprobs(logits[rows], tokens, top))
        result: list[list[TokenLogprob]] = [[] for _ in plan.seq_ids]
        for i in wanted:
            result[i] = [next(scores) for _ in out[i]]
        return result

    def forget(self, seq_ids: list[int]) -> None:
        """Drop the processing and constraint state of requests that ended."""
        if self.state is not None:
            self.state.forget(seq_ids)
        self.constraints.forget(seq_ids)


def select_rows(batch: SamplingBatch, rows: list[int]) -> SamplingBatch:
    """The batch's per-row entries at `rows` (repeats allowed), as a batch."""
    n = len(batch.temperature)
    picked = {f.name: [getattr(batch, f.name)[i] for i in rows] for f in fields(SamplingBatch)
              if isinstance(getattr(batch, f.name), list) and len(getattr(batch, f.name)) == n}
    return SamplingBatch(**picked)


def per_sequence(batch: SamplingBatch, samples: list[bool]) -> dict[int, int]:
    """Request index in the plan -> its row in `batch` (which holds one row per request whose
    `samples` is true, in order)."""
    return {i: row for row, i in enumerate(i for i, sample in enumerate(samples) if sample)}
