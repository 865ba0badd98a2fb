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
from tests.conftest import cpu_extension_or_skip, cpu_variants


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


@pytest.mark.parametrize("variant", cpu_variants())
def test_the_fast_path_env_reports_here_is_never_a_scalar_loop(variant: str, monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture[str]):
    """Each build variant this CPU runs has a vector path (AVX2 or AVX-512) in every kernel file, so
    `llm-infer env` names one for every op and dispatch keeps every op on the C++ kernels; a CPU
    without AVX2 and FMA gets torch's path instead of a build (never a scalar loop)."""
    from llm_infer.kernels import dispatch

    monkeypatch.setenv("LLM_INFER_CPU_ISA", variant)
    ext = cpu_extension.load_cpu_extension(variant)
    if ext is None and not {"avx2", "fma"} <= cpu_extension.cpu_features():
        assert "this CPU lacks" in cpu_extension.unavailable_reason
        assert dispatch.select_kernels("auto", torch.device("cpu"), torch.bfloat16) is dispatch.TORCH
        return
    if ext is None:
        cpu_extension_or_skip()  # skips without a compiler, raises where the build broke
    paths = ext.isa_paths()
    assert set(paths) == {"gemv", "awq_gemv", "int8_gemv", "attention", "elementwise", "moe"}
    assert all(path != "scalar" and ("AVX2" in path or "AVX-512" in path) for path in paths.values()), paths
    assert cli.main(["env", "--json"]) == 0
    cpu = json.loads(capsys.readouterr().out)["kernels"]["cpu (bf16, fp32)"]
    assert cpu["set"] == "compiled C++" and cpu["variant"].startswith(f"{variant} ")
    assert all(("AVX2" in text or "AVX-512" in text) and "torch (this build" not in text
               for op, text in cpu["ops"].items() if op != "decode layer stack"), cpu["ops"]
    for dtype in (torch.bfloat16, torch.float32):
        assert dispatch.select_kernels("auto", torch.device("cpu"), dtype).name == "cpu"
