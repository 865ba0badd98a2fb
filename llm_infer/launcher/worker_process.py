"""A worker's life: connect to the controller, build the rank, run plans until told to stop.

Started as `python -m llm_infer.launcher.worker_process` by the local launcher,
or called inside a Ray actor. The handshake: hello (rank, node address; rank 0
also offers a free port for the torch.distributed rendezvous) -> init (config,
rendezvous address) -> ready (KV blocks this rank can hold, peak RSS) ->
cache (block count) -> then one plan per message until "shutdown".
"""

from __future__ import annotations

import argparse
import os
import pickle
import resource
import socket
import sys
import traceback
from typing import Any

from llm_infer.launcher.channel import connect


def free_port(host: str) -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def memory_mb() -> dict[str, float]:
    """Peak resident set, and the private (anonymous) part resident now: the weights and the
    cache. Checkpoint pages read through mmap count in the first but are reclaimable page cache."""
    result = {"peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    result["anon"] = int(line.split()[1]) / 1024
    except OSError:
        pass
    return result


def serve(address: tuple[str, int], authkey: bytes, rank: int, node_ip: str, local_rank: int = 0) -> None:
    info: dict[str, Any] = {"ip": node_ip, "pid": os.getpid()}
    if rank == 0:
        info["port"] = free_port(node_ip)
    conn = connect(address, authkey, rank, info)
    worker = None
    try:
        kind, init = pickle.loads(conn.recv_bytes())
        assert kind == "init", kind
        from llm_infer.config import load_config
        from llm_infer.parallel.groups import bind_gloo_to
        from llm_infer.runtime.worker import Worker

        bind_gloo_to(node_ip)
        config = load_config(init["config"])
        worker = Worker(config, rank=rank, local_rank=local_rank, master_addr=init["master_addr"],
                        master_port=init["master_port"], progress=False)
        conn.send(("ready", worker.available_blocks(), memory_mb()))
        kind, num_blocks = pickle.loads(conn.recv_bytes())
        worker.init_cache(num_blocks)
        conn.send(("cache_ready", memory_mb()))
        while True:
            kind, payload = pickle.loads(conn.recv_bytes())
            if kind == "shutdown":
                break
            if kind == "stats":
                conn.send(("stats", worker.stats()))
                continue
            out = worker.execute(payload)
            if out is not None:
                conn.send_bytes(pickle.dumps(("result", out), protocol=pickle.HIGHEST_PROTOCOL))
    except (EOFError, ConnectionError):
        pass  # the controller went away: nothing left to do
    except BaseException as e:  # report, then exit: the controller turns this into one clear error
        from llm_infer.errors import UserError

        user_error = isinstance(e, UserError)
        last = str(e) if user_error else traceback.format_exception_only(type(e), e)[-1].strip()
        try:
            conn.send(("error", last, user_error))
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
    p = argparse.ArgumentParser()
    p.add_argument("--host", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--rank", type=int, required=True)
    p.add_argument("--local-rank", type=int, default=0)
    p.add_argument("--node-ip", default="127.0.0.1")
    args = p.parse_args()
    authkey = bytes.fromhex(os.environ.pop("LLM_INFER_AUTHKEY"))
    serve((args.host, args.port), authkey, args.rank, args.node_ip, args.local_rank)


if __name__ == "__main__":
    sys.exit(main())
