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
