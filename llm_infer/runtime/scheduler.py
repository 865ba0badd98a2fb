"""Continuous batching: which sequences run this step, and how many tokens each.

Every step has a token budget (`max_num_batched_tokens`). Running sequences
go first: decodes (one pending token) before partial prefills, so a long
prompt never stalls the streams already producing tokens. Waiting sequences
are then admitted in arrival order while the budget, `max_num_seqs` and free
KV blocks allow, each starting after the longest prefix of its tokens whose
KV blocks are cached (prefix caching); a prompt larger than the remaining
budget is prefilled in chunks over several steps. When a running sequence needs a block and none is
free, the most recently admitted sequence is preempted: its blocks are freed
and it goes back to the front of the queue to be recomputed later (its
output so far is kept, so the result is unchanged).

Speculative decoding needs no phase of its own: a request that carries proposed
tokens (`spec_token_ids`) is given `num_tokens_with_spec - num_computed_tokens`
tokens like any other, and a request whose drafter will propose at the end of
the step gets room for those proposals too (`spec.num_draft` lookahead slots).

LoRA adapters: a waiting request is admitted only while the running requests use fewer
distinct adapters than there are device slots (`max_loras`), or its adapter is among
theirs; one that does not fit waits, and so do the adapter requests behind it (requests
without an adapter may go first), so the running adapters drain and it cannot starve. Every
step then fits in the slots, whichever of the running requests it carries.

Under pipeline parallelism several steps (micro-batches of disjoint sequences)
are in flight at once: sequences in flight are `busy` and are neither
scheduled nor preempted until their step returns. Under overlapped scheduling
the next step is planned while the last one runs: sequences in flight are then
`protected` (scheduled again with placeholder inputs, but never preempted).

The scheduler sees requests and block counts only, never tensors.
"""

from __future__ import annotations

from collections import deque

from llm_infer.config import SchedulerConfig
from llm_infer.runtime.block_manager import BlockManager
from llm_infer.runtime.request import Request, RequestStatus


class Scheduler:
    def __init__(self, config: SchedulerConfig, block_manager: BlockManager, max_loras: int | None = None):
        self.config = config
        self.max_loras = max_loras
        self.blocks = block_manager
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.num_preemptions = 0

    def add(self, seq: Request) -> None:
        self.waiting.append(seq)

    def add_running(self, seq: Request) -> None:
        """A request that already holds its blocks (another sample forked from a computed prompt)."""
        seq.status = RequestStatus.RUNNING
        self.running.append(seq)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def schedule(self, busy: set[int] | frozenset[int] = frozenset(),
                 max_seqs: int | None = None, protected: set[int] | frozenset[int] = frozenset()
                 ) -> list[tuple[Request, int]]:
        """Pick (request, new tokens) pairs for one step, skipping requests whose ids are
        `busy`, taking at most `max_seqs` requests, and preempting none that is `busy` or
        `protected` (in flight)."""
        busy_or_protected = busy | protected if protected else busy
        budget = self.config.max_num_batched_tokens
        limit = min(max_seqs or self.config.max_num_seqs, self.config.max_num_seqs)
        scheduled: list[tuple[Request, int]] = []
        taken: set[int] = set()
        preemptions_before = self.num_preemptions
        free = [s for s in self.running if s.seq_id not in busy]
        decodes = [s for s in free if s.num_pending_tokens == 1]
        prefills = [s for s in free if s.num_pending_tokens > 1]
        for seq in decodes + prefills:
            if budget == 0 or len(scheduled) == limit:
                break
            if seq.status is not RequestStatus.RUNNING:  # preempted earlier in this loop
                continue
            n = min(seq.num_tokens_with_spec - seq.num_computed_tokens, budget)
            if not self._make_room(seq, n + _lookahead(seq, n), taken, busy_or_protected):
                continue
            self.blocks.allocate(seq, n + _lookahead(seq, n))
            scheduled.append((seq, n))
            taken.add(seq.seq_id)
            budget -= n
        preempted = self.num_preemptions != preemptions_before
        adapters = {s.lora_id for s in self.running if s.lora_id}
        held_back: list[Request] = []  # their adapter would need a slot no step has
        while (self.waiting and budget > 0 and not preempted and len(scheduled) < limit
               and len(self.running) < self.config.max_num_seqs):
            seq = self.waiting[0]
            # Once one adapter request waits for a slot, no later adapter request goes ahead of it
            # (not even one for a running adapter, which would keep that slot busy forever); requests
            # without an adapter still may.
            if (self.max_loras is not None and seq.lora_id
                    and (held_back or (seq.lora_id not in adapters and len(adapters) >= self.max_loras))):
                held_back.append(self.waiting.popleft())
                continue
            prefix = self.blocks.cached_prefix(seq)
            n = min(seq.num_tokens - self.blocks.prefix_tokens(seq, prefix), budget)
            if not self.blocks.can_allocate(seq, n + _lookahead(seq, n), prefix):
                break
            self.waiting.popleft()
            self.blocks.admit(seq, prefix)
            self.blocks.allocate(seq, n + _lookahead(seq, n))
            seq.status = RequestStatus.RUNNING
            self.running.append(seq)
            scheduled.append((seq, n))
            budget -= n
            if seq.lora_id:
                adapters.add(seq.lora_id)
        self.waiting.extendleft(reversed(held_back))
        return scheduled

    def _make_room(self, seq: Request, n: int, taken: set[int], busy: set[int] | frozenset[int]) -> bool:
        """Preempt the newest running sequences (neither scheduled this step nor in flight)
        until `seq` can grow by `n` tokens. False when `seq` cannot run this step: it was
        preempted itself, or only sequences in flight could make room (then it waits)."""
        while not self.blocks.can_allocate(seq, n):
            victims = [s for s in reversed(self.running)
                       if s is not seq and s.seq_id not in taken and s.seq_id not in busy]
            if victims:
                self._preempt(victims[0])
            elif busy:
                return False
            else:
                self._preempt(seq)
                return False
        return True

    def _preempt(self, seq: Request) -> None:
        self.running.remove(seq)
        self.blocks.free(seq)
        seq.reset_for_recompute()
        self.num_preemptions += 1
        self.waiting.appendleft(seq)

    def preempt_all(self) -> list[Request]:
        """Put every running sequence back at the front of the queue, in running order, to be
        recomputed (the workers lost their KV). Returns them."""
        moved = list(self.running)
        for seq in reversed(moved):
            self._preempt(seq)
        return moved

    def finish(self, seq: Request) -> None:
        """Release a sequence that is done (or aborted), wherever it is."""
        if seq in self.running:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        self.blocks.free(seq)
        seq.status = RequestStatus.FINISHED


def _lookahead(seq: Request, n: int) -> int:
    """KV slots past the step's tokens that the drafter writes at the end of the step, when the
    step samples and the request drafts: the token sampled now and all proposals but the last."""
    samples = seq.num_computed_tokens + n >= seq.num_tokens
    return seq.spec.num_draft if samples and seq.spec is not None else 0
