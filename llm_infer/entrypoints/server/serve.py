"""`llm-infer serve`: build the LLM, start the engine thread, run uvicorn until Ctrl-C."""

from __future__ import annotations

import argparse
import asyncio
import json
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
    lora = p.add_argument_group("LoRA adapters (vLLM's flags; each sets a lora.* config key, --set wins)")
    lora.add_argument("--lora-modules", nargs="+", type=lora_module, default=[], metavar="NAME=PATH",
                      help="PEFT adapter folders served as model NAME (or JSON {\"name\": ..., \"path\": ...}); "
                      "implies --enable-lora")
    lora.add_argument("--enable-lora", action="store_true", help="serve LoRA adapters (lora.enabled)")
    lora.add_argument("--allow-runtime-lora-updating", action="store_true",
                      help="open POST /v1/load_lora_adapter and /v1/unload_lora_adapter (lora.runtime_updates; "
                      "implies --enable-lora): they read any folder the server can read")
    for flag, key, what in (("--max-lora-rank", "max_rank", "the largest adapter rank accepted"),
                            ("--max-loras", "max_loras", "adapters one step may run (device slots)"),
                            ("--max-cpu-loras", "max_cpu_loras", "adapters kept in host memory")):
        lora.add_argument(flag, type=int, default=None, help=f"{what} (lora.{key})")


def lora_module(text: str) -> tuple[str, str]:
    """One --lora-modules item as (name, path): `name=path`, or vLLM's JSON form `{"name", "path"}`."""
    if text.lstrip().startswith("{"):
        try:
            item = json.loads(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not valid JSON") from None
        if not isinstance(item, dict) or set(item) != {"name", "path"}:
            raise argparse.ArgumentTypeError(f"{text!r}: the JSON form takes exactly the keys name and path")
        name, path = item["name"], item["path"]
    else:
        name, _, path = text.partition("=")
    if not isinstance(name, str) or not isinstance(path, str) or not name.strip() or not path.strip():
        raise argparse.ArgumentTypeError(f"{text!r} is not NAME=PATH")
    return name.strip(), path.strip()


def lora_settings(args: argparse.Namespace) -> tuple[dict[str, str], list[str]]:
    """The adapters to load at start ({name: folder}) and the lora.* overrides the LoRA flags set,
    to go before the user's --set items (which win). Raises UserError for a name given twice."""
    modules: dict[str, str] = {}
    for name, path in getattr(args, "lora_modules", []):
        if name in modules:
            raise UserError(f"--lora-modules: the name {name!r} is given twice")
        modules[name] = path
    sizes = [f"lora.{key}={getattr(args, option)}" for option, key in
             (("max_lora_rank", "max_rank"), ("max_loras", "max_loras"), ("max_cpu_loras", "max_cpu_loras"))
             if getattr(args, option, None) is not None]
    runtime = getattr(args, "allow_runtime_lora_updating", False)
    # Any LoRA flag turns adapters on: a size given for adapters that stay off would change nothing.
    enabled = bool(modules or sizes or runtime or getattr(args, "enable_lora", False))
    overrides = (["lora.enabled=true"] if enabled else []) + (["lora.runtime_updates=true"] if runtime else [])
    return modules, overrides + sizes


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
    modules, lora_overrides = lora_settings(args)
    args.overrides = [*lora_overrides, *args.overrides]
    sock = bind(args.host, args.port)
    try:
        llm = make_llm(args, lora_modules=modules)
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
                adapters = f" with LoRA adapters {', '.join(modules)}" if modules else ""
                try:
                    asyncio.run(_serve(server, sock, f"serving {name}{adapters} at {url}/v1 (Ctrl-C stops)"))
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
