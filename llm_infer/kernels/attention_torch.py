"""Paged attention in plain torch: the reference path.

Index tensors are built once per step (`prepare`) and reused by every layer.
Sequences with short queries (decode, speculative verification) run as one
padded SDPA call whose query heads are grouped per KV head, so no KV head is
copied. Sequences with long queries (prefill) run one SDPA call each; a
prefill with no cached prefix attends to its fresh K/V directly, and a run of
such prefills of equal length next to each other in the step (a batch of
same-length prompts, e.g. embeddings) is one batched call (torch's CPU SDPA
costs ~8 ms per call in bf16 whatever its size: 16 prompts of 128 tokens took
16x longer one by one).

Tensors: q `[tokens, heads * head_dim]`, k/v `[tokens, kv_heads * head_dim]`
(row-strided views are fine), caches `[blocks, block_size, kv_heads, head_dim]`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from llm_infer.kernels.attention_metadata import AttentionMetadata

if TYPE_CHECKING:
    from llm_infer.kernels.attention_cpu import CpuShortBatch

# Queries up to this length are batched; longer ones run per sequence.
SHORT_QUERY = 16


@dataclass
class ShortBatch:
    token_index: torch.Tensor  # [B, Q] flat index of each padded query row (clamped)
    valid: torch.Tensor  # [B, Q] row holds a real token
    slots: torch.Tensor  # [B, L] cache slot of each key position (0 for padding)
    mask: torch.Tensor | None  # [B, 1, Q, L] allowed keys; None when nothing is masked
    masks_by_group: dict[int, torch.Tensor] = field(default_factory=dict)


@dataclass
class LongSeq:
    start: int
    query_len: int
    slots: torch.Tensor | None  # None: no cached prefix, attend to the fresh K/V
    mask: torch.Tensor | None  # [Q, L] bottom-right causal mask when the prefix is cached
    count: int = 1  # fresh prefills only: `count` sequences of `query_len` tokens, one after the other


@dataclass
class Prepared:
    short: ShortBatch | CpuShortBatch | None  # the short-query sequences, batched for this backend
    long: list[LongSeq]


def slots_of(block_tables: torch.Tensor, length: int, block_size: int) -> torch.Tensor:
    pos = torch.arange(length, device=block_tables.device)
    return block_tables[:, pos // block_size] * block_size + pos % block_size


class TorchAttentionBackend:
    name = "torch"
    capturable = False  # reads sequence lengths on the host

    def prepare(self, meta: AttentionMetadata) -> None:
        short = [i for i, q in enumerate(meta.query_lens) if q <= SHORT_QUERY]
        long = [i for i, q in enumerate(meta.query_lens) if q > SHORT_QUERY]
        runs: list[LongSeq] = []
        for i in long:
            s = self._prepare_long(meta, i, meta.query_start_loc[i])
            last = runs[-1] if runs else None
            if (last is not None and s.slots is None and last.slots is None and s.query_len == last.query_len
                    and s.start == last.start + last.count * last.query_len):
                last.count += 1
            else:
                runs.append(s)
        meta.prepared = Prepared(short=self.prepare_short(meta, short) if short else None, long=runs)

    def prepare_short(self, meta: AttentionMetadata, rows: list[int]) -> ShortBatch:
        device = meta.slot_mapping.device
        q_host, s_host = [meta.query_lens[i] for i in rows], [meta.seq_lens[i] for i in rows]
        q_lens, s_lens = torch.tensor(q_host, device=device), torch.tensor(s_host, device=device)
        q_max, s_max = max(q_host), max(s_host)  # from the host lists: no device reads
        q_pos = torch.arange(q_max, device=device)
        base = torch.tensor([meta.query_start_loc[i] for i in rows], device=device)
        valid = q_pos[None, :] < q_lens[:, None]
        token_index = base[:, None] + torch.minimum(q_pos[None, :], q_lens[:, None] - 1)
        k_pos = torch.arange(s_max, device=device)
        slots = slots_of(meta.block_tables[rows], s_max, meta.block_size)
        slots = slots.masked_fill(~(k_pos[None, :] < s_lens[:, None]), 0)
        # Query row j of a sequence sits at absolute position seq_len - query_len + j.
        q_abs = (s_lens - q_lens)[:, None] + q_pos[None, :]
        allowed = k_pos[None, None, :] <= q_abs[:, :, None]
        allowed |= ~valid[:, :, None] & (k_pos == 0)[None, None, :]  # keep padded rows finite
        uniform = all(q == 1 for q in q_host) and all(n == s_max for n in s_host)
        return ShortBatch(token_index, valid, slots, None if uniform else allowed.unsqueeze(1))

    def _prepare_long(self, meta: AttentionMetadata, i: int, start: int) -> LongSeq:
        q_len, s_len = meta.query_lens[i], meta.seq_lens[i]
        if q_len == s_len:
            return LongSeq(start, q_len, None, None)
        device = meta.slot_mapping.device
        slots = slots_of(meta.block_tables[i : i + 1], s_len, meta.block_size)[0]
        q_abs = s_len - q_len + torch.arange(q_len, device=device)
        mask = torch.arange(s_len, device=device)[None, :] <= q_abs[:, None]
        return LongSeq(start, q_len, slots, mask)

    def write_kv(self, k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                 meta: AttentionMetadata) -> None:
        kv_heads, head_dim = k_cache.shape[2], k_cache.shape[3]
        k_cache.view(-1, kv_heads, head_dim).index_copy_(0, meta.slot_mapping, k.view(-1, kv_heads, head_dim))
        v_cache.view(-1, kv_heads, head_dim).index_copy_(0, meta.slot_mapping, v.view(-1, kv_heads, head_dim))

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor,
               v_cache: torch.Tensor, meta: AttentionMetadata, scale: float, num_heads: int) -> torch.Tensor:
        """-> `[tokens, heads * head_dim]`."""
        prep: Prepared = meta.prepared
        head_dim = k_cache.shape[3]
        out = torch.empty(q.shape[0], num_heads, head_dim, dtype=q.dtype, device=q.device)
        if prep.short is not None:
            self.attend_short(out, q, k_cache, v_cache, prep.short, scale)
        q3 = q.view(q.shape[0], num_heads, head_dim)
        for s in prep.long:
            out[s.start : s.start + s.count * s.query_len] = self._attend_long(q3, k, v, k_cache, v_cache, s, scale)
        return out.view(q.shape[0], num_heads * head_dim)

    def attend_short(self, out: torch.Tensor, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                     b: ShortBatch, scale: float) -> None:
        bsz, q_len = b.token_index.shape
        heads, dim = out.shape[1], out.shape[2]
        kv_heads = k_cache.shape[2]
        group = heads // kv_heads
        keys = k_cache.view(-1, kv_heads, dim)[b.slots].transpose(1, 2)  # [B, kvh, L, D]
        values = v_cache.view(-1, kv_heads, dim)[b.slots].transpose(1, 2)
        # [B, Q, kvh, g, D] -> [B, kvh, g*Q, D]: each KV head serves its g query heads at once.
        qb = q.view(q.shape[0], heads, dim)[b.token_index].view(bsz, q_len, kv_heads, group, dim)
        qb = qb.permute(0, 2, 3, 1, 4).reshape(bsz, kv_heads, group * q_len, dim)
        res = F.scaled_dot_product_attention(qb, keys, values, attn_mask=self._group_mask(b, group), scale=scale)
        res = res.view(bsz, kv_heads, group, q_len, dim).permute(0, 3, 1, 2, 4).reshape(bsz, q_len, heads, dim)
        out[b.token_index[b.valid]] = res[b.valid]

    @staticmethod
    def _group_mask(b: ShortBatch, group: int) -> torch.Tensor | None:
        if b.mask is None or b.mask.shape[2] == 1:
            return b.mask
        if group not in b.masks_by_group:
            b.masks_by_group[group] = b.mask.repeat(1, 1, group, 1)
        return b.masks_by_group[group]

    def _attend_long(self, q3, k, v, k_cache, v_cache, s: LongSeq, scale) -> torch.Tensor:
        """-> `[count * query_len, heads, head_dim]`."""
        kv_heads, dim = k_cache.shape[2], k_cache.shape[3]
        rows = slice(s.start, s.start + s.count * s.query_len)
        qs = q3[rows].unflatten(0, (s.count, s.query_len)).transpose(1, 2)
        if s.slots is None:
            keys = k[rows].view(s.count, s.query_len, kv_heads, dim)
            values = v[rows].view(s.count, s.query_len, kv_heads, dim)
        else:
            keys = k_cache.view(-1, kv_heads, dim)[s.slots].unsqueeze(0)
            values = v_cache.view(-1, kv_heads, dim)[s.slots].unsqueeze(0)
        keys = keys.transpose(1, 2)
        values = values.transpose(1, 2)
        res = F.scaled_dot_product_attention(
            qs, keys, values, attn_mask=s.mask, is_causal=s.mask is None, scale=scale,
            enable_gqa=keys.shape[1] != qs.shape[1],
        )
        return res.transpose(1, 2).flatten(0, 1)
