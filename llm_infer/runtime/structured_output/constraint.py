"""Per-request output constraints on the sampling rank: the grammar matcher and the reasoning gate.

One state machine per request:

    undecided --(first token <think>)--> reasoning
        └──────(any other first token: the grammar's first token)--> answer
    reasoning --(</think> sampled, or forced when thinking_budget tokens were generated)--> answer
    answer: every token must be allowed by the grammar (when there is one); once the grammar is
            complete only end-of-sequence tokens are allowed

A request starts in `reasoning` when its prompt opened the reasoning, `undecided` when the
prompt neither opened nor closed it and the reply may open it itself (Qwen3's hybrid template:
the model writes `<think>` first, or answers at once as Qwen3-Instruct-2507 does), `answer`
otherwise. While undecided, the allowed tokens are the grammar's plus `<think>`. The grammar
never sees reasoning tokens. Each step the sampling rank fills one bitmask row per sampled position (bit t of word w
allows token 32w + t), applies it to the processed logits, samples, and advances the state with
the tokens appended. Speculative proposals are checked by advancing through them to fill each
position's row, then rolled back; rejected tokens therefore never reach the matcher.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from llm_infer.runtime.structured_output.compiler import GrammarCompiler
from llm_infer.runtime.structured_output.params import ConstraintSpec


class RequestConstraint:
    def __init__(self, spec: ConstraintSpec, compiler: GrammarCompiler | None):
        self.matcher = compiler.matcher(spec.grammar) if spec.grammar is not None else None
        self.end_id = spec.reasoning_end_id
        self.in_reasoning = spec.in_reasoning and spec.reasoning_end_id is not None
        # Undecided: the token that opens the reasoning when it comes first (None once decided).
        self.start_id = spec.reasoning_start_id if not self.in_reasoning and self.end_id is not None else None
        self.budget = spec.thinking_budget
        self.reasoning_tokens = 0
        self.eos_token_ids = compiler.eos_token_ids if compiler is not None else []
        # Per accepted token: (consumed by the matcher, in_reasoning, reasoning_tokens, start_id), the
        # last three as they were before it.
        self._history: list[tuple[bool, bool, int, int | None]] = []

    def fill(self, row: torch.Tensor) -> bool:
        """Write the tokens allowed at the next position into `row` (int32 `[ceil(vocab / 32)]`).
        Returns False (row untouched) when every token is allowed."""
        if self.in_reasoning:
            if self.budget is None or self.reasoning_tokens < self.budget:
                return False
            _allow_only(row, [self.end_id])
            return True
        if self.matcher is None:
            return False
        if self.matcher.is_error():  # cannot happen for tokens this module allowed; end the request cleanly
            _allow_only(row, self.eos_token_ids)
            return True
        self.matcher.unsafe_compute_mask_ptr(row.data_ptr(), row.numel() * row.element_size())
        if self.start_id is not None:
            _allow(row, self.start_id)
        return True

    def accept(self, token: int) -> bool:
        """Advance past `token`. Returns False, changing nothing, when the state does not allow it."""
        before = (self.in_reasoning, self.reasoning_tokens, self.start_id)
        if self.start_id is not None:
            if token == self.start_id:
                self.start_id, self.in_reasoning = None, True
                self._history.append((False, *before))
                return True
            self.start_id = None
        if self.in_reasoning:
            if self.budget is not None and self.reasoning_tokens >= self.budget and token != self.end_id:
                return False
            self._history.append((False, *before))
            if token == self.end_id:
                self.in_reasoning = False
            else:
                self.reasoning_tokens += 1
            return True
        consumed = self.matcher is not None
        if consumed and self.matcher.is_stopped() and token in self.eos_token_ids:
            consumed = False  # another end token after the match ended (ignore_eos): the only ones allowed
        elif consumed and self.matcher.try_consume_tokens([token]) != 1:
            self.start_id = before[2]
            return False
        self._history.append((consumed, *before))
        return True

    def rollback(self, n: int) -> None:
        """Undo the last `n` accepted tokens."""
        consumed = 0
        for _ in range(n):
            by_matcher, self.in_reasoning, self.reasoning_tokens, self.start_id = self._history.pop()
            consumed += by_matcher
        if consumed:
            self.matcher.rollback(consumed)

    def fill_proposals(self, rows: torch.Tensor, draft: list[int]) -> list[bool]:
        """Rows for the positions verifying `draft` (`rows` `[len(draft) + 1, words]`): position j's
        row assumes draft[:j] was accepted. Positions after a proposal the state does not allow
        are left unconstrained (verification rejects that proposal, so they are never used)."""
        constrained, accepted = [False] * len(rows), 0
        for j in range(len(rows)):
            constrained[j] = self.fill(rows[j])
            if j == len(draft) or not self.accept(draft[j]):
                break
            accepted += 1
        self.rollback(accepted)
        return constrained


def _allow_only(row: torch.Tensor, token_ids: list[int]) -> None:
    row.zero_()
    for t in token_ids:
        _allow(row, t)


def _allow(row: torch.Tensor, token_id: int) -> None:
    row[token_id // 32] |= _bit(token_id % 32)


def _bit(i: int) -> int:
    return (1 << i) - (1 << 32 if i == 31 else 0)  # bit 31 as a negative int32


# byte value -> its 8 bits, least significant first (the bitmask is little-endian int32 words)
_BYTE_BITS = ((torch.arange(256).unsqueeze(-1) >> torch.arange(8)) & 1).bool()


def apply_token_bitmask(logits: torch.Tensor, bitmask: torch.Tensor) -> None:
    """Set the logits of disallowed tokens to -inf, in place. `logits` float `[rows, vocab]`,
    `bitmask` int32 `[rows, ceil(vocab / 32)]` on the CPU. Reference: llguidance's
    `apply_token_bitmask_inplace` (same bit layout), written without torch.compile."""
    vocab = logits.shape[-1]
    allowed = _BYTE_BITS[bitmask.view(torch.uint8).long()].flatten(1)[:, :vocab]
    logits.masked_fill_(~allowed.to(logits.device), float("-inf"))


class ConstraintState:
    """The sampling rank's constraints, by request (`seq_id`), made when a request first samples
    and dropped when the controller says it ended."""

    def __init__(self, compiler_factory: Callable[[], GrammarCompiler] | None):
        self._compiler_factory = compiler_factory
        self._compiler: GrammarCompiler | None = None
        self.by_seq: dict[int, RequestConstraint] = {}

    def add(self, seq_id: int, spec: ConstraintSpec) -> None:
        if spec.grammar is not None and self._compiler is None:
            self._compiler = self._compiler_factory()
        self.by_seq[seq_id] = RequestConstraint(spec, self._compiler)

    def forget(self, seq_ids: list[int]) -> None:
        for seq_id in seq_ids:
            self.by_seq.pop(seq_id, None)

    def mask(self, logits: torch.Tensor, seq_ids: list[int], drafts: list[list[int]] | None = None) -> torch.Tensor:
        """`logits` `[rows, vocab]` with disallowed tokens at -inf (a copy when any row is
        constrained). Row r belongs to `seq_ids[r]`; with `drafts`, consecutive rows of one
        request verify its proposals (`len(draft) + 1` rows each, one entry per request)."""
        vocab = max(logits.shape[-1], self._compiler.vocab_size if self._compiler is not None else 0)
        words = (vocab + 31) // 32
        bitmask = torch.full((logits.shape[0], words), -1, dtype=torch.int32)
        constrained = [False] * logits.shape[0]
        if drafts is None:
            for r, seq_id in enumerate(seq_ids):
                c = self.by_seq.get(seq_id)
                constrained[r] = c is not None and c.fill(bitmask[r])
        else:
            r = 0
            for seq_id, draft in zip(seq_ids, drafts):
                c = self.by_seq.get(seq_id)
                if c is not None:
                    constrained[r : r + len(draft) + 1] = c.fill_proposals(bitmask[r : r + len(draft) + 1], draft)
                r += len(draft) + 1
        rows = [r for r, c in enumerate(constrained) if c]
        if not rows:
            return logits
        sub = logits[rows].float()  # a copy: the raw logits stay as they are (logprobs report them)
        apply_token_bitmask(sub, bitmask[rows])
        dead = torch.isneginf(sub).all(dim=-1).nonzero().flatten().tolist()
        if dead and self._compiler is not None:  # e.g. min_tokens masked the end a complete grammar allows
            # The processed logits hold -inf there too: give the end tokens equal finite scores.
            eos = torch.tensor([t for t in self._compiler.eos_token_ids if t < sub.shape[-1]], device=logits.device)
            for r in dead:
                sub[r, eos] = 0.0
        if len(rows) == logits.shape[0]:
            return sub
        out = logits.float().clone()
        out[rows] = sub
        return out

    def advance(self, seq_ids: list[int], tokens: list[list[int]]) -> None:
        """Move each tracked request past the tokens it appended this step."""
        for seq_id, toks in zip(seq_ids, tokens):
            c = self.by_seq.get(seq_id)
            for t in toks if c is not None else ():
                if not c.accept(t):  # only if a token came from outside the mask (a bug): stop checking it
                    self.by_seq.pop(seq_id)
                    break
