"""World size > 1 on this machine: one child process per rank (`parallel.launcher: local`).

Workers are started with `python -m llm_infer.executor.worker_loop` rather than
multiprocessing's spawn, so a user's script is never re-imported. On CPU the
cores are shared among the ranks unless `threads` says otherwise. All traffic
stays on 127.0.0.1.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys

from llm_infer.config import EngineConfig
from llm_infer.errors import WorkerError
from llm_infer.executor.channel_executor import ChannelExecutor

HOST = "127.0.0.1"
WORKER_MODULE = "llm_infer.executor.worker_loop"  # what `ps` shows for a worker: python -m WORKER_MODULE


class ProcessExecutor(ChannelExecutor):
    """One `python -m WORKER_MODULE` child per rank, watched through its exit status."""

    def __init__(self, config: EngineConfig):
        self.procs: list[subprocess.Popen] = []
        super().__init__(config, HOST)
        self.threads = config.threads or max(1, (os.cpu_count() or 1) // config.world_size)
        self.launch()

    def launch(self) -> None:
        env = dict(os.environ, LLM_INFER_AUTHKEY=self.channel.authkey.hex(), OMP_NUM_THREADS=str(self.threads))
        host, port = self.channel.address
        self.procs = [
            subprocess.Popen(
                [sys.executable, "-m", WORKER_MODULE, "--host", host, "--port", str(port),
                 "--rank", str(rank), "--local-rank", str(rank), "--node-ip", HOST],
                env=env, stdin=subprocess.DEVNULL,
            )
            for rank in range(self.world_size)
        ]
        self.start(dataclasses.replace(self.config, threads=self.threads), connect_timeout_s=120.0)

    def check_alive(self) -> None:
        for rank, proc in enumerate(self.procs):
            if proc.poll() is not None:
                raise WorkerError(f"worker rank {rank} died: {self.describe_death(rank)}")

    def describe_death(self, rank: int) -> str:
        proc = self.procs[rank]
        try:
            code = proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            return f"process {proc.pid} closed its connection"
        if code < 0:
            return f"process {proc.pid} was killed by {signal.Signals(-code).name}"
        return f"process {proc.pid} exited with code {code}"

    def kill_workers(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
        for proc in self.procs:
            proc.wait()

    def stop_workers(self) -> None:
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        self.kill_workers()
