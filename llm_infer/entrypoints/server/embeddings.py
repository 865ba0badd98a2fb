"""`POST /v1/embeddings`, as OpenAI shapes it: the request body -> prompts and PoolingParams, and
the reply body.

`input` is a string, a list of token ids, or a list of either (at most 2048); `encoding_format`
`float` (lists of numbers) or `base64` (little-endian float32 bytes, what the `openai` client asks
for by default); `dimensions` keeps the first N values before normalizing (Matryoshka). The
pooling method and normalization are the server's (config `pooling`). Any other field but `user`
is a 400 naming it.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from llm_infer.entrypoints.server.errors import ApiError
from llm_infer.entrypoints.server.protocol import check_fields, validate_body
from llm_infer.errors import UserError
from llm_infer.runtime.outputs import RequestOutput
from llm_infer.runtime.pooling import PoolingParams, PoolingParamsError

MAX_INPUTS = 2048  # OpenAI's limit per request


class EmbeddingRequest(BaseModel):
    """The body of /v1/embeddings."""

    model_config = ConfigDict(strict=True, extra="ignore")  # unknown fields are caught by check_fields
    model: str | None = None
    input: str | list[str] | list[int] | list[list[int]] = Field(
        description="a string, a list of token ids, or a non-empty list of either")
    encoding_format: Literal["float", "base64"] | None = None
    dimensions: int | None = None


@dataclass
class EmbeddingJob:
    prompts: list[list[int]]
    pooling: PoolingParams
    base64: bool


def parse_embeddings(body: dict, tokenizer: Any, max_model_len: int, pooling: PoolingParams,
                     hidden_size: int) -> EmbeddingJob:
    """An /v1/embeddings body as prompts (token ids) and the pooling to apply (the server's
    `pooling`, with the body's `dimensions`); a 400 naming the field."""
    check_fields(body, EmbeddingRequest, ignored=("user",), refused={})
    req = validate_body(EmbeddingRequest, body)
    inputs = req.input if isinstance(req.input, list) and not (req.input and isinstance(req.input[0], int)) \
        else [req.input]
    if not inputs or len(inputs) > MAX_INPUTS:
        raise ApiError(400, f"'input': must hold 1 to {MAX_INPUTS} inputs", param="input")
    prompts = []
    for i, one in enumerate(inputs):
        try:
            ids = tokenizer.encode(one) if isinstance(one, str) else list(one)
        except UserError as e:
            raise ApiError(400, f"'input': {e}", param="input") from None
        which = "the input" if len(inputs) == 1 else f"input {i}"
        if not ids:
            raise ApiError(400, f"'input': {which} is empty", param="input")
        if len(ids) > max_model_len:
            raise ApiError(400, f"'input': {which} has {len(ids)} tokens; this model's maximum context length is "
                                f"{max_model_len} tokens", param="input")
        prompts.append(ids)
    try:
        chosen = PoolingParams(pooling.method, pooling.normalize, req.dimensions)
        chosen.check(hidden_size)
    except PoolingParamsError as e:
        raise ApiError(400, f"'{e.param}': {e}", param=e.param) from None
    return EmbeddingJob(prompts, chosen, req.encoding_format == "base64")


def embeddings_body(outputs: list[RequestOutput], model: str, as_base64: bool) -> dict[str, Any]:
    """OpenAI's reply: one `embedding` object per input, in order, and the prompt tokens used."""
    data = []
    for i, out in enumerate(outputs):
        vector = out.embedding
        value = base64.b64encode(vector.numpy().astype("<f4").tobytes()).decode() if as_base64 else vector.tolist()
        data.append({"object": "embedding", "index": i, "embedding": value})
    tokens = sum(len(out.prompt_token_ids) for out in outputs)
    return {"object": "list", "data": data, "model": model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}
