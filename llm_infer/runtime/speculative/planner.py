"""The controller's side of speculative decoding: how many tokens each request proposes, and
what a finished step means for its proposals, acceptance rate and the drafter's cache.

Proposals are request state (`Request.spec_token_ids`), set when a step's output is
processed and verified in the request's next step: n-gram proposals are looked up here, on
the controller; a draft model's proposals were made by the sampling rank's drafter at the
end of the step and came back in its output. The scheduler then simply gives a request
`num_tokens_with_spec - num_computed_tokens` tokens.

Adaptive K: each request keeps a running acceptance rate a (exponential average of accepted
/ proposed); K is the largest value with a^K >= 0.2, i.e. at least a one-in-five chance that
all K proposals survive, between 1 and num_tokens.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from llm_infer.config import SpeculativeConfig
from llm_infer.runtime.request import Request, SpecState
from llm_infer.runtime.speculative.ngram import NgramIndex

_EMA = 0.3
_ALL_ACCEPTED_CHANCE = 0.2


@dataclass
class SpecStats:
    steps: int = 0
    proposed: int = 0
    accepted: int = 0
    draft_time_s: float = 0.0
    verify_time_s: float = 0.0
    max_emitted: int = 0  # most tokens one request emitted in one step (K + 1: all accepted + bonus)

    @property
    def acceptance(self) -> float:
        return self.accepted / self.proposed if self.proposed else 0.0


class SpecPlanner:
    def __init__(self, config: SpeculativeConfig, max_model_len: int):
        self.config = config
        self.max_model_len = max_model_len
        self.stats = SpecStats()
        # Methods whose proposals come from the sampling rank's drafter (draft, layers).
        self.draft_method = config.method if config.method != "ngram" else None

    def new_state(self, req: Request) -> SpecState:
        state = SpecState()
        if self.draft_method is not None:
            state.num_draft = self.num_tokens(req, state)
        return state

    def num_tokens(self, req: Request, state: SpecState | None = None) -> int:
        """Tokens `req` should propose for its next step (0: decode plainly)."""
        if req.return_logits or req.params.max_tokens == 0:
            return 0
        room = min(req.params.max_tokens - len(req.output_token_ids), self.max_model_len - req.num_tokens) - 1
        k = self.config.num_tokens
        if self.config.adaptive:
            rate = min((state or req.spec).rate, 0.999)
            k = 1 if rate <= 0 else max(1, min(k, int(math.log(_ALL_ACCEPTED_CHANCE) / math.log(rate))))
        return max(0, min(k, room))

    def after_step(self, req: Request, proposed: int, appended: int, drafted: list[int] | None) -> None:
        """`req`'s step verified `proposed` tokens and appended `appended` (accepted + 1); the
        drafter proposed `drafted` for the next step (None: no drafter ran). Sets the proposals
        and drafter budget of its next step."""
        state = req.spec
        req.spec_token_ids = []
        if proposed:
            accepted = appended - 1
            state.rate = (1 - _EMA) * state.rate + _EMA * accepted / proposed
            s = self.stats
            s.proposed += proposed
            s.accepted += accepted
            s.max_emitted = max(s.max_emitted, appended)
        k = self.num_tokens(req)
        if self.config.method == "ngram":
            if state.ngrams is None:
                state.ngrams = NgramIndex(self.config.ngram_max, self.config.ngram_min)
            state.ngrams.extend(req.token_ids[len(state.ngrams.tokens):])
            if k:
                req.spec_token_ids = state.ngrams.propose(k)
            return
        if drafted is not None:
            # The drafter saw every position up to the pending token; its K/V past the kept
            # blocks may be gone once the rejected tail is trimmed, so it resumes from there.
            state.draft_from = req.num_computed_tokens
            req.spec_token_ids = drafted[:k]
        state.num_draft = k
