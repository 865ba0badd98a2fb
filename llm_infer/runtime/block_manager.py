"""Allocation of KV-cache blocks to sequences (the paged KV cache's bookkeeping).

The scheduler asks here whether a sequence's next tokens fit, and gives the
blocks back when it finishes or is preempted. No tensors live here.

Prefix caching: a full block whose tokens were all computed becomes a cache
entry under the key of its whole prefix (`prefix_hash`). A new sequence starts
from the longest run of cached blocks matching its own tokens: it takes a
reference on them and computes only the rest. Blocks are reference counted; a
block nobody references but that is a cache entry stays filled and is reused
on a hit, or evicted (least recently used first) once no plain free block is
left. A cache entry is never written again: a sequence that must write into a
block others still hold gets its own copy first (copy-on-write: the copy is
listed in `copies` and the workers perform it before the step's forward).
"""

from __future__ import annotations

from collections import OrderedDict, deque

from llm_infer.runtime.prefix_hash import extend_block_hashes, root_key
from llm_infer.runtime.request import Request


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, prefix_caching: bool = False):
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.prefix_caching = prefix_caching
        self._free: deque[int] = deque(range(num_blocks))  # free, holding nothing worth keeping
        self._evictable: OrderedDict[int, None] = OrderedDict()  # free cache entries, least recent first
        self._ref = [0] * num_blocks
        self._key_of: dict[int, bytes] = {}
        self._block_of: dict[bytes, int] = {}
        self.copies: list[tuple[int, int]] = []  # (source, destination) copies the next step does first
        self.query_tokens = 0  # tokens of admitted sequences looked up in the cache
        self.hit_tokens = 0  # of which found there

    @property
    def num_free_blocks(self) -> int:
        return len(self._free) + len(self._evictable)

    @property
    def num_cached_blocks(self) -> int:
        return len(self._block_of)

    def blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def num_new_blocks(self, seq: Request, num_new_tokens: int) -> int:
        """Blocks `seq` still needs to hold its computed tokens plus `num_new_tokens`."""
        return max(0, self.blocks_for(seq.num_computed_tokens + num_new_tokens) - len(seq.block_table))

    # -- prefix cache ------------------------------------------------------------------

    def cached_prefix(self, seq: Request) -> list[int]:
        """The cached blocks holding the longest prefix of `seq`'s tokens (none when caching is
        off, or when the sequence wants the logits of every position, which a hit would skip)."""
        if not self.prefix_caching or seq.needs_prompt_rows:
            return []
        if len(seq.block_hashes) < seq.num_tokens // self.block_size:
            extend_block_hashes(seq.block_hashes, seq.token_ids, self.block_size, root_key(seq.lora_id))
        blocks = []
        for key in seq.block_hashes:
            block = self._block_of.get(key)
            if block is None:
                break
            blocks.append(block)
        return blocks

    def prefix_tokens(self, seq: Request, prefix: list[int]) -> int:
        """Tokens a sequence starting from `prefix` need not compute: at least one is left,
        because the step that computes it produces the logits of the next token."""
        return min(len(prefix) * self.block_size, seq.num_tokens - 1)

    def admit(self, seq: Request, prefix: list[int]) -> None:
        """Start a waiting sequence from the cached `prefix` (possibly empty)."""
        for block in prefix:
            if self._ref[block] == 0:
                del self._evictable[block]
            self._ref[block] += 1
        seq.block_table = list(prefix)
        seq.num_computed_tokens = self.prefix_tokens(seq, prefix)
        seq.num_cached_blocks = seq.num_computed_tokens // self.block_size
        self.query_tokens += seq.num_tokens
        self.hit_tokens += seq.num_computed_tokens

    def register(self, seq: Request) -> None:
        """Make `seq`'s blocks whose tokens are all computed cache entries. (A speculative step
        may have computed accepted tokens a stop condition then dropped: those do not count.)"""
        full = min(seq.num_computed_tokens, seq.num_known_tokens) // self.block_size
        if not self.prefix_caching or seq.num_cached_blocks >= full:
            return
        if len(seq.block_hashes) < full:
            extend_block_hashes(seq.block_hashes, seq.token_ids, self.block_size, root_key(seq.lora_id))
        for i in range(seq.num_cached_blocks, full):
            key, block = seq.block_hashes[i], seq.block_table[i]
            if key not in self._block_of and block not in self._key_of:
                self._block_of[key] = block
                self._key_of[block] = key
            # else: another sequence computed the same prefix first; this copy stays private.
        seq.num_cached_blocks = full

    # -- allocation --------------------------------------------------------------------

    def can_allocate(self, seq: Request, num_new_tokens: int, prefix: list[int] | None = None) -> bool:
        """Whether `seq` can grow by `num_new_tokens`; with `prefix`, whether the waiting `seq`
        can be admitted from that cached prefix and then grow by `num_new_tokens`."""
        if prefix is None:
            computed, table, available = seq.num_computed_tokens, seq.block_table, self.num_free_blocks
            shared_from = 2
        else:  # admitting adds one reference; blocks only the cache holds leave the free pool
            computed, table = self.prefix_tokens(seq, prefix), prefix
            available = self.num_free_blocks - sum(1 for b in prefix if self._ref[b] == 0)
            shared_from = 1
        need = max(0, self.blocks_for(computed + num_new_tokens) - len(table))
        first = computed // self.block_size
        if num_new_tokens and first < len(table) and self._ref[table[first]] >= shared_from:
            need += 1  # copy-on-write
        return need <= available

    def allocate(self, seq: Request, num_new_tokens: int) -> None:
        first = seq.num_computed_tokens // self.block_size
        if num_new_tokens and first < len(seq.block_table):
            self._make_writable(seq, first)
        for _ in range(self.num_new_blocks(seq, num_new_tokens)):
            seq.block_table.append(self._take())

    def _make_writable(self, seq: Request, index: int) -> None:
        block = seq.block_table[index]
        if self._ref[block] > 1:
            copy = self._take()
            self.copies.append((block, copy))
            self._ref[block] -= 1
            seq.block_table[index] = copy
        elif block in self._key_of:  # ours alone: it stops being a cache entry
            del self._block_of[self._key_of.pop(block)]
        seq.num_cached_blocks = min(seq.num_cached_blocks, index)

    def fork(self, parent: Request, child: Request, num_tokens: int) -> None:
        """Start `child` (another sample of the same prompt) from `parent`'s first `num_tokens`
        computed positions: it shares their blocks (one more reference each); whichever writes
        into a shared block first gets its own copy (copy-on-write)."""
        child.block_table = list(parent.block_table[: self.blocks_for(num_tokens)])
        for block in child.block_table:
            self._ref[block] += 1
        child.num_computed_tokens = num_tokens
        full = num_tokens // self.block_size
        child.block_hashes = list(parent.block_hashes[:full])
        child.num_cached_blocks = min(parent.num_cached_blocks, full)

    def take_copies(self) -> list[tuple[int, int]]:
        copies, self.copies = self.copies, []
        return copies

    def _take(self) -> int:
        if self._free:
            block = self._free.popleft()
        else:
            block, _ = self._evictable.popitem(last=False)
            del self._block_of[self._key_of.pop(block)]
        self._ref[block] = 1
        return block

    def _release(self, block: int) -> None:
        self._ref[block] -= 1
        if self._ref[block] == 0:
            if block in self._key_of:
                self._evictable[block] = None
            else:
                self._free.append(block)

    def trim(self, seq: Request, num_tokens: int) -> None:
        """Keep only the blocks holding the first `num_tokens` positions (speculative rollback:
        whole blocks past them are freed; stale entries in the last block are overwritten later)."""
        keep = self.blocks_for(num_tokens)
        for block in reversed(seq.block_table[keep:]):
            self._release(block)
        del seq.block_table[keep:]

    def free(self, seq: Request) -> None:
        self.register(seq)
        # Last blocks first: they become the least recently used, so eviction eats a cached
        # prefix from its end (a block is useless once the block before it is gone).
        for block in reversed(seq.block_table):
            self._release(block)
        seq.block_table = []
        seq.num_cached_blocks = 0

    def drop_cache(self) -> None:
        """Forget every cache entry: the workers were replaced and their KV is gone. Call once no
        sequence holds a block; every block is then plain free."""
        if any(self._ref):
            raise RuntimeError("drop_cache() while sequences still hold blocks")
        self._free = deque(range(self.num_blocks))
        self._evictable.clear()
        self._key_of.clear()
        self._block_of.clear()
        self.copies = []

    def usage(self) -> float:
        """Share of blocks referenced by sequences (free cache entries count as free)."""
        return 1.0 - self.num_free_blocks / self.num_blocks
