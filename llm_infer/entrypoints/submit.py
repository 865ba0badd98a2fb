"""`llm-infer submit`: run an llm-infer command on a Ray cluster as a Ray job.

The job's runtime environment carries this package (`py_modules`) and a working
directory holding the config file, so the cluster needs only the dependencies
(torch, ...), not an llm-infer install. With `--wait` the job's logs stream
here and the exit code is the job's outcome (0 succeeded, 1 failed or stopped).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path

import llm_infer
from llm_infer.errors import UserError

COMMANDS = ("generate", "chat", "bench")


def build_entrypoint(command: list[str], config_name: str) -> str:
    if not command or command[0] not in COMMANDS:
        raise UserError(f"after '--' give an llm-infer command ({', '.join(COMMANDS)}) and its arguments")
    if "--config" in command:
        raise UserError("pass the config with submit's own --config, not after '--'")
    return shlex.join(["python", "-m", "llm_infer.entrypoints.cli", command[0], "--config", config_name, *command[1:]])


def _submit_when_ready(client, entrypoint: str, runtime_env: dict, patience_s: float = 60.0) -> str:
    """A freshly started head answers 'No available agent' until its job agent is up: retry that."""
    deadline = time.monotonic() + patience_s
    while True:
        try:
            return client.submit_job(entrypoint=entrypoint, runtime_env=runtime_env)
        except RuntimeError as e:
            if "No available agent" not in str(e) or time.monotonic() > deadline:
                raise UserError(f"the Ray cluster refused the job: {str(e).splitlines()[0]}") from None
            time.sleep(1.0)


def submit(args: argparse.Namespace) -> int:
    os.environ.setdefault("RAY_AUTH_MODE", "token")  # Ray >= 2.5x clusters require the token (read on import)
    try:
        from ray.job_submission import JobStatus, JobSubmissionClient
    except ImportError:
        raise UserError("llm-infer submit needs Ray: pip install 'llm-infer[ray]'") from None
    config = Path(args.config)
    if not config.is_file():
        raise UserError(f"config file not found: {config}")
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    entrypoint = build_entrypoint(command, "config.yaml")
    try:
        client = JobSubmissionClient(args.address)
    except Exception as e:
        raise UserError(f"cannot reach the Ray job server at {args.address}: {str(e).splitlines()[0]}") from None
    with tempfile.TemporaryDirectory(prefix="llm-infer-job-") as workdir:
        shutil.copy(config, Path(workdir) / "config.yaml")
        runtime_env = {"working_dir": workdir, "py_modules": [str(Path(llm_infer.__file__).parent)]}
        job_id = _submit_when_ready(client, entrypoint, runtime_env)
    print(job_id, flush=True)
    if not args.wait:
        return 0

    async def stream() -> None:
        async for chunk in client.tail_job_logs(job_id):
            sys.stdout.write(chunk)
            sys.stdout.flush()

    asyncio.run(stream())
    status = client.get_job_status(job_id)
    if status != JobStatus.SUCCEEDED:
        print(f"job {job_id} ended {status.value}", file=sys.stderr)
        return 1
    return 0
