"""An OpenAI-compatible HTTP server over one `LLM`: `llm-infer serve`.

Data flows: `app.py` (routes) -> `protocol.py` (request body -> prompt ids and
SamplingParams; the supported, ignored and refused fields; chat messages and tools in
`chat_protocol.py`) -> `async_engine.py` (the engine thread) -> `responses.py` (OpenAI-shaped
JSON and stream chunks, with token scores shaped by `logprobs.py`), sent as SSE by `streams.py`.
The Responses API: `responses_protocol.py` (items -> the chat prompt) and `responses_output.py`
(the response object and its events); embeddings: `embeddings.py`; /tokenize and /detokenize:
`tokenize.py`; LoRA adapters as models and their load/unload routes: `lora.py`. `metrics.py`
serves /metrics, `errors.py` turns every failure into an OpenAI error body, `serve.py` is the CLI.
"""

from __future__ import annotations

from typing import Any

__all__ = ["AsyncEngine", "EngineDeadError", "build_app"]


def __getattr__(name: str) -> Any:
    # Lazy, so that the CLI's parser (which imports serve.py) does not load FastAPI for every command.
    if name == "build_app":
        from llm_infer.entrypoints.server.app import build_app

        return build_app
    if name in ("AsyncEngine", "EngineDeadError"):
        from llm_infer.entrypoints.server import async_engine

        return getattr(async_engine, name)
    raise AttributeError(name)
