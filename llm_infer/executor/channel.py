"""The controller's line to its workers, the same for local processes and Ray actors.

The controller listens on one TCP port (an HMAC challenge with a random key
authenticates each worker); every worker connects once and says hello with its
rank. Then the wire carries calls and replies, each one pickled message:

    controller -> every worker:   (method, args, reply_ranks)
    worker -> controller:         ("ok", value)                  if its rank is in reply_ranks
                                  ("error", text, is_user_error) if the call raised (then it exits)

A step is one call (`execute`, the plan) answered by the sampling rank alone.
Ray only places and starts the workers; this traffic bypasses it, which keeps
control overhead far below a millisecond. A worker that dies closes its socket,
so the controller notices at once and names the rank instead of hanging.
"""

from __future__ import annotations

import pickle
import secrets
import socket
import time
from multiprocessing.connection import Connection, answer_challenge, deliver_challenge, wait
from typing import Any, Callable, Iterable

from llm_infer.errors import UserError, WorkerError

Address = tuple[str, int]
Call = tuple[str, tuple, tuple[int, ...]]


class ControllerChannel:
    """The listening socket and one connection per rank. `describe_death(rank)` words how a
    rank died (its exit signal, the actor's report); `check_alive()` raises WorkerError if a
    started worker has already exited (asked while waiting for workers to connect)."""

    def __init__(self, host: str, world_size: int, timeout_s: float,
                 describe_death: Callable[[int], str] = lambda rank: "its connection closed",
                 check_alive: Callable[[], None] = lambda: None):
        self.world_size = world_size
        self.timeout_s = timeout_s
        self.describe_death = describe_death
        self.check_alive = check_alive
        self.authkey = secrets.token_bytes(32)
        self._server = socket.create_server((host, 0))
        self.address: Address = (host, self._server.getsockname()[1])
        self.conns: dict[int, Connection] = {}
        self.hello: dict[int, Any] = {}

    def accept_all(self, deadline_s: float) -> None:
        """Wait for every rank to connect and say hello."""
        end = time.monotonic() + deadline_s
        while len(self.conns) < self.world_size:
            remaining = end - time.monotonic()
            if remaining <= 0:
                missing = sorted(set(range(self.world_size)) - set(self.conns))
                raise WorkerError(f"workers {missing} did not connect within {deadline_s:.0f} s")
            self._server.settimeout(min(remaining, 1.0))
            try:
                sock, _ = self._server.accept()
            except socket.timeout:
                self.check_alive()
                continue
            sock.settimeout(None)
            _no_delay(sock)
            conn = Connection(sock.detach())
            try:
                deliver_challenge(conn, self.authkey)
                answer_challenge(conn, self.authkey)
                kind, rank, info = conn.recv()
            except Exception:
                conn.close()  # not one of ours
                continue
            if kind != "hello" or rank in self.conns or not 0 <= rank < self.world_size:
                conn.close()
                continue
            self.conns[rank] = conn
            self.hello[rank] = info

    def send_call(self, method: str, args: tuple, reply_ranks: tuple[int, ...]) -> None:
        """Write one call to every rank (pickled once)."""
        payload = pickle.dumps((method, args, reply_ranks), protocol=pickle.HIGHEST_PROTOCOL)
        for rank, conn in self.conns.items():
            try:
                conn.send_bytes(payload)
            except OSError:
                raise WorkerError(f"worker rank {rank} is gone: {self.describe_death(rank)}") from None

    def recv_from(self, rank: int, timeout_s: float | None = None) -> Any:
        """The next reply from `rank`, watching every other rank for death meanwhile."""
        return self._next({rank}, self.timeout_s if timeout_s is None else timeout_s)[1]

    def gather(self, ranks: Iterable[int], timeout_s: float | None = None) -> dict[int, Any]:
        """One reply from each of `ranks`, in whatever order they come."""
        timeout_s = self.timeout_s if timeout_s is None else timeout_s
        end = time.monotonic() + timeout_s
        pending, got = set(ranks), {}
        while pending:
            rank, value = self._next(pending, max(0.0, end - time.monotonic()))
            got[rank] = value
            pending.discard(rank)
        return got

    def _next(self, wanted: set[int], timeout_s: float) -> tuple[int, Any]:
        end = time.monotonic() + timeout_s
        by_conn = {conn: r for r, conn in self.conns.items()}
        while True:
            remaining = end - time.monotonic()
            if remaining <= 0:
                rank, why = self._stopped_rank() or (min(wanted), "")
                raise WorkerError(f"worker rank {rank} did not answer within {timeout_s:.0f} s "
                                  f"(parallel.timeout_s){why}")
            for conn in wait(list(by_conn), timeout=remaining):
                r = by_conn[conn]
                try:
                    message = pickle.loads(conn.recv_bytes())
                except (EOFError, OSError):
                    raise WorkerError(f"worker rank {r} died: {self.describe_death(r)}") from None
                if message[0] == "error":
                    if message[2]:  # the user's mistake, found by a worker
                        raise UserError(message[1])
                    self._raise_if_another_failed(r)  # a collective fails on every rank when one dies
                    raise WorkerError(f"worker rank {r} failed: {message[1]}")
                if r in wanted:
                    return r, message[1]
                raise WorkerError(f"worker rank {r} sent a reply nobody asked for")

    def _raise_if_another_failed(self, failed: int, grace_s: float = 0.5) -> None:
        """Name the rank that died or stopped, not the one whose collective failed because of it:
        raise WorkerError if another rank's connection closes within `grace_s` or its process is
        stopped."""
        others = {conn: r for r, conn in self.conns.items() if r != failed}
        for conn in wait(list(others), timeout=grace_s):
            try:
                conn.recv_bytes()
            except (EOFError, OSError):
                r = others[conn]
                raise WorkerError(f"worker rank {r} died: {self.describe_death(r)}") from None
        stopped = self._stopped_rank()
        if stopped is not None:
            raise WorkerError(f"worker rank {stopped[0]} stopped answering{stopped[1]}")

    def _stopped_rank(self) -> tuple[int, str] | None:
        """A rank whose process on this machine is stopped (SIGSTOP, a debugger), with the words
        for it, or None. Asked when a reply is late: the late rank may only be waiting for it."""
        local = {self.address[0], "127.0.0.1", "::1"}
        for rank, info in sorted(self.hello.items()):
            pid = info.get("pid")
            if info.get("ip") not in local or pid is None:
                continue
            try:
                with open(f"/proc/{pid}/stat") as f:
                    state = f.read().rsplit(")", 1)[1].split()[0]
            except (OSError, IndexError):
                continue
            if state in ("T", "t"):
                return rank, f": process {pid} is stopped"
        return None

    def close(self) -> None:
        for conn in self.conns.values():
            try:
                conn.close()
            except OSError:
                pass
        self.conns.clear()
        self._server.close()


# Worker side ------------------------------------------------------------------------------
def connect(address: Address, authkey: bytes, rank: int, info: Any) -> Connection:
    """Open the channel to the controller and say hello."""
    sock = socket.create_connection(tuple(address), timeout=60)
    sock.settimeout(None)
    _no_delay(sock)
    conn = Connection(sock.detach())
    answer_challenge(conn, authkey)
    deliver_challenge(conn, authkey)
    conn.send(("hello", rank, info))
    return conn


def recv_call(conn: Connection) -> Call:
    """The next (method, args, reply_ranks) from the controller."""
    return pickle.loads(conn.recv_bytes())


def send_reply(conn: Connection, value: Any) -> None:
    """Answer the current call with its result."""
    conn.send_bytes(pickle.dumps(("ok", value), protocol=pickle.HIGHEST_PROTOCOL))


def send_error(conn: Connection, text: str, user_error: bool) -> None:
    """Report that the current call raised: `text` is one line; `user_error` keeps it a UserError."""
    conn.send_bytes(pickle.dumps(("error", text, user_error), protocol=pickle.HIGHEST_PROTOCOL))


def _no_delay(sock: socket.socket) -> None:
    """Send each message at once: with Nagle's algorithm a message written while the previous
    one waits for its (delayed) acknowledgement sits for up to 40 ms, which stalls pipelined steps."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
