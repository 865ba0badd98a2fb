"""Multi-node, simulated: two Ray nodes in two network namespaces joined by a veth pair,
and a TP=2 group spanning them, must generate what TP=1 generates.

Skips (with the reason) where network namespaces cannot be created (not root, no iproute2).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from llm_infer import LLM, SamplingParams
from tests.conftest import tiny_engine_config

pytest.importorskip("ray")
pytestmark = pytest.mark.slow  # two Ray nodes and their workers
PROMPT = [257, 72, 101, 108, 108, 111, 44, 32, 119, 111, 114, 108, 100]
NODE_A, NODE_B = "10.77.0.1", "10.77.0.2"


def sh(*cmd: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(list(cmd), capture_output=True, text=True, check=check, timeout=180, **kw)


@pytest.fixture
def two_namespaces():
    if shutil.which("ip") is None:
        pytest.skip("iproute2 (ip) is not installed")
    tag = secrets.token_hex(3)
    a, b = f"llmi-a-{tag}", f"llmi-b-{tag}"
    probe = sh("ip", "netns", "add", a, check=False)
    if probe.returncode != 0:
        pytest.skip(f"cannot create network namespaces here: {probe.stderr.strip()}")
    try:
        sh("ip", "netns", "add", b)
        sh("ip", "link", "add", f"va{tag}", "type", "veth", "peer", "name", f"vb{tag}")
        for ns, dev, ip in ((a, f"va{tag}", NODE_A), (b, f"vb{tag}", NODE_B)):
            sh("ip", "link", "set", dev, "netns", ns)
            sh("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", dev)
            sh("ip", "-n", ns, "link", "set", dev, "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        yield a, b
    finally:
        for ns in (a, b):
            sh("ip", "netns", "del", ns, check=False)


def _stop(marker: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        procs = [p for p in psutil.process_iter(["cmdline", "status"])
                 if p.info["status"] != psutil.STATUS_ZOMBIE and marker in " ".join(p.info["cmdline"] or [])]
        if not procs:
            return
        for p in procs:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(procs, timeout=2)


def test_tp2_across_two_nodes_matches_tp1(two_namespaces, tiny_models):
    ns_a, ns_b = two_namespaces
    with LLM(tiny_engine_config(tiny_models["qwen2"]), progress=False) as llm:
        want = llm.generate([PROMPT], SamplingParams(max_tokens=32, temperature=0, ignore_eos=True))[0].token_ids
    bin_dir = Path(sys.executable).parent
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", RAY_AUTH_MODE="token",
               RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="1", PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    ray = str(bin_dir / "ray")
    tmp_a = tempfile.mkdtemp(prefix="rA", dir="/tmp")
    tmp_b = tempfile.mkdtemp(prefix="rB", dir="/tmp")
    try:
        head = sh("ip", "netns", "exec", ns_a, ray, "start", "--head", f"--node-ip-address={NODE_A}", "--port=6380",
                  "--num-cpus=1", f"--temp-dir={tmp_a}", "--include-dashboard=false", "--disable-usage-stats",
                  env=env, check=False)
        assert head.returncode == 0, head.stderr[-2000:]
        node = sh("ip", "netns", "exec", ns_b, ray, "start", f"--address={NODE_A}:6380",
                  f"--node-ip-address={NODE_B}", "--num-cpus=1", f"--temp-dir={tmp_b}", "--disable-usage-stats",
                  env=env, check=False)
        assert node.returncode == 0, node.stderr[-2000:]
        run = sh("ip", "netns", "exec", ns_a, sys.executable, str(Path(__file__).with_name("multinode_driver.py")),
                 str(tiny_models["qwen2"]), f"{NODE_A}:6380", json.dumps(PROMPT), env=env, check=False)
        result = next((json.loads(line[7:]) for line in run.stdout.splitlines() if line.startswith("RESULT ")), None)
        assert result is not None, run.stderr[-3000:]
        assert result["ips"] == [NODE_A, NODE_B], "the two ranks must sit on different nodes"
        assert result["tokens"] == want
    finally:
        _stop(tmp_a)
        _stop(tmp_b)
        shutil.rmtree(tmp_a, ignore_errors=True)
        shutil.rmtree(tmp_b, ignore_errors=True)
