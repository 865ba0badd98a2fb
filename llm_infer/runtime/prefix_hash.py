"""Content keys of full KV blocks, for prefix caching.

The key of block i hashes the key of block i-1 together with block i's tokens,
so it stands for every token from position 0 to the end of block i: two
sequences share a key only where they share the whole prefix, and a cached
block is valid for any sequence whose prefix has that key. 128-bit BLAKE2b
keeps accidental collisions out of reach (a collision would silently reuse
the wrong KV, unlike a 64-bit `hash()`, whose collisions are merely unlikely).
A request with a LoRA adapter starts its chain from a root of its adapter's id
(`root_key`), so KV computed with one adapter is never found by another, nor by
the base model.
"""

from __future__ import annotations

import hashlib
from array import array

_ROOT = b"llm-infer-prefix-v1"


def root_key(lora_id: int = 0) -> bytes:
    """The key before block 0: one per LoRA adapter id (0: the base model)."""
    return _ROOT if not lora_id else _ROOT + b"/lora/" + str(lora_id).encode()


def extend_block_hashes(hashes: list[bytes], token_ids: list[int], block_size: int, root: bytes = _ROOT
                        ) -> list[bytes]:
    """Append the keys of the full blocks of `token_ids` that `hashes` does not cover yet; `root`:
    the key before block 0 (`root_key`)."""
    for i in range(len(hashes), len(token_ids) // block_size):
        parent = hashes[i - 1] if i else root
        block = array("q", token_ids[i * block_size : (i + 1) * block_size]).tobytes()
        hashes.append(hashlib.blake2b(parent + block, digest_size=16).digest())
    return hashes
