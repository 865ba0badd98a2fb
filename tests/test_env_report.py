"""`llm-infer env`: the report a user pastes into a bug report says what runs where."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

import llm_infer
from llm_infer.entrypoints import cli
from llm_infer.kernels import cpu_extension
from tests.conftest import cpu_extension_or_skip


def test_env_report_names_versions_kernels_and_caches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]):
    cpu_extension_or_skip()
    monkeypatch.setenv("LLM_INFER_HOME", str(tmp_path))
    assert cli.main(["env"]) == 0
    text = capsys.readouterr().out
    assert f"version: {llm_infer.__version__}" in text
    assert f"location: {Path(llm_infer.__file__).parent}" in text
    assert f"version: {sys.version.split()[0]}" in text
    assert f"torch: {torch.__version__}" in text
    assert "set: compiled C++" in text and "attention: C++ for short queries (torch SDPA for prefill): " in text
    paths = cpu_extension.load_cpu_extension().isa_paths()
    assert f"linear: C++ GEMV tiles up to" in text and paths["gemv"] in text  # the ISA path each op runs
    assert f"kernel builds: {tmp_path / 'build'}" in text and f"models: {tmp_path / 'models'}" in text
    assert ("ray: available" if importlib.util.find_spec("ray") else "ray: not installed") in text
    assert "SmolLM2-135M-Instruct (not converted yet)" in text  # the fresh home has no converted model


def test_env_report_says_why_the_cpu_kernels_are_not_used(monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]):
    from llm_infer.kernels import cpu_extension

    monkeypatch.setenv("CXX", "no-such-compiler")
    monkeypatch.setattr(cpu_extension, "_load", cpu_extension._load.__wrapped__)
    with pytest.warns(UserWarning, match="no C\\+\\+ compiler found"):
        assert cli.main(["env", "--json"]) == 0
    cpu = json.loads(capsys.readouterr().out)["kernels"]["cpu (bf16, fp32)"]
    assert cpu == {"set": "torch reference", "why": "no C++ compiler found"}
