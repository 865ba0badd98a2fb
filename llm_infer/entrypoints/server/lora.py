"""LoRA adapters over HTTP, in vLLM's shapes: which model a request names, /v1/models cards, and the
run-time `POST /v1/load_lora_adapter` and `/v1/unload_lora_adapter` routes.

A request's `model` is the base model (the served name, or the config's `model` string) or the
name of a loaded adapter; anything else is a 404 `model_not_found`. The adapters are the ones the
engine thread last published (`AsyncEngine.loras`); one removed in between is refused by the
engine when the request is added, and answered the same 404.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from llm_infer.errors import UserError
from llm_infer.entrypoints.server.async_engine import AsyncEngine, EngineDeadError
from llm_infer.entrypoints.server.errors import ApiError, bad_request
from llm_infer.entrypoints.server.protocol import check_model

LORA_OFF = ("LoRA adapters are off on this server: start it with --enable-lora or --lora-modules "
            "(config: lora.enabled: true)")
RUNTIME_UPDATES_OFF = ("loading and unloading adapters at run time is off on this server: start it with "
                       "--allow-runtime-lora-updating (config: lora.runtime_updates: true)")


class LoadLoRAAdapter(BaseModel):
    model_config = ConfigDict(extra="forbid")

    lora_name: str = Field(min_length=1, description="a non-empty string: the adapter's model name")
    lora_path: str = Field(min_length=1, description="a non-empty string: the adapter's folder on the server")


class UnloadLoRAAdapter(BaseModel):
    model_config = ConfigDict(extra="forbid")

    lora_name: str = Field(min_length=1, description="a non-empty string: the name of a loaded adapter")


class ServedModels:
    """The names a request's `model` may take, and /v1/models."""

    def __init__(self, async_engine: AsyncEngine, served_name: str):
        self.engine = async_engine
        self.served_name = served_name
        self.root = str(async_engine.llm.config.model)
        self.base_names = {served_name, self.root}
        self.created = int(time.time())
        clash = self.base_names & self.adapter_names
        if clash:
            raise UserError(f"LoRA adapter name {sorted(clash)[0]!r} is the base model's name; choose another")

    @property
    def adapter_names(self) -> set[str]:
        return {info.name for info in self.engine.loras}

    def resolve(self, body: dict) -> str | None:
        """The adapter the body's `model` names (None: the base model; also when `model` is absent).
        Raises ApiError: 404 model_not_found for a name that is neither, 400 for a non-string."""
        check_model(body, self.base_names | self.adapter_names)
        model = body.get("model")
        return None if model is None or model in self.base_names else model

    def echoed(self, adapter: str | None) -> str:
        """The `model` a response reports: the adapter's name, else the served name."""
        return adapter or self.served_name

    def cards(self) -> list[dict[str, Any]]:
        """/v1/models' data: the base model, then each adapter with the base as `parent` and its
        folder as `root` (as vLLM lists them)."""
        common = {"object": "model", "created": self.created, "owned_by": "llm-infer",
                  "max_model_len": self.engine.max_model_len}
        base = {"id": self.served_name, **common, "root": self.root, "parent": None}
        return [base, *({"id": info.name, **common, "root": info.path, "parent": self.served_name}
                        for info in self.engine.loras)]


def unknown_adapter(error: UserError) -> ApiError:
    """The engine refused a request's adapter (removed after the route resolved it): the 404 that
    resolving it a moment later would have given."""
    return ApiError(404, str(error).removeprefix("invalid sampling parameters: "), param="model",
                    code="model_not_found")


def add_lora_routes(app: FastAPI, models: ServedModels, authorized: list[Any],
                    read_body: Callable[[Request], Awaitable[dict]]) -> None:
    """POST /v1/load_lora_adapter {lora_name, lora_path} and /v1/unload_lora_adapter {lora_name}.
    200 with vLLM's plain-text "Success: ..." line; 400 when adapters are off, for a malformed body,
    a taken name or an adapter that does not fit (the message names the file and tensor); 404 for
    unloading an adapter that is not loaded; 503 when the engine stopped. `read_body`: the request's
    JSON object (or the route's 4xx)."""
    engine = models.engine

    async def parse(request: Request, model: type[BaseModel]) -> Any:
        body = await read_body(request)
        if not engine.llm.config.lora.enabled:
            raise ApiError(400, LORA_OFF)
        if not engine.llm.config.lora.runtime_updates:
            raise ApiError(400, RUNTIME_UPDATES_OFF)
        try:
            return model.model_validate(body)
        except ValidationError as e:
            raise bad_request(e, model) from None

    @app.post("/v1/load_lora_adapter", dependencies=authorized)
    async def load_lora_adapter(request: Request) -> Response:
        body = await parse(request, LoadLoRAAdapter)
        name = body.lora_name
        if name in models.base_names:
            raise ApiError(400, f"'lora_name': {name!r} is the base model's name", param="lora_name")
        if name in models.adapter_names:
            raise ApiError(400, f"the LoRA adapter {name!r} is already loaded (unload it first)", param="lora_name")
        try:
            await engine.add_lora(name, body.lora_path)
        except UserError as e:
            taken = name in models.adapter_names  # loaded by a concurrent request since the check above
            raise ApiError(400, str(e), param="lora_name" if taken else "lora_path") from None
        except EngineDeadError as e:
            raise ApiError(503, str(e), type="server_error") from None
        return PlainTextResponse(f"Success: LoRA adapter '{name}' added successfully.")

    @app.post("/v1/unload_lora_adapter", dependencies=authorized)
    async def unload_lora_adapter(request: Request) -> Response:
        body = await parse(request, UnloadLoRAAdapter)
        name = body.lora_name
        try:
            await engine.remove_lora(name)
        except UserError:
            loaded = ", ".join(sorted(models.adapter_names)) or "none"
            raise ApiError(404, f"the LoRA adapter {name!r} is not loaded (loaded: {loaded})", param="lora_name",
                           code="model_not_found") from None
        except EngineDeadError as e:
            raise ApiError(503, str(e), type="server_error") from None
        return PlainTextResponse(f"Success: LoRA adapter '{name}' removed successfully.")
