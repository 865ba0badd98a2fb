"""Logit processing on the sampling rank: logit bias, min_tokens, and the repetition, frequency
and presence penalties (definitions in `SamplingParams`), vectorised over a step's rows.

Per request the sampling rank keeps a row of token counts over its output and a row of
tokens seen in its prompt or output, updated with each step's tokens rather than
recounted; they live in two tensors `[slots, vocab]` that grow as requests arrive, so a
step gathers its rows with one index. Only requests that ask for processing get a slot,
and state goes when the controller says the request ended (`StepPlan.finished_seq_ids`).
"""

from __future__ import annotations

import torch

from llm_infer.runtime.step_plan import SamplingBatch


class LogitsProcessorState:
    def __init__(self, vocab_size: int, device: torch.device):
        self.vocab_size, self.device = vocab_size, device
        self.slot_of: dict[int, int] = {}
        self._free: list[int] = []
        self.counts = torch.zeros(0, vocab_size, dtype=torch.int32, device=device)  # output token counts
        self.seen = torch.zeros(0, vocab_size, dtype=torch.bool, device=device)  # in prompt or output
        self.bias: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # slot -> (token ids, values)

    def add(self, seq_id: int, prompt_ids: list[int], logit_bias: dict[int, float]) -> None:
        """Start tracking a request (its prompt's tokens count as seen for the repetition penalty)."""
        if seq_id in self.slot_of:
            return
        if not self._free:
            grow = max(8, self.counts.shape[0])
            start = self.counts.shape[0]
            self.counts = torch.cat([self.counts, self.counts.new_zeros(grow, self.vocab_size)])
            self.seen = torch.cat([self.seen, self.seen.new_zeros(grow, self.vocab_size)])
            self._free = list(range(start + grow - 1, start - 1, -1))
        slot = self._free.pop()
        self.slot_of[seq_id] = slot
        self.counts[slot].zero_()
        self.seen[slot].zero_()
        if prompt_ids:
            self.seen[slot, torch.tensor(prompt_ids, device=self.device)] = True
        if logit_bias:
            ids = torch.tensor(list(logit_bias), dtype=torch.int64, device=self.device)
            self.bias[slot] = ids, torch.tensor(list(logit_bias.values()), dtype=torch.float32, device=self.device)

    def record(self, seq_ids: list[int], tokens: list[list[int]]) -> None:
        """Count the tokens each tracked request appended this step."""
        slots = [self.slot_of[s] for s, toks in zip(seq_ids, tokens) for _ in toks if s in self.slot_of]
        if not slots:
            return
        flat = [t for s, toks in zip(seq_ids, tokens) if s in self.slot_of for t in toks]
        index = (torch.tensor(slots, device=self.device), torch.tensor(flat, device=self.device))
        self.counts.index_put_(index, torch.ones(len(flat), dtype=torch.int32, device=self.device), accumulate=True)
        self.seen[index] = True

    def forget(self, seq_ids: list[int]) -> None:
        for seq_id in seq_ids:
            slot = self.slot_of.pop(seq_id, None)
            if slot is not None:
                self.bias.pop(slot, None)
                self._free.append(slot)

    def process(self, logits: torch.Tensor, seq_ids: list[int], rows: list[int], batch: SamplingBatch,
                earlier: list[list[int]] | None = None, offsets: list[int] | None = None) -> torch.Tensor:
        """The processed copy of `logits` `[R, vocab]` (float32). Row r belongs to request
        `seq_ids[r]` with parameters `batch` row `rows[r]`; `earlier[r]` are tokens appended
        before it within this step (speculative proposals) and `offsets[r]` how many (for
        min_tokens). Rows of requests that ask for no processing come back unchanged."""
        todo = [r for r, b in enumerate(rows) if batch.process[b]]
        if not todo:
            return logits
        sub = logits[todo].float()  # a copy: the raw logits stay as they are (logprobs report them)
        params = [rows[r] for r in todo]
        slots = torch.tensor([self.slot_of[seq_ids[r]] for r in todo], device=self.device)
        biased = [(j, self.bias[int(slot)]) for j, slot in enumerate(slots.tolist()) if slot in self.bias]
        if biased:
            row_idx = torch.cat([torch.full((len(ids),), j, device=self.device) for j, (ids, _) in biased])
            sub.index_put_((row_idx, torch.cat([ids for _, (ids, _) in biased])),
                           torch.cat([v for _, (_, v) in biased]), accumulate=True)
        counts, seen = self.counts[slots], self.seen[slots]
        extra = [(j, t) for j, r in enumerate(todo) for t in (earlier[r] if earlier else [])]
        if extra:
            index = (torch.tensor([j for j, _ in extra], device=self.device),
                     torch.tensor([t for _, t in extra], device=self.device))
            counts.index_put_(index, torch.ones(len(extra), dtype=torch.int32, device=self.device), accumulate=True)
            seen[index] = True
        # Penalties touch only the tokens seen or counted (a few hundred per row, not the vocabulary).
        rep = [batch.repetition_penalty[b] for b in params]
        if any(r != 1.0 for r in rep):
            r_idx, t_idx = seen.nonzero(as_tuple=True)
            values, factor = sub[r_idx, t_idx], torch.tensor(rep, device=self.device)[r_idx]
            sub[r_idx, t_idx] = torch.where(values > 0, values / factor, values * factor)
        freq = [batch.frequency_penalty[b] for b in params]
        pres = [batch.presence_penalty[b] for b in params]
        if any(freq) or any(pres):
            r_idx, t_idx = counts.nonzero(as_tuple=True)
            sub[r_idx, t_idx] -= (torch.tensor(freq, device=self.device)[r_idx] * counts[r_idx, t_idx]
                                  + torch.tensor(pres, device=self.device)[r_idx])
        masked = [(j, t) for j, (r, b) in enumerate(zip(todo, params))
                  if (offsets[r] if offsets else 0) < batch.min_tokens_left[b] for t in batch.suppress[b]]
        if masked:
            sub[[j for j, _ in masked], [t for _, t in masked]] = float("-inf")
        if len(todo) == len(rows):
            return sub
        out = logits.float().clone()
        out[todo] = sub
        return out
