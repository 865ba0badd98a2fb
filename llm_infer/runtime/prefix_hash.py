"""Content keys of full KV blocks, for prefix caching.

The key of block i hashes the key of block i-1 together with block i's tokens,
so it stands for every token from position 0 to the end of block i: two
sequences share a key only where they share the whole prefix, and a cached
block is valid for any sequence whose prefix has that key. 128-bit BLAKE2b
keeps accidental collisions out of reach (a collision would silently reuse
the wrong KV, unlike a 64-bit `hash()`, whose collisions are merely unlikely).
"""

from __future__ import annotations

import hashlib
from array import array

_ROOT = b"llm-infer-prefix-v1"


def extend_block_hashes(hashes: list[bytes], token_ids: list[int], block_size: int) -> list[bytes]:
    """Append the keys of the full blocks of `token_ids` that `hashes` does not cover yet."""
    for i in range(len(hashes), len(token_ids) // block_size):
        parent = hashes[i - 1] if i else _ROOT
        block = array("q", token_ids[i * block_size : (i + 1) * block_size]).tobytes()
        hashes.append(hashlib.blake2b(parent + block, digest_size=16).digest())
    return hashes
