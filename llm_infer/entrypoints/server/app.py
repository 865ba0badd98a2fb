"""The FastAPI app: OpenAI routes over an AsyncEngine, plus /health and /metrics."""

from __future__ import annotations

import asyncio
import functools
import hmac
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from llm_infer.errors import UserError
from llm_infer.entrypoints.server.async_engine import AsyncEngine, EngineDeadError
from llm_infer.entrypoints.server.embeddings import embeddings_body, parse_embeddings
from llm_infer.entrypoints.server.errors import ApiError, error_body, install_error_handlers
from llm_infer.entrypoints.server.logprobs import TokenText
from llm_infer.entrypoints.server.lora import ServedModels, add_lora_routes, unknown_adapter
from llm_infer.entrypoints.server.metrics import RequestCounter, ServerMetrics
from llm_infer.entrypoints.server.protocol import (CONSTRAINT_FIELDS, GenerationRequest, parse_chat,
                                                   parse_completion)
from llm_infer.entrypoints.server.responses import Responder
from llm_infer.entrypoints.server.responses_output import ResponseBuilder
from llm_infer.entrypoints.server.responses_protocol import parse_responses
from llm_infer.entrypoints.server.streams import Finals, stream, stream_response
from llm_infer.entrypoints.server.tokenize import detokenize, tokenize
from llm_infer.runtime.outputs import RequestOutput
from llm_infer.runtime.pooling import PoolingParams
from llm_infer.runtime.sampling_params import SamplingParams
from llm_infer.runtime.structured_output.params import ReasoningStart

T = TypeVar("T")
CLIENT_CLOSED = 499  # nginx's status for "the client closed the connection"
_DISCONNECT_POLL_S = 0.2


class ClientGone(Exception):
    pass


def build_app(async_engine: AsyncEngine, served_model_name: str, api_key: str | None = None,
              max_body_bytes: int = 1 << 20) -> FastAPI:
    llm = async_engine.llm
    models = ServedModels(async_engine, served_model_name)
    metrics = ServerMetrics(lambda: async_engine.snapshot, async_engine.speculative)
    token_text = TokenText(llm.tokenizer)

    async def require_key(request: Request) -> None:
        if api_key is None:
            return
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), api_key.encode()):
            raise ApiError(401, "missing or wrong API key (send 'Authorization: Bearer KEY')",
                           code="invalid_api_key")

    app = FastAPI(title="llm-infer", docs_url=None, redoc_url=None, openapi_url=None)
    install_error_handlers(app)
    app.add_middleware(RequestCounter, metrics=metrics,
                       endpoints={"/v1/completions", "/v1/chat/completions", "/v1/responses", "/v1/embeddings",
                                  "/v1/models", "/health", "/metrics", "/tokenize", "/detokenize",
                                  "/v1/load_lora_adapter", "/v1/unload_lora_adapter"})
    app.state.async_engine, app.state.metrics = async_engine, metrics
    authorized = [Depends(require_key)]

    def check_generates() -> None:
        if llm.task == "embed":
            raise ApiError(400, "this server serves embeddings only (model_task: embed); use /v1/embeddings",
                           code="model_not_supported")

    def reasoning_of(prompt_ids: list[int], params: SamplingParams) -> ReasoningStart | None:
        """How a chat reply to this prompt begins; a 400 for a thinking budget that cannot be enforced."""
        reasoning = llm.chat_parser.reasoning_start(prompt_ids)
        if params.thinking_budget is not None and reasoning is None:
            raise ApiError(400, f"'thinking_budget': cannot be enforced: {llm.chat_parser.budget_problem()}",
                           param="thinking_budget")
        return reasoning

    async def answer(request: Request, body: dict, prompt_field: str, prompts: list[list[int]],
                     params: SamplingParams | None, whole: Callable[[list[RequestOutput]], dict], *,
                     streamed: Callable[..., AsyncIterator[str]] | None = None, request_id: str | None = None,
                     reasoning: ReasoningStart | None = None, pooling: PoolingParams | None = None) -> Response:
        """Run `prompts` through the engine and answer with `whole(outputs)` as JSON, or with the SSE
        body `streamed(first, outputs, finals)`. Engine-side mistakes are 400s naming the field
        (`prompt_field` for the prompt), a stopped engine a 503, a client gone a 499."""
        outputs = async_engine.generate(prompts, params, request_id=request_id, reasoning=reasoning, pooling=pooling)
        finals = Finals(len(prompts), metrics)
        try:
            first = await unless_disconnected(request, anext(outputs))
            if streamed is not None:
                return StreamingResponse(streamed(first, outputs, finals=finals), media_type="text/event-stream",
                                         headers={"Cache-Control": "no-cache"})
            await unless_disconnected(request, finals.collect(first, outputs))
        except UserError as e:
            if getattr(e, "param", None) == "lora":
                raise unknown_adapter(e) from None
            raise ApiError(400, str(e), param=_param_of(e, body, prompt_field)) from None
        except EngineDeadError as e:
            raise ApiError(503, str(e), type="server_error") from None
        except ClientGone:
            finals.abort()
            return Response(status_code=CLIENT_CLOSED)
        return JSONResponse(whole(finals.ordered()))

    async def generate(request: Request, parse: Callable[..., GenerationRequest]) -> Response:
        check_generates()
        body = await read_json(request, max_body_bytes)
        adapter = models.resolve(body)
        req = parse(body, llm.tokenizer, async_engine.max_model_len, llm.model_config.vocab_size)
        req.params.lora = adapter
        responder = Responder(req.chat, models.echoed(adapter), token_text, n=req.params.n, top=req.params.logprobs,
                              echo=req.echo, parser=llm.chat_parser, parse_tools=req.parse_tools)
        reasoning = reasoning_of(req.prompts[0], req.params) if req.chat else None
        streamed = functools.partial(stream, req=req, responder=responder) if req.stream else None
        return await answer(request, body, "messages" if req.chat else "prompt", req.prompts, req.params,
                            responder.full, streamed=streamed, request_id=responder.id, reasoning=reasoning)

    @app.post("/v1/completions", dependencies=authorized)
    async def completions(request: Request) -> Response:
        return await generate(request, parse_completion)

    @app.post("/v1/chat/completions", dependencies=authorized)
    async def chat_completions(request: Request) -> Response:
        parse = functools.partial(parse_chat, tool_parser=llm.chat_parser.tool_calls is not None)
        return await generate(request, parse)

    @app.post("/v1/responses", dependencies=authorized)
    async def responses(request: Request) -> Response:
        check_generates()
        body = await read_json(request, max_body_bytes)
        adapter = models.resolve(body)
        job = parse_responses(body, llm.tokenizer, async_engine.max_model_len, llm.model_config.vocab_size,
                              tool_parser=llm.chat_parser.tool_calls is not None)
        job.params.lora = adapter
        reasoning = reasoning_of(job.prompt.ids, job.params)
        parser = llm.chat_parser
        end = parser.reasoning.end_token_id if parser.reasoning is not None else None
        builder = ResponseBuilder(job, models.echoed(adapter), parser, end)
        streamed = functools.partial(stream_response, builder=builder) if job.body.stream else None
        return await answer(request, body, "input", [job.prompt.ids], job.params, lambda outs: builder.whole(outs[0]),
                            streamed=streamed, request_id=builder.id, reasoning=reasoning)

    @app.post("/v1/embeddings", dependencies=authorized)
    async def embeddings(request: Request) -> Response:
        body = await read_json(request, max_body_bytes)
        if models.resolve(body) is not None:
            raise ApiError(400, f"'model': embeddings do not run with a LoRA adapter; use the base model "
                                f"'{served_model_name}'", param="model", code="model_not_supported")
        job = parse_embeddings(body, llm.tokenizer, async_engine.max_model_len, llm.pooling,
                               llm.model_config.hidden_size)
        return await answer(request, body, "input", job.prompts, None,
                            lambda outs: embeddings_body(outs, served_model_name, job.base64), pooling=job.pooling)

    @app.post("/tokenize", dependencies=authorized)
    async def tokenize_route(request: Request) -> Response:
        body = await read_json(request, max_body_bytes)
        models.resolve(body)  # an adapter's tokenizer is the base model's
        return JSONResponse(tokenize(body, llm.tokenizer, async_engine.max_model_len, token_text))

    @app.post("/detokenize", dependencies=authorized)
    async def detokenize_route(request: Request) -> Response:
        body = await read_json(request, max_body_bytes)
        models.resolve(body)
        return JSONResponse(detokenize(body, llm.tokenizer, llm.model_config.vocab_size))

    @app.get("/v1/models", dependencies=authorized)
    async def list_models() -> dict[str, Any]:
        return {"object": "list", "data": models.cards()}

    add_lora_routes(app, models, authorized, functools.partial(read_json, max_bytes=max_body_bytes))

    @app.get("/health")
    async def health() -> Response:
        reason = async_engine.unavailable
        if reason is None:
            return JSONResponse({"status": "ok"})
        return JSONResponse(error_body(reason, "server_error"), status_code=503)

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    return app


async def read_json(request: Request, max_bytes: int) -> dict[str, Any]:
    """The body as a JSON object; 413 past `max_bytes`, 400 when it is not a JSON object."""
    too_large = ApiError(413, f"the request body is larger than {max_bytes} bytes")
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > max_bytes:
        raise too_large
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_bytes:
            raise too_large
    try:
        data = json.loads(body)
        # "\ud800" is valid JSON but no text: it would fail in the tokenizer or when echoed in an error.
        json.dumps(data, ensure_ascii=False).encode()
    except (ValueError, RecursionError):  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise ApiError(400, "the request body is not valid JSON (UTF-8 text, no unpaired surrogates)") from None
    if not isinstance(data, dict):
        raise ApiError(400, "the request body must be a JSON object")
    return data


async def unless_disconnected(request: Request, awaitable: Awaitable[T]) -> T:
    """Await `awaitable`, cancelling it (so the request is aborted) if the client goes away."""
    task = asyncio.ensure_future(awaitable)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=_DISCONNECT_POLL_S)
            if done:
                return task.result()
            if await request.is_disconnected():
                raise ClientGone()
    finally:
        if not task.done():
            task.cancel()


def _param_of(error: UserError, body: dict, prompt_field: str) -> str:
    """The body field an engine-side error is about: the one it names (the output constraint's field
    as the body set it; `text` on /v1/responses), else the prompt's."""
    param = getattr(error, "param", None)
    if param == "structured_outputs":
        return next((f for f in (*CONSTRAINT_FIELDS, "text") if body.get(f) is not None), "structured_outputs")
    return param or prompt_field
