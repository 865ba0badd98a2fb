"""Each token's exact bytes, from the `tokenizers` vocabulary itself.

A byte-level BPE piece (GPT-2's alphabet, as Qwen and SmolLM2 use) maps back to its bytes
character by character; a byte-fallback piece `<0xAB>` is that byte; an added token, or a piece
of any other kind, is its decoded text. Decoding a token alone is not enough: a token that holds
part of a multi-byte character decodes to U+FFFD. Used for logprobs' `bytes` and for the grammar
engine's view of the vocabulary.
"""

from __future__ import annotations

import json
import re

from tokenizers import Tokenizer as HFTokenizer


def _byte_level_chars() -> dict[str, int]:
    """GPT-2's byte-level alphabet: the stand-in character of each byte -> the byte."""
    keep = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    chars, extra = {}, 0
    for b in range(256):
        if b in keep:
            chars[chr(b)] = b
        else:
            chars[chr(256 + extra)] = b
            extra += 1
    return chars


class TokenBytes:
    def __init__(self, raw: HFTokenizer):
        self._raw = raw
        added = raw.get_added_tokens_decoder()
        self.added = {i: t.content for i, t in added.items()}
        self.special_ids = sorted(i for i, t in added.items() if t.special)
        decoder = json.loads(raw.decoder.__getstate__()) if raw.decoder is not None else {}
        kinds = {d.get("type") for d in [decoder, *decoder.get("decoders", [])]}
        self._byte_level = _byte_level_chars() if "ByteLevel" in kinds else None
        self._byte_fallback = "ByteFallback" in kinds

    def __call__(self, token_id: int) -> bytes:
        """The token's bytes (b"" for an id the vocabulary does not have)."""
        piece = self._raw.id_to_token(token_id)
        if piece is None:
            return b""
        if token_id in self.added:
            return self.added[token_id].encode()
        if self._byte_level is not None and all(c in self._byte_level for c in piece):
            return bytes(self._byte_level[c] for c in piece)
        if self._byte_fallback and re.fullmatch(r"<0x[0-9A-Fa-f]{2}>", piece):
            return bytes([int(piece[3:5], 16)])
        return self._raw.decode([token_id], skip_special_tokens=False).encode()
