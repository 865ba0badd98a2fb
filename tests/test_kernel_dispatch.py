"""The one dispatch point's CUDA rules, checked on the CPU: which head sizes get our CUDA
attention, and which models may be captured as CUDA graphs. (The kernels themselves run only
under `pytest -m gpu`.) A stand-in extension object takes the place of the built one."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from llm_infer import LLM
from llm_infer.errors import UserError
from llm_infer.kernels import cuda_extension, dispatch
from llm_infer.runtime.forward_paths import CudaGraphForward, choose_forward
from tests import introspect
from tests.checkpoints import make_checkpoint
from tests.conftest import tiny_engine_config

CUDA = torch.device("cuda")


@pytest.fixture
def built_cuda_extension(monkeypatch):
    monkeypatch.setattr(cuda_extension, "load_cuda_extension", lambda index: object())


@pytest.mark.parametrize("head_dim,attention", [(64, "cuda"), (128, "cuda"), (16, "torch"), (96, "torch"),
                                                (None, "cuda")])
def test_auto_takes_our_cuda_attention_only_for_the_head_sizes_it_is_built_for(built_cuda_extension, head_dim,
                                                                               attention):
    kernels = dispatch.select_kernels("auto", CUDA, torch.bfloat16, head_dim=head_dim)
    assert (kernels.name, kernels.attention.name) == ("cuda", attention)


def test_cuda_setting_with_another_head_size_is_a_one_line_error(built_cuda_extension):
    with pytest.raises(UserError, match=r"take head_dim 64 or 128, this model's is 80; use kernels: auto"):
        dispatch.select_kernels("cuda", CUDA, torch.float16, head_dim=80)
    assert dispatch.select_kernels("cuda", CUDA, torch.float16, head_dim=128).attention.name == "cuda"


class _GraphableAttention:
    name = "cuda"
    capturable = True


@pytest.mark.parametrize("arch", ["qwen2", "qwen2_moe"])
def test_cuda_graphs_are_chosen_only_with_our_attention_and_a_dense_model(tmp_path, arch):
    """A CUDA-named kernel set over the torch attention (it reads lengths on the host), or a MoE
    model (its expert loop reads the routing on the host), must decode eagerly: capturing either
    would fail. (The positive case needs a GPU: tests/test_gpu_model.py.)"""
    path = make_checkpoint(tmp_path / arch, arch)
    with LLM(tiny_engine_config(path, kernels="torch"), progress=False) as llm:
        model = introspect.runner(llm).model
        torch_attention = dataclasses.replace(dispatch.TORCH, name="cuda")
        kernel_sets = [torch_attention]
        if arch == "qwen2_moe":
            kernel_sets.append(dataclasses.replace(dispatch.TORCH, name="cuda", attention=_GraphableAttention()))
        for kernels in kernel_sets:
            forward = choose_forward(model, kernels, 4, torch.device("cpu"), world_size=1, tp_size=1,
                                     cuda_graphs=True, max_model_len=64, max_num_seqs=4)
            assert not isinstance(forward, CudaGraphForward)


class _PartlyScalarExt:
    """A C++ build whose GEMV and attention files have no vector path for this CPU."""

    def __getattr__(self, name):
        return f"ext.{name}"

    def isa_paths(self):
        return {"gemv": "scalar", "awq_gemv": "AVX2 + FMA", "int8_gemv": "AVX2 + FMA", "attention": "scalar",
                "elementwise": "AVX2 + FMA", "moe": "scalar"}


def test_ops_whose_cpu_kernel_would_be_a_scalar_loop_run_on_torch():
    kernels = dispatch._cpu_kernels(_PartlyScalarExt())
    assert kernels.linear is dispatch.torch_ref.linear and kernels.moe is dispatch.moe_torch.fused_moe
    assert kernels.attention.name == "torch"
    assert kernels.rms_norm == "ext.rms_norm" and kernels.int8_linear == "ext.int8_linear"
    assert kernels.name == "cpu (torch for attention, gemv, moe)"  # not "cpu": no fused C++ decode stack


def test_a_cpu_without_avx2_gets_the_torch_path_with_one_warning(monkeypatch):
    from llm_infer.kernels import cpu_extension

    monkeypatch.setattr(cpu_extension, "cpu_features", lambda: {"sse2", "sse4_2"})
    monkeypatch.setattr(cpu_extension, "_load", cpu_extension._load.__wrapped__)
    with pytest.warns(UserWarning, match="this CPU lacks avx2, fma .*slower than torch"):
        assert cpu_extension.load_cpu_extension() is None
        assert dispatch.select_kernels("auto", torch.device("cpu"), torch.bfloat16) is dispatch.TORCH
    assert cpu_extension.host_variants() == []


def test_the_build_variant_is_chosen_by_an_environment_variable(monkeypatch):
    from llm_infer.kernels import cpu_extension

    monkeypatch.setenv("LLM_INFER_CPU_ISA", "avx2")
    assert cpu_extension.selected_variant() == "avx2" and "cpu-avx2-" in cpu_extension.build_path().name
    monkeypatch.setenv("LLM_INFER_CPU_ISA", "avx1024")
    with pytest.raises(ValueError, match="LLM_INFER_CPU_ISA='avx1024': expected one of native, avx2"):
        cpu_extension.selected_variant()
