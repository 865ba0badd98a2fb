"""Logits -> tokens, with per-row temperature, top-k, top-p, min-p and seed.

Each random draw comes from a generator seeded by (request seed, output
index), so a seeded request samples the same tokens whether it runs alone,
in a batch, or is preempted and recomputed. Sampling uses the exponential
race (argmax of p / E with E ~ Exp(1)), which draws exactly from p.
"""

from __future__ import annotations

import torch

from llm_infer.runtime.step_plan import SamplingBatch

_MASK64 = (1 << 64) - 1
PURPOSES = 4  # 0: the token itself; speculative decoding's extra draws use 1..3


def _mix64(x: int) -> int:
    """A 64-bit integer hash (splitmix64's finaliser)."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def draw_seed(seed: int, output_index: int, purpose: int = 0) -> int:
    """The generator seed of one draw: (request seed, output index, purpose). torch's CPU
    generator keeps only the low 32 bits of a seed, so the seed is 32 bits, and within one
    request distinct (index, purpose) pairs give distinct seeds (a bijection of index*4+purpose)."""
    return (_mix64(seed) ^ (output_index * PURPOSES + purpose)) & 0xFFFFFFFF


def draw(probs: torch.Tensor, seed: int) -> int:
    """One token from `probs` (a 1-D distribution), by the exponential race seeded with `seed`."""
    gen = torch.Generator(device=probs.device).manual_seed(seed)
    noise = torch.empty_like(probs).exponential_(generator=gen).clamp_(min=torch.finfo(probs.dtype).tiny)
    return int((probs / noise).argmax())


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
        """logits: float32 `[rows, vocab]`, one row per entry of `batch`."""
        greedy = logits.argmax(dim=-1)
        if batch.all_greedy:
            return greedy.tolist()
        rows = [i for i, t in enumerate(batch.temperature) if t > 0]
        sub = select_rows(batch, rows)
        probs = self.probs(logits[rows], sub)
        noise = torch.empty_like(probs)
        for j, (seed, index) in enumerate(zip(sub.seeds, sub.output_index)):
            gen = torch.Generator(device=probs.device).manual_seed(draw_seed(seed, index))
            noise[j].exponential_(generator=gen)
        sampled = (probs / noise.clamp_(min=torch.finfo(noise.dtype).tiny)).argmax(dim=-1)
        out = greedy.tolist()
        for j, i in enumerate(rows):
            out[i] = int(sampled[j])
        return out


def select_rows(batch: SamplingBatch, rows: list[int]) -> SamplingBatch:
    """The batch's entries at `rows` (repeats allowed), as a batch."""
    return SamplingBatch(*([getattr(batch, f)[i] for i in rows] for f in
                           ("temperature", "top_k", "top_p", "min_p", "seeds", "output_index")))


def per_sequence(batch: SamplingBatch, samples: list[bool]) -> dict[int, SamplingBatch]:
    """Each sampling sequence's parameters as a one-row batch, keyed by its index in the plan
    (`batch` holds one row per sequence whose `samples` is true, in order)."""
    rows = [i for i, sample in enumerate(samples) if sample]
    return {i: select_rows(batch, [row]) for row, i in enumerate(rows)}

