"""Allocation of KV-cache blocks to sequences (the paged KV cache's bookkeeping).

The scheduler asks here whether a sequence's next tokens fit, and gives the
blocks back when it finishes or is preempted. No tensors live here.
"""

from __future__ import annotations

from collections import deque

from llm_infer.runtime.sequence import Sequence


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int):
        self.num_blocks = num_blocks
        self.block_size = block_size
        self._free: deque[int] = deque(range(num_blocks))

    @property
    def num_free_blocks(self) -> int:
        return len(self._free)

    def blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def num_new_blocks(self, seq: Sequence, num_new_tokens: int) -> int:
        """Blocks `seq` still needs to hold its computed tokens plus `num_new_tokens`."""
        return max(0, self.blocks_for(seq.num_computed_tokens + num_new_tokens) - len(seq.block_table))

    def can_allocate(self, seq: Sequence, num_new_tokens: int) -> bool:
        return self.num_new_blocks(seq, num_new_tokens) <= len(self._free)

    def allocate(self, seq: Sequence, num_new_tokens: int) -> None:
        for _ in range(self.num_new_blocks(seq, num_new_tokens)):
            seq.block_table.append(self._free.popleft())

    def trim(self, seq: Sequence, num_tokens: int) -> None:
        """Keep only the blocks holding the first `num_tokens` positions (speculative rollback:
        whole blocks past them are freed; stale entries in the last block are overwritten later)."""
        keep = self.blocks_for(num_tokens)
        if len(seq.block_table) > keep:
            self._free.extend(seq.block_table[keep:])
            del seq.block_table[keep:]

    def free(self, seq: Sequence) -> None:
        self._free.extend(seq.block_table)
        seq.block_table = []

    def usage(self) -> float:
        return 1.0 - len(self._free) / self.num_blocks
