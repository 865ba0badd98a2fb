"""Embeddings: a prompt's last-layer hidden states (after the final norm) pooled into one vector.

An embedding request is a prompt-only request (`max_tokens` 0) that carries `PoolingParams`;
it goes through the same scheduler, chunked prefill, prefix cache and workers as generation.
Pooling runs in two halves, so nothing but one vector per request leaves a worker:

- on the sampling rank, per step (`pool_rows`): each embedding request's rows of the step are
  reduced as its plan entry says (`step_pooling`): `last` takes the row of the prompt's last
  position (in the chunk that reaches it), `first` the row of position 0, `sum` adds the
  chunk's rows, in float32;
- on the controller (`Request.add_pooled`, `finish_embedding`): the parts are added up, `mean`
  divides by the prompt length, `dimensions` keeps the first values (Matryoshka truncation),
  `normalize` scales to unit L2 norm.

`last` is what Qwen3-Embedding and other decoder embedders use (with the tokenizer's end token
closing the prompt); `mean` and `cls` need every position computed, so those requests do not
reuse cached prefix blocks (`PoolingParams.needs_every_row`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from llm_infer.errors import UserError
from llm_infer.kernels.attention_metadata import query_start_loc

if TYPE_CHECKING:
    from llm_infer.runtime.step_plan import StepPlan

POOLING_METHODS = ("last", "mean", "cls")


class PoolingParamsError(UserError):
    """An invalid pooling value; `param` names the field (the server's 400 reports it)."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class PoolingParams:
    """How one prompt becomes an embedding: `method` (`last`, `mean`, `cls`), `normalize` (unit L2
    norm), `dimensions` (keep the first N values before normalizing; None: all)."""

    method: str = "last"
    normalize: bool = True
    dimensions: int | None = None

    def __post_init__(self) -> None:
        if self.method not in POOLING_METHODS:
            raise PoolingParamsError("method", f"pooling method must be one of {', '.join(POOLING_METHODS)} "
                                               f"(got {self.method!r})")
        if self.dimensions is not None and (isinstance(self.dimensions, bool) or not isinstance(self.dimensions, int)
                                            or self.dimensions < 1):
            raise PoolingParamsError("dimensions", "dimensions must be an integer >= 1")

    @property
    def needs_every_row(self) -> bool:
        """Whether every prompt position must be computed (no cached prefix blocks)."""
        return self.method != "last"

    def check(self, hidden_size: int) -> None:
        """A PoolingParamsError when `dimensions` exceeds the model's embedding size."""
        if self.dimensions is not None and self.dimensions > hidden_size:
            raise PoolingParamsError("dimensions", f"dimensions is {self.dimensions}; this model's embeddings have "
                                                   f"{hidden_size}")


def step_pooling(params: PoolingParams, start: int, n: int, prompt_len: int) -> str:
    """What the sampling rank reduces of a request's rows `start..start + n - 1` this step: `last`,
    `first`, `sum`, or "" (nothing)."""
    if params.method == "mean":
        return "sum"
    if params.method == "cls":
        return "first" if start == 0 else ""
    return "last" if start + n >= prompt_len else ""


def pool_rows(hidden: torch.Tensor, plan: StepPlan) -> dict[int, torch.Tensor]:
    """Worker side: seq id -> the float32 vector its plan entry asks for, from this step's hidden
    states `[tokens, hidden]` (after the final norm)."""
    starts = query_start_loc(plan.query_lens)
    out = {}
    for i, kind in enumerate(plan.pool or []):
        if kind == "last":
            row = hidden[starts[i + 1] - 1].float()
        elif kind == "first":
            row = hidden[starts[i]].float()
        elif kind == "sum":
            row = hidden[starts[i] : starts[i + 1]].float().sum(0)
        else:
            continue
        out[plan.seq_ids[i]] = row.cpu()
    return out


def finish_embedding(pooled: torch.Tensor, params: PoolingParams, prompt_len: int) -> torch.Tensor:
    """Controller side: the request's embedding (float32 `[dimensions or hidden]`) from the sum of
    its parts."""
    vector = pooled / prompt_len if params.method == "mean" else pooled
    if params.dimensions is not None:
        vector = vector[: params.dimensions]
    if params.normalize:
        vector = torch.nn.functional.normalize(vector, dim=0)
    return vector
