"""The controller's side of speculative decoding: how many tokens each decoding sequence
proposes, what it proposes (n-gram) or must show the drafter first (draft models), and what
the result does to the sequence's acceptance rate and the drafter's cache.

Adaptive K: each sequence keeps a running acceptance rate a (exponential average of accepted
/ proposed); K is the largest value with a^K >= 0.2, i.e. at least a one-in-five chance that
all K proposals survive, between 1 and num_tokens.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from llm_infer.config import SpeculativeConfig
from llm_infer.runtime.sequence import Sequence
from llm_infer.runtime.speculative.ngram import NgramIndex

_EMA = 0.3
_ALL_ACCEPTED_CHANCE = 0.2


@dataclass
class _State:
    rate: float = 0.7
    ngrams: NgramIndex | None = None
    draft_from: int = 0  # positions below this are in the draft model's cache
    preemptions: int = 0


@dataclass
class SpecStats:
    steps: int = 0
    proposed: int = 0
    accepted: int = 0
    draft_time_s: float = 0.0
    verify_time_s: float = 0.0
    max_emitted: int = 0  # most tokens one sequence emitted in one step (K + 1: all accepted + bonus)

    @property
    def acceptance(self) -> float:
        return self.accepted / self.proposed if self.proposed else 0.0


class SpecPlanner:
    def __init__(self, config: SpeculativeConfig, max_model_len: int):
        self.config = config
        self.max_model_len = max_model_len
        self.stats = SpecStats()
        self._states: dict[int, _State] = {}

    def _state(self, seq: Sequence) -> _State:
        state = self._states.setdefault(seq.seq_id, _State())
        if state.preemptions != seq.num_preemptions:  # recomputed from scratch: so is the draft cache
            state.draft_from, state.preemptions = 0, seq.num_preemptions
        return state

    def lookahead(self, seq: Sequence) -> int:
        """Tokens a decoding sequence proposes this step (0: decode plainly)."""
        if seq.return_logits:
            return 0
        room = min(seq.params.max_tokens - len(seq.output_token_ids), self.max_model_len - seq.num_tokens) - 1
        k = self.config.num_tokens
        if self.config.adaptive:
            rate = min(self._state(seq).rate, 0.999)
            k = 1 if rate <= 0 else max(1, min(k, int(math.log(_ALL_ACCEPTED_CHANCE) / math.log(rate))))
        return max(0, min(k, room))

    def proposal(self, seq: Sequence, k: int) -> tuple[list[int], list[int]]:
        """(tokens placed after the pending token, tokens the drafter must process first)."""
        state = self._state(seq)
        if self.config.method == "ngram":
            if state.ngrams is None:
                state.ngrams = NgramIndex(self.config.ngram_max, self.config.ngram_min)
            state.ngrams.extend(seq.token_ids[len(state.ngrams.tokens) :])
            return state.ngrams.propose(k), []
        if self.config.method == "layers":  # the target's cache already holds every computed token
            return [0] * k, [seq.token_ids[-1]]
        return [0] * k, seq.token_ids[state.draft_from :]

    def record(self, seq: Sequence, proposed: int, length_before: int, emitted: int) -> None:
        """A speculating step of `seq` ended: `emitted` tokens were appended (accepted + 1)."""
        accepted = emitted - 1
        state = self._state(seq)
        if proposed:
            state.rate = (1 - _EMA) * state.rate + _EMA * accepted / proposed
        # The drafter processed the pending token and its first proposed-1 proposals.
        state.draft_from = length_before + min(accepted, proposed - 1) if proposed else state.draft_from
        s = self.stats
        s.proposed += proposed
        s.accepted += accepted
        s.max_emitted = max(s.max_emitted, emitted)

    def forget(self, seq: Sequence) -> None:
        self._states.pop(seq.seq_id, None)
