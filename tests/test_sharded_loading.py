"""Each tensor-parallel rank reads only its own slice of every checkpoint tensor."""

from __future__ import annotations

import pytest
import torch

from llm_infer.parallel.embedding import ParallelLMHead, VocabParallelEmbedding
from llm_infer.parallel.linear import MergedColumnParallelLinear, QKVParallelLinear, RowParallelLinear
from llm_infer.parallel.state import ParallelState, set_parallel_state


class RecordingSlice:
    """Stands in for a safetensors slice: serves reads and remembers which rows were read."""

    def __init__(self, tensor: torch.Tensor):
        self.tensor = tensor
        self.reads: list[tuple] = []

    def get_shape(self):
        return list(self.tensor.shape)

    def __getitem__(self, index):
        self.reads.append(tuple((s.start, s.stop) for s in index))
        return self.tensor[index]


@pytest.fixture
def rank1_of_2():
    set_parallel_state(ParallelState(tp_size=2, tp_rank=1))
    yield
    set_parallel_state(ParallelState())


def test_column_row_and_merged_layers_read_only_their_shard(rank1_of_2):
    gate = RecordingSlice(torch.arange(8 * 4.0).view(8, 4))
    up = RecordingSlice(torch.arange(8 * 4.0).view(8, 4) + 100)
    layer = MergedColumnParallelLinear(4, [8, 8])
    layer.weight.weight_loader(layer.weight, gate, 0)
    layer.weight.weight_loader(layer.weight, up, 1)
    assert gate.reads == [((4, 8), (None, None))] and up.reads == [((4, 8), (None, None))]
    assert torch.equal(layer.weight, torch.cat([gate.tensor[4:], up.tensor[4:]]))

    down = RecordingSlice(torch.arange(4 * 8.0).view(4, 8))
    row = RowParallelLinear(8, 4)
    row.weight.weight_loader(row.weight, down)
    assert down.reads == [((None, None), (4, 8))]
    assert torch.equal(row.weight, down.tensor[:, 4:])


def test_qkv_splits_kv_heads_or_replicates_them(rank1_of_2):
    q, k, v = (RecordingSlice(torch.randn(n * 2, 6)) for n in (4, 2, 2))
    split = QKVParallelLinear(6, 2, num_heads=4, num_kv_heads=2)
    for name, t in zip("qkv", (q, k, v)):
        split.weight.weight_loader(split.weight, t, name)
    assert (q.reads[0][0], k.reads[0][0], v.reads[0][0]) == ((4, 8), (2, 4), (2, 4))
    k1, v1 = RecordingSlice(torch.randn(2, 6)), RecordingSlice(torch.randn(2, 6))
    replicated = QKVParallelLinear(6, 2, num_heads=4, num_kv_heads=1)
    replicated.weight.weight_loader(replicated.weight, k1, "k")
    replicated.weight.weight_loader(replicated.weight, v1, "v")
    assert k1.reads[0][0] == (0, 2), "one KV head: every rank reads (and holds) all of it"


def test_vocab_parallel_embedding_reads_its_vocabulary_range(rank1_of_2):
    emb = RecordingSlice(torch.randn(200, 8))  # padded to 256 -> rank 1 owns ids 128..255
    layer = VocabParallelEmbedding(200, 8)
    layer.weight.weight_loader(layer.weight, emb)
    assert emb.reads == [((128, 200), (None, None))]
    assert torch.equal(layer.weight[:72], emb.tensor[128:]) and not layer.weight[72:].any()
    head = ParallelLMHead(200, 8)
    assert head.weight.shape == (128, 8)
