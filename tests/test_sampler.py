"""Sampling filters and draws, checked against their definitions."""

from __future__ import annotations

import pytest
import torch

from llm_infer import SamplingParams
from llm_infer.errors import UserError
from llm_infer.runtime.sampler import Sampler, apply_min_p, apply_top_k, apply_top_p
from llm_infer.runtime.step_plan import SamplingBatch

LOGITS = torch.log(torch.tensor([[0.5, 0.2, 0.15, 0.1, 0.05], [0.05, 0.1, 0.15, 0.2, 0.5]]))


def kept(logits: torch.Tensor) -> list[list[int]]:
    return [torch.isfinite(row).nonzero().flatten().tolist() for row in logits]


def test_top_k_keeps_the_k_largest_per_row():
    assert kept(apply_top_k(LOGITS, torch.tensor([2, 0]))) == [[0, 1], [0, 1, 2, 3, 4]]
    assert kept(apply_top_k(LOGITS, torch.tensor([1, 3]))) == [[0], [2, 3, 4]]


def test_top_p_keeps_the_smallest_set_reaching_p():
    # 0.5 alone reaches 0.5; 0.5 + 0.2 is needed for 0.6; 0.5+0.2+0.15 for 0.8.
    assert kept(apply_top_p(LOGITS, torch.tensor([0.5, 0.6]))) == [[0], [3, 4]]
    assert kept(apply_top_p(LOGITS, torch.tensor([0.8, 1.0]))) == [[0, 1, 2], [0, 1, 2, 3, 4]]


def test_min_p_drops_tokens_below_a_share_of_the_best():
    # threshold 0.3 * 0.5 = 0.15: keeps 0.5, 0.2, 0.15
    assert kept(apply_min_p(LOGITS, torch.tensor([0.3, 0.0]))) == [[0, 1, 2], [0, 1, 2, 3, 4]]


def batch(n: int, **kw) -> SamplingBatch:
    fields = dict(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0)
    fields.update(kw)
    return SamplingBatch(*([fields[f]] * n for f in ("temperature", "top_k", "top_p", "min_p")),
                         seeds=list(range(n)), output_index=[0] * n)


def test_draws_follow_the_distribution():
    n = 20000
    probs = torch.tensor([0.5, 0.2, 0.15, 0.1, 0.05])
    logits = probs.log().expand(n, 5).contiguous()
    tokens = torch.tensor(Sampler()(logits, batch(n)))
    counts = torch.bincount(tokens, minlength=5).float()
    chi2 = float(((counts - n * probs) ** 2 / (n * probs)).sum())
    assert chi2 < 18.5, f"chi-square {chi2:.1f} with 4 degrees of freedom (p < 0.001)"


def test_filters_apply_before_the_draw():
    n = 2000
    logits = LOGITS[:1].expand(n, 5).contiguous()
    tokens = set(Sampler()(logits, batch(n, top_k=2)))
    assert tokens == {0, 1}
    tokens = set(Sampler()(logits, batch(n, top_p=0.6)))
    assert tokens == {0, 1}


def test_greedy_rows_take_the_argmax_and_seeds_fix_draws():
    logits = torch.randn(64, 100) * 0.1  # nearly flat: draws depend on the seed
    b = batch(64)
    b.temperature[1] = 0.0
    first = Sampler()(logits, b)
    assert first[1] == int(logits[1].argmax())
    assert Sampler()(logits, b) == first, "same seeds and positions give the same draws"
    b.seeds = [s + 1000 for s in b.seeds]
    assert Sampler()(logits, b) != first, "other seeds give other draws"
    b.seeds = [s - 1000 for s in b.seeds]
    b.output_index = [1] * 64
    assert Sampler()(logits, b) != first, "the next position of the same request draws anew"


@pytest.mark.parametrize("kwargs,message", [
    ({"temperature": -1}, "temperature"),
    ({"temperature": float("inf")}, "temperature"),
    ({"top_p": float("nan")}, "top_p"),
    ({"top_k": 2**64}, "top_k"),
    ({"top_p": -0.1}, "top_p"),  # 0 is valid: only the most likely token
    ({"top_k": -3}, "top_k"),
    ({"min_p": 1.5}, "min_p"),
    ({"max_tokens": -1}, "max_tokens"),  # 0 is valid: score the prompt only
    ({"stop": [""]}, "stop"),
    ({"seed": 1.5}, "seed"),
])
def test_invalid_sampling_values_are_user_errors(kwargs, message):
    with pytest.raises(UserError, match=message):
        SamplingParams(**kwargs)


def test_top_k_minus_one_means_disabled():
    assert SamplingParams(top_k=-1).top_k == 0


@pytest.mark.parametrize("kwargs", [{"stop": None}, {"stop_token_ids": None}])
def test_none_lists_mean_empty(kwargs):
    assert getattr(SamplingParams(**kwargs), next(iter(kwargs))) == []


@pytest.mark.parametrize("kwargs,field", [({"stop": 5}, "stop"), ({"stop_token_ids": 7}, "stop_token_ids")])
def test_non_lists_are_one_line_errors(kwargs, field):
    with pytest.raises(UserError, match=field):
        SamplingParams(**kwargs)
