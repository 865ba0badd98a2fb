"""Every failure as an OpenAI error body: `{"error": {message, type, param, code}}`."""

from __future__ import annotations

import logging
import types
import typing
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("llm_infer.server")
# What a field of a plain type must be, when its Field has no description saying it.
_EXPECTED = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


class ApiError(Exception):
    """A request that fails with `status`; the body names the field (`param`) when one is at fault."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type


def error_body(message: str, type: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict[str, Any]:
    """OpenAI's error body."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def error_response(err: ApiError) -> JSONResponse:
    """`err` as a JSON response (401s also say which scheme to use)."""
    headers = {"WWW-Authenticate": "Bearer"} if err.status == 401 else None
    return JSONResponse(error_body(err.message, err.type, err.param, err.code), status_code=err.status,
                        headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    """Every exception leaves as OpenAI's error body; anything unexpected is a logged 500."""
    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            message = f"unknown route {request.url.path}"
        elif exc.status_code == 405:
            message = f"method {request.method} is not allowed on {request.url.path}"
        else:
            message = str(exc.detail)
        kind = "invalid_request_error" if exc.status_code < 500 else "server_error"
        return JSONResponse(error_body(message, kind), status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(error_body(f"invalid request: {exc.errors()[:1]}"), status_code=400)

    @app.exception_handler(Exception)
    async def internal_error(_: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error", exc_info=exc)
        return JSONResponse(error_body("internal server error", "server_error"), status_code=500)


def bad_request(err: ValidationError, model: type[BaseModel]) -> ApiError:
    """pydantic's first error on a `model` body as a 400 naming the top-level field.

    The message says what the innermost field on the error's path must be: its
    `Field(description=...)`, else what its plain type is (`'stream': must be true or false`,
    `'messages': messages[0].content must be a string or ...`).
    """
    errors = err.errors()
    extra = next((e for e in errors if e["type"] == "extra_forbidden"), None)
    if extra is not None:  # a nested field we do not implement: name it rather than drop it
        loc = [p for p in extra["loc"] if isinstance(p, int) or "[" not in p]  # without union tags
        where = "".join(f"[{p}]" if isinstance(p, int) else (f".{p}" if i else str(p)) for i, p in enumerate(loc))
        return ApiError(400, f"'{loc[0]}': {where} is not supported by this server", param=str(loc[0]))
    error = errors[0]
    param = str(error["loc"][0])
    path, where, expected = "", param, None
    models = [model]
    for part in error["loc"]:
        if isinstance(part, int):
            path += f"[{part}]"
            continue
        info = next((m.model_fields[part] for m in models if part in m.model_fields), None)
        if info is None:
            continue  # the tag of a union member, e.g. 'list[int]'
        path = f"{path}.{part}" if path else part
        models = _models_in(info.annotation)
        what = info.description or _EXPECTED.get(_optional_of(info.annotation))
        if what:
            where, expected = path, what
    if error["type"] == "missing":
        where, problem = path, "is required"
    else:
        problem = f"must be {expected}" if expected else error["msg"]
    return ApiError(400, f"'{param}': {'' if where == param else where + ' '}{problem}", param=param)


def _optional_of(annotation: Any) -> Any:
    """`int | None` -> int; any other annotation as it is."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return args[0] if len(args) == 1 else annotation
    return annotation


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _models_in(arg)]
