"""Ray job submission against a head this test starts on 127.0.0.1 (token authentication on)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest
import yaml

from tests.conftest import tiny_engine_config

pytest.importorskip("ray")
pytestmark = pytest.mark.slow  # a Ray head, a job and its worker processes


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _processes_mentioning(marker: str) -> list[psutil.Process]:
    found = []
    for p in psutil.process_iter(["cmdline", "status"]):
        if p.info["status"] != psutil.STATUS_ZOMBIE and marker in " ".join(p.info["cmdline"] or []):
            found.append(p)
    return found


def _stop_processes_mentioning(marker: str) -> None:
    deadline = time.monotonic() + 30
    while (procs := _processes_mentioning(marker)) and time.monotonic() < deadline:
        for p in procs:
            try:
                p.terminate() if time.monotonic() < deadline - 20 else p.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(procs, timeout=2)
    assert not _processes_mentioning(marker), "the Ray head left processes behind"


def test_job_submission_end_to_end(tiny_models, tmp_path):
    """A head started on 127.0.0.1 with token authentication; submit, stream, stop."""
    ray_bin = shutil.which("ray", path=str(Path(sys.executable).parent)) or shutil.which("ray")
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}", RAY_AUTH_MODE="token")
    port, dash = _free_port(), _free_port()
    ray_tmp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # Ray's socket paths must stay under 108 bytes
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny_engine_config(tiny_models["qwen2"])))
    start = subprocess.run(
        [ray_bin, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}", "--dashboard-host=127.0.0.1",
         f"--dashboard-port={dash}", f"--dashboard-agent-listen-port={_free_port()}", "--num-cpus=2", f"--temp-dir={ray_tmp}", "--disable-usage-stats",
         "--include-dashboard=true"], env=env, capture_output=True, text=True, timeout=120)
    try:
        assert start.returncode == 0, start.stderr[-2000:]
        r = subprocess.run(
            [sys.executable, "-m", "llm_infer.entrypoints.cli", "submit", "--address", f"http://127.0.0.1:{dash}",
             "--config", str(config), "--wait", "--", "generate", "--prompt", "Hello", "--max-tokens", "6",
             "--ignore-eos", "--raw"], env=env, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr[-2000:]
        assert r.stdout.splitlines()[0].startswith("raysubmit_")
        assert "Running entrypoint" in r.stdout
        bad = subprocess.run(
            [sys.executable, "-m", "llm_infer.entrypoints.cli", "submit", "--address", f"http://127.0.0.1:{dash}",
             "--config", str(config), "--wait", "--", "generate", "--prompt", "x", "--temperature", "-1"],
            env=env, capture_output=True, text=True, timeout=600)
        assert bad.returncode == 1 and "FAILED" in bad.stderr
    finally:
        _stop_processes_mentioning(ray_tmp)  # only this head's processes, not other Ray instances
        shutil.rmtree(ray_tmp, ignore_errors=True)
