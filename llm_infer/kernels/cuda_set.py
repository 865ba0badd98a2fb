"""The GPU kernel set (`kernels: auto | cuda` on a CUDA device), built by `dispatch.select_kernels`.

Two kinds of step, two choices per op, decided here and nowhere else:
- **Inside CUDA graphs** (decode steps; `graph_capture()` is active while a graph runner warms
  up and captures): the Triton kernels (`kernels/triton/`). A one-row GEMV (the SwiGLU gate
  fused into the down projection; SiLU-and-mul as one kernel where it is not fused), RMSNorm
  with the residual add, RoPE with the q/k norms and the KV-cache write in one kernel, GQA
  decode attention, AWQ int4 GEMV. Their launches cost about
  100 us of host time each (H200 host, 2026-12-04: 28 ms per eager decode step for about 230
  launches), which a graph replay does not pay.
- **Eager steps** (prefill, and decode where graphs do not apply: MoE, several GPUs, graphs
  off): the CUDA extension (RMSNorm, KV write, attention), cuBLAS and torch, launched at about
  10 us each. AWQ stays on Triton up to `AWQ_DENSE_ROWS` rows (the extension's int4 kernels are
  slower); beyond, the weight is dequantized in one launch and cuBLAS multiplies.
- Block-wise FP8 checkpoints, in both kinds of step: W8A8 through `torch._scaled_mm` (FP8 tensor
  cores, activations quantised per token and group of 128 at run time) where a load-time probe
  finds it correct on this GPU (sm_90: `fp8_torch.probe_w8a8`), else dequantised at load to the
  model dtype (cuBLAS/Triton as any dense layer).

Measured on an H200 (benchmarks/results/gpu_check-h200-2026-12-04*.json, graph-timed): the GEMV at
one row is 1.0-1.29x cuBLAS on the 1.5B shapes and fused with SwiGLU 1.24x the unfused pair, but
its fused form loses 2x at 2+ rows, so only one-row GEMVs take it (`GEMV_ROWS`).

`LLM_INFER_NO_TRITON=1` (or no importable triton) gives the previous set: the CUDA extension and
torch everywhere (an A/B switch for benchmarks).
"""

from __future__ import annotations

import contextlib
import os
import warnings
from typing import Any, Iterator

import torch

from llm_infer.kernels import awq_torch, fp8_torch, lora_torch, torch_ref
from llm_infer.kernels.attention_torch import TorchAttentionBackend
from llm_infer.kernels.dispatch import Kernels

GEMV_ROWS = 1  # rows up to which the Triton GEMV replaces cuBLAS in graphs
AWQ_DENSE_ROWS = 64  # AWQ matmuls with more rows dequantize the weight and run on cuBLAS
_HALF = (torch.float16, torch.bfloat16)


class _Capture:
    active = False  # a CUDA-graph runner is warming up or capturing


@contextlib.contextmanager
def graph_capture() -> Iterator[None]:
    """Within: the GPU set launches its Triton kernels (their launches are captured once)."""
    saved, _Capture.active = _Capture.active, True
    try:
        yield
    finally:
        _Capture.active = saved


def capturing() -> bool:
    return _Capture.active


def triton_modules() -> dict[str, Any] | None:
    """The Triton kernel modules, or None when triton is unavailable or switched off."""
    if os.environ.get("LLM_INFER_NO_TRITON"):
        return None
    try:
        from llm_infer.kernels.triton import (activation, awq_dequant, awq_linear, awq_pack, decode_attention, gemv,
                                              lora, rms_norm, rope_kv)
    except ImportError as e:
        warnings.warn(f"llm-infer: Triton kernels unavailable ({e}); using the CUDA extension and torch")
        return None
    return {"activation": activation, "awq_dequant": awq_dequant, "awq_linear": awq_linear, "awq_pack": awq_pack,
            "decode_attention": decode_attention, "gemv": gemv, "lora": lora, "rms_norm": rms_norm, "rope_kv": rope_kv}


def cuda_kernels(ext: Any, cuda_attention: bool = True) -> Kernels:
    """The set for a GPU: Triton inside graphs when triton imports, the CUDA extension otherwise."""
    triton = triton_modules()
    if triton is not None:
        return triton_kernels(ext, triton, cuda_attention)
    return extension_kernels(ext, cuda_attention)


def _ext_rms_norm(ext: Any):
    def rms_norm(x, weight, eps):
        return ext.rms_norm(x.contiguous(), None, weight, eps)

    def add_rms_norm(x, residual, weight, eps):
        return ext.rms_norm(x.contiguous(), residual, weight, eps), residual
    return rms_norm, add_rms_norm


def extension_kernels(ext: Any, cuda_attention: bool = True) -> Kernels:
    """The CUDA extension's kernels and torch for the rest (no Triton)."""
    from llm_infer.kernels.attention_cuda import CudaAttentionBackend

    def awq_linear(x, w, bias):
        if (w.group not in (64, 128) or w.qweight.shape[1] % 8  # shapes the kernels do not take (N % 64)
                or w.qzeros.dtype != torch.int32 or w.scales.dtype != torch.float16):  # GPTQ-made forms
            return awq_torch.awq_linear_ref(x, w, bias)
        return ext.awq_linear(x, w.qweight, w.qzeros, w.scales, w.group, bias)

    rms_norm, add_rms_norm = _ext_rms_norm(ext)
    return Kernels(name="cuda", linear=torch_ref.linear, rms_norm=rms_norm, add_rms_norm=add_rms_norm,
                   rotary_=torch_ref.rotary_, silu_and_mul=torch_ref.silu_and_mul,
                   attention=CudaAttentionBackend(ext) if cuda_attention else TorchAttentionBackend(),
                   awq_prepare=awq_torch.prepare_ref, awq_linear=awq_linear, int8_linear=torch_ref.int8_linear,
                   fp8_prepare=fp8_torch.prepare_w8a8)


def triton_kernels(ext: Any, triton: dict[str, Any], cuda_attention: bool) -> Kernels:
    """Triton inside CUDA graphs, the CUDA extension/cuBLAS/torch in eager steps (module docstring)."""
    from llm_infer.kernels.attention_cuda import CudaAttentionBackend

    gemv, norm, act = triton["gemv"].gemv, triton["rms_norm"].rms_norm, triton["activation"].silu_and_mul
    ext_rms_norm, ext_add_rms_norm = _ext_rms_norm(ext)

    def silu_and_mul(x):  # one kernel instead of torch's two (silu, mul: 75 + 71 us per step at batch 32)
        return act(x) if _Capture.active and x.dtype in _HALF else torch_ref.silu_and_mul(x)

    def one_row(x: torch.Tensor, weight: torch.Tensor) -> bool:
        return (_Capture.active and x.dim() == 2 and x.shape[0] <= GEMV_ROWS and x.stride(-1) == 1
                and x.dtype in _HALF and weight.dtype == x.dtype)

    def linear(x, weight, bias):
        return gemv(x, weight, bias) if one_row(x, weight) else torch_ref.linear(x, weight, bias)

    def gated_linear(x, weight, bias):
        if one_row(x, weight):
            return gemv(x, weight, bias, gate_up=True)
        return torch_ref.linear(silu_and_mul(x), weight, bias)

    def rms_norm(x, weight, eps):
        return norm(x.contiguous(), weight, eps) if _Capture.active else ext_rms_norm(x, weight, eps)

    def add_rms_norm(x, residual, weight, eps):
        if not _Capture.active:
            return ext_add_rms_norm(x, residual, weight, eps)
        return norm(x.contiguous(), weight, eps, residual=residual), residual

    def awq_linear(x, w, bias):
        if w.q4 is None:  # a shape or group size the Triton kernels refuse (awq_pack.supports)
            return awq_torch.awq_linear_ref(x, w, bias)
        if x.reshape(-1, x.shape[-1]).shape[0] > AWQ_DENSE_ROWS:
            return torch_ref.linear(x, triton["awq_dequant"].dequantize(w, x.dtype), bias)
        return triton["awq_linear"].awq_linear(x, w, bias)

    attention = (CudaAttentionBackend(ext, {"decode_attention": triton["decode_attention"],
                                            "rope_kv": triton["rope_kv"]}, capturing)
                 if cuda_attention else TorchAttentionBackend())
    return Kernels(name="cuda", linear=linear, gated_linear=gated_linear, rms_norm=rms_norm,
                   add_rms_norm=add_rms_norm, rotary_=torch_ref.rotary_, silu_and_mul=silu_and_mul,
                   attention=attention, awq_prepare=triton["awq_pack"].repack_for_triton, awq_linear=awq_linear,
                   int8_linear=torch_ref.int8_linear, fp8_prepare=fp8_torch.prepare_w8a8,
                   lora_add=_lora_add(triton["lora"].lora_add))


def _lora_add(triton_lora_add: Any) -> Any:
    """The Triton LoRA kernel for power-of-two slot ranks (`lora.max_rank`), the torch reference otherwise."""
    def lora_add(y, x, a, b, slots, offsets):
        rank = b.shape[1]
        if rank & (rank - 1) or len(offsets) > 4:
            return lora_torch.lora_add(y, x, a, b, slots, offsets)
        return triton_lora_add(y, x, a, b, slots, offsets)
    return lora_add
