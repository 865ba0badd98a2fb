"""A worker's life: connect to the controller, then answer calls until told to shut down.

Started as `python -m llm_infer.executor.worker_loop` by the local launcher, or
called inside a Ray actor. On connecting the worker says hello (rank, node
address; rank 0 also offers a free port for the torch.distributed rendezvous).
Every message after that is a call, dispatched with `getattr`: first
`init_worker` on the `WorkerHost`, which builds the Worker, then the Worker's
own methods (`init_cache`, `execute`, `stats`, ...) until `shutdown`.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sys
import traceback
from typing import Any

from llm_infer.errors import UserError
from llm_infer.executor.channel import connect, recv_call, send_error, send_reply


def free_port(host: str) -> int:
    """A TCP port free on `host` now (for the rendezvous rank 0 offers)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class WorkerHost:
    """The calls' target until `init_worker` has built the Worker; `target` is the Worker after."""

    def __init__(self, rank: int, local_rank: int, node_ip: str):
        self.rank, self.local_rank, self.node_ip = rank, local_rank, node_ip
        self.target: Any = self

    def init_worker(self, config: dict[str, Any], master_addr: str, master_port: int) -> int:
        """Build this rank's Worker (joining the rendezvous); returns the KV blocks it can hold."""
        from llm_infer.config import load_config
        from llm_infer.parallel.groups import bind_gloo_to
        from llm_infer.runtime.worker import Worker

        bind_gloo_to(self.node_ip)
        worker = Worker(load_config(config), rank=self.rank, local_rank=self.local_rank,
                        master_addr=master_addr, master_port=master_port, progress=False)
        self.target = worker
        return worker.available_blocks()


def serve(address: tuple[str, int], authkey: bytes, rank: int, node_ip: str, local_rank: int = 0) -> None:
    """Run one rank: answer calls until `shutdown`, the controller's disconnect, or an error
    (reported to the controller as one line, then this worker exits)."""
    info: dict[str, Any] = {"ip": node_ip, "pid": os.getpid()}
    if rank == 0:
        info["port"] = free_port(node_ip)
    conn = connect(address, authkey, rank, info)
    host = WorkerHost(rank, local_rank, node_ip)
    try:
        while True:
            method, args, reply_ranks = recv_call(conn)
            if method == "shutdown":
                break
            result = getattr(host.target, method)(*args)
            if rank in reply_ranks:
                send_reply(conn, result)
    except (EOFError, ConnectionError):
        pass  # the controller went away: nothing left to do
    except BaseException as e:  # report, then exit: the controller turns this into one clear error
        user_error = isinstance(e, UserError)
        last = str(e) if user_error else traceback.format_exception_only(type(e), e)[-1].strip()
        try:
            send_error(conn, last, user_error)
        except OSError:
            pass
        if not isinstance(e, Exception):
            raise
        if not user_error:
            traceback.print_exc()
    finally:
        from llm_infer.parallel.groups import destroy_parallel_groups

        destroy_parallel_groups()
        conn.close()


def main() -> None:
    """`python -m llm_infer.executor.worker_loop --host H --port P --rank R` (key in LLM_INFER_AUTHKEY)."""
    p = argparse.ArgumentParser()
    p.add_argument("--host", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--rank", type=int, required=True)
    p.add_argument("--local-rank", type=int, default=0)
    p.add_argument("--node-ip", default="127.0.0.1")
    args = p.parse_args()
    # Ctrl-C in a terminal reaches the whole process group; the controller decides what happens
    # (it stops the workers over the channel, or they exit when its socket closes).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    authkey = bytes.fromhex(os.environ.pop("LLM_INFER_AUTHKEY"))
    serve((args.host, args.port), authkey, args.rank, args.node_ip, args.local_rank)


if __name__ == "__main__":
    sys.exit(main())
