"""Vocabulary-parallel embedding and LM head.

The vocabulary is padded to a multiple of `VOCAB_PAD * tp` and each rank owns a
contiguous range. The embedding looks up the ids it owns, zeroes the rest and
all-reduces; the head computes logits for its range and gathers them on TP
rank 0 (the rank that samples), which trims the padding.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from llm_infer.kernels.torch_ref import quantize_int8_rows
from llm_infer.parallel.communication import tp_all_reduce, tp_gather_to_first
from llm_infer.parallel.state import get_parallel_state
from llm_infer.parallel.weight_utils import WeightShapeError, copy_checked, narrow, shape_of

VOCAB_PAD = 64


class VocabParallelEmbedding(nn.Module):
    def __init__(self, num_embeddings: int, embedding_dim: int, dtype: torch.dtype = torch.float32):
        super().__init__()
        tp = get_parallel_state()
        pad = VOCAB_PAD * tp.tp_size
        self.num_embeddings = num_embeddings
        self.padded_size = (num_embeddings + pad - 1) // pad * pad
        self.per_partition = self.padded_size // tp.tp_size
        self.start = tp.tp_rank * self.per_partition
        self.end = self.start + self.per_partition
        self.weight = nn.Parameter(torch.zeros(self.per_partition, embedding_dim, dtype=dtype), requires_grad=False)
        self.weight.weight_loader = self.weight_loader

    def weight_loader(self, param: nn.Parameter, loaded: Any, shard_id: Any = None) -> None:
        rows, cols = shape_of(loaded)
        if rows != self.num_embeddings or cols != param.shape[1]:
            raise WeightShapeError(f"expected shape {[self.num_embeddings, param.shape[1]]}, checkpoint has {[rows, cols]}")
        n = max(0, min(self.end, rows) - self.start)
        if n:
            copy_checked(param.data[:n], narrow(loaded, 0, self.start, n))

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        if get_parallel_state().tp_size == 1:
            return F.embedding(input_ids, self.weight)
        owned = (input_ids >= self.start) & (input_ids < self.end)
        local = torch.where(owned, input_ids - self.start, 0)
        out = F.embedding(local, self.weight)
        out.masked_fill_(~owned.unsqueeze(-1), 0)
        return tp_all_reduce(out)


class ParallelLMHead(VocabParallelEmbedding):
    """Logits projection; shares the embedding's weight when the model ties them.

    With `int8_linear` given, the head is quantized once after loading (int8, one scale per
    vocabulary row) and multiplied through it; a tied embedding keeps its own weight."""

    def __init__(self, num_embeddings: int, embedding_dim: int, dtype: torch.dtype = torch.float32,
                 linear: Callable[..., torch.Tensor] = F.linear,
                 int8_linear: Callable[..., torch.Tensor] | None = None):
        super().__init__(num_embeddings, embedding_dim, dtype)
        self.linear = linear
        self.int8_linear = int8_linear
        self.int8: tuple[torch.Tensor, torch.Tensor] | None = None

    def process_weights_after_loading(self) -> None:
        if self.int8_linear is not None:
            self.int8 = quantize_int8_rows(self.weight.data)

    def tie_to(self, embedding: VocabParallelEmbedding) -> None:
        self.weight = embedding.weight

    def forward(self, hidden: torch.Tensor) -> torch.Tensor | None:
        """Full-vocabulary logits on TP rank 0; None on the other ranks."""
        if self.int8 is not None:
            logits = self.int8_linear(hidden, *self.int8)
        else:
            logits = self.linear(hidden, self.weight, None)
        logits = tp_gather_to_first(logits, dim=-1)
        if logits is None:
            return None
        return logits[..., : self.num_embeddings]
