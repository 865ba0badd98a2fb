"""`llm-infer serve`: build the LLM, start the engine thread, run uvicorn until Ctrl-C."""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from llm_infer.errors import UserError
from llm_infer.runtime.models.resolve import resolve_model_dir


def add_serve_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (0.0.0.0 exposes the server to the network)")
    p.add_argument("--port", type=int, default=8000, help="port (0: any free port)")
    p.add_argument("--api-key", default=None,
                   help="require 'Authorization: Bearer KEY' on /v1/* (default: $LLM_INFER_API_KEY, else none)")
    p.add_argument("--max-body-bytes", type=int, default=1 << 20, help="largest request body accepted")


def served_model_name(llm: Any) -> str:
    """The model folder's name (e.g. SmolLM2-135M-Instruct): what /v1/models lists."""
    return resolve_model_dir(llm.config.model).name


def bind(host: str, port: int) -> socket.socket:
    """Listen before loading anything slow to fail fast, and know the port when it was 0."""
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except (OSError, OverflowError) as e:
        raise UserError(f"cannot listen on {host}:{port}: {e}") from None
    sock.set_inheritable(True)
    return sock


def serve(args: argparse.Namespace, make_llm: Callable[..., Any]) -> int:
    import uvicorn

    from llm_infer.entrypoints.server.app import build_app
    from llm_infer.entrypoints.server.async_engine import AsyncEngine

    api_key = args.api_key or os.environ.get("LLM_INFER_API_KEY") or None
    sock = bind(args.host, args.port)
    try:
        llm = make_llm(args)
        try:
            engine = AsyncEngine(llm)
            try:
                name = served_model_name(llm)
                app = build_app(engine, name, api_key=api_key, max_body_bytes=args.max_body_bytes)
                # Past the grace period open streams are cancelled, which aborts their requests.
                server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False,
                                                       timeout_graceful_shutdown=5))
                host, port = sock.getsockname()[:2]
                url = f"http://{f'[{host}]' if ':' in host else host}:{port}"
                try:
                    asyncio.run(_serve(server, sock, f"serving {name} at {url}/v1 (Ctrl-C stops)"))
                except KeyboardInterrupt:  # uvicorn re-raises the Ctrl-C it handled once it has shut down
                    pass
            finally:
                engine.shutdown()
        finally:
            llm.close()
    finally:
        sock.close()
    return 0


async def _serve(server: Any, sock: socket.socket, ready_line: str) -> None:
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started and not task.done():
        await asyncio.sleep(0.05)
    if server.started:
        print(ready_line, flush=True)
    await task


class ServerThread:
    """uvicorn serving `app` from a background thread (tests and benchmarks): `.url`, `.stop()`."""

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0, timeout: float = 30.0):
        import uvicorn

        sock = bind(host, port)
        self.url = f"http://{host}:{sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=5))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the server on {self.url} did not start")
            time.sleep(0.02)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)
