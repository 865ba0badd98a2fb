"""The one place that decides which implementation runs each kernel.

`kernels: torch` always runs the torch reference (`torch_ref`, `attention_torch`).
`auto` runs our compiled kernels where they are built for the device (C++ on
CPU for bf16/fp32, in the build variant `cpu_extension.selected_variant()` names;
CUDA on GPUs for fp16/bf16) and the torch reference otherwise, op by op: a C++
kernel file built without a vector path for this CPU (`ext.isa_paths()` says
"scalar") leaves its ops to torch, and each op's row limits (beyond them oneDNN)
are the build's own (`ext.row_limits()`); the CUDA attention kernels take head_dim 64 or 128 (`CUDA_HEAD_DIMS`),
so other models get the CUDA set with torch attention (and no CUDA graphs).
On GPUs the CUDA set (`cuda_set.py`) takes its decode-step kernels from Triton inside
CUDA graphs (`kernels/triton/`) and the CUDA extension, cuBLAS and torch elsewhere.
`cuda` insists on the CUDA kernels: an error if they cannot run.
`deterministic: true` takes the batch-invariant C++ set (`_cpu_kernels(ext, True)`):
every matmul through the GEMV tiles whatever the row count (`linear_invariant`),
every query row through the paged attention kernel with fixed KV chunks (prefill
rows too), norms per row; it needs the C++ CPU kernels (an error otherwise).
A model receives one `Kernels` set and its layers call through it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from llm_infer.errors import UserError
from llm_infer.kernels import awq_torch, fp8_torch, lora_torch, moe_torch, torch_ref
from llm_infer.kernels.attention_torch import TorchAttentionBackend


@dataclass(frozen=True, kw_only=True)
class Kernels:
    name: str
    linear: Callable[..., torch.Tensor]  # (x, weight, bias) -> x @ weight.T + bias
    rms_norm: Callable[..., torch.Tensor]  # (x, weight, eps) -> normed
    add_rms_norm: Callable[..., tuple[torch.Tensor, torch.Tensor]]  # (x, residual, weight, eps) -> (normed, sum)
    rotary_: Callable[..., None]  # (x, positions, cos_cache, sin_cache, rot_heads, head_dim), in place
    silu_and_mul: Callable[..., torch.Tensor]
    attention: Any  # backend with prepare / write_kv / attend (AttentionBackend)
    awq_prepare: Callable[..., awq_torch.AWQWeights]  # (qweight, qzeros, scales, group) -> kernel's form
    awq_linear: Callable[..., torch.Tensor]  # (x, AWQWeights, bias) -> x @ W.T + bias
    int8_linear: Callable[..., torch.Tensor]  # (x, int8 W, fp32 row scales) -> x @ (scales * W).T
    # (x, gate_up [E, 2I, H], down [E, H, I], fp32 weights [T, k], ids [T, k], first expert) -> [T, H]
    moe: Callable[..., torch.Tensor] = moe_torch.fused_moe
    # (fp8 weight [N, K], row block scales [N, K/bk], bn, bk, dtype) -> FP8Weights: dequantised at load
    # (CPU: no kernel of ours beat bf16, see README "GPTQ and FP8") or W8A8 operands (CUDA sm_90).
    fp8_prepare: Callable[..., fp8_torch.FP8Weights] = fp8_torch.prepare_dense
    fp8_linear: Callable[..., torch.Tensor] = fp8_torch.fp8_linear  # (x, FP8Weights, bias) -> x @ W.T + bias
    # (x [M, 2I] = [gate | up], weight [N, I], bias) -> linear(silu(gate) * up): the down projection with
    # the SwiGLU gate fused into its input where the set has such a kernel (None: silu_and_mul, then linear).
    gated_linear: Callable[..., torch.Tensor] | None = None
    # (y [T, N], x [T, K], a [S, n*R, K], b [S, R, N], slots [T] int64, offsets) -> None: y += each token's
    # LoRA product, in place (lora_torch.py; the CUDA set's is Triton, capturable in a CUDA graph).
    lora_add: Callable[..., None] = lora_torch.lora_add

    def linear_gated(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """`linear(silu_and_mul(x), weight, bias)`, through `gated_linear` when the set has one."""
        if self.gated_linear is not None:
            return self.gated_linear(x, weight, bias)
        return self.linear(self.silu_and_mul(x), weight, bias)


TORCH = Kernels(name="torch", linear=torch_ref.linear, rms_norm=torch_ref.rms_norm,
                add_rms_norm=torch_ref.add_rms_norm, rotary_=torch_ref.rotary_, silu_and_mul=torch_ref.silu_and_mul,
                attention=TorchAttentionBackend(), awq_prepare=awq_torch.prepare_ref,
                awq_linear=awq_torch.awq_linear_ref, int8_linear=torch_ref.int8_linear)


# Deterministic mode: KV positions are reduced in chunks starting at multiples of this (rounded up
# to whole blocks), whatever the batch; 256 keeps a decode step's chunks few and a prefill's merge small.
DETERMINISTIC_CHUNK = 256

# Head sizes the CUDA attention kernels are compiled for (csrc/cuda/paged_kv.cuh: paged_attention_ok).
CUDA_HEAD_DIMS = (64, 128)


def select_kernels(setting: str, device: torch.device, dtype: torch.dtype, deterministic: bool = False,
                   head_dim: int | None = None) -> Kernels:
    """The kernel set for `setting` (auto | cuda | torch) on `device` in `dtype`; `head_dim`
    (None: not known yet) decides whether the CUDA attention applies. Raises UserError when the
    setting asks for kernels that cannot run here."""
    if deterministic:
        return _deterministic_kernels(device, dtype)
    if setting == "torch":
        return TORCH
    if device.type == "cuda":
        from llm_infer.kernels.cuda_extension import load_cuda_extension

        ext = load_cuda_extension(device.index or 0) if dtype in (torch.float16, torch.bfloat16) else None
        if ext is not None:
            if head_dim is not None and head_dim not in CUDA_HEAD_DIMS and setting == "cuda":
                raise UserError(f"kernels: cuda: the CUDA attention kernels take head_dim "
                                f"{' or '.join(map(str, CUDA_HEAD_DIMS))}, this model's is {head_dim}; "
                                "use kernels: auto (CUDA kernels with torch attention)")
            from llm_infer.kernels.cuda_set import cuda_kernels

            return cuda_kernels(ext, head_dim is None or head_dim in CUDA_HEAD_DIMS)
        if setting == "cuda":
            raise UserError("kernels: cuda needs float16/bfloat16 and CUDA kernels that build on this GPU "
                            "(see the warning above), or use kernels: auto")
        return TORCH
    if setting == "cuda":
        raise UserError("kernels: cuda needs device: cuda")
    if device.type == "cpu" and dtype in (torch.float32, torch.bfloat16):
        from llm_infer.kernels.cpu_extension import load_cpu_extension

        ext = load_cpu_extension()
        if ext is not None:
            return _cpu_kernels(ext)
    return TORCH


def _deterministic_kernels(device: torch.device, dtype: torch.dtype) -> Kernels:
    ext = None
    if device.type == "cpu" and dtype in (torch.float32, torch.bfloat16):
        from llm_infer.kernels.cpu_extension import load_cpu_extension

        ext = load_cpu_extension()
    if ext is None:
        raise UserError("deterministic: true needs the C++ CPU kernels (device: cpu, dtype float32 or bfloat16, "
                        "and a C++ compiler)")
    return _cpu_kernels(ext, deterministic=True)


def _not_deterministic(what: str) -> Callable[..., Any]:
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise UserError(f"deterministic: true does not cover {what} yet")
    return refuse


def _cpu_kernels(ext: Any, deterministic: bool = False) -> Kernels:
    from llm_infer.kernels import lora_cpu
    from llm_infer.kernels.attention_cpu import CpuAttentionBackend

    if deterministic:
        return Kernels(name="cpu-deterministic", linear=ext.linear_invariant, rms_norm=ext.rms_norm,
                       add_rms_norm=lambda x, residual, weight, eps: (ext.add_rms_norm_(x, residual, weight, eps),
                                                                      residual),
                       rotary_=ext.rotary_, silu_and_mul=ext.silu_and_mul,
                       attention=CpuAttentionBackend(ext, fixed_chunk=DETERMINISTIC_CHUNK),
                       awq_prepare=_not_deterministic("AWQ and GPTQ int4 checkpoints"),
                       awq_linear=_not_deterministic("AWQ and GPTQ int4 checkpoints"),
                       int8_linear=_not_deterministic("an int8 LM head"), moe=_not_deterministic("mixture-of-experts models"),
                       lora_add=lora_cpu.lora_add)  # each token's product alone, in a fixed order: batch-invariant

    def add_rms_norm(x, residual, weight, eps):
        return ext.add_rms_norm_(x, residual, weight, eps), residual

    def awq_linear(x, w, bias):
        if w.packed is None:  # a group size the kernel does not take
            return awq_torch.awq_linear_ref(x, w, bias)
        return ext.awq_linear(x, w.packed, w.scales_nk, w.zeros_nk, w.group, bias)

    # A kernel file built without a vector path for this CPU would be slower than torch: torch runs it.
    scalar = {kernel for kernel, path in ext.isa_paths().items() if path == "scalar"}

    def pick(kernel: str, compiled: Callable[..., Any], reference: Callable[..., Any]) -> Callable[..., Any]:
        return reference if kernel in scalar else compiled

    return Kernels(name="cpu" if not scalar else f"cpu (torch for {', '.join(sorted(scalar))})",
                   linear=pick("gemv", ext.linear, torch_ref.linear),
                   rms_norm=pick("elementwise", ext.rms_norm, torch_ref.rms_norm),
                   add_rms_norm=pick("elementwise", add_rms_norm, torch_ref.add_rms_norm),
                   rotary_=pick("elementwise", ext.rotary_, torch_ref.rotary_),
                   silu_and_mul=pick("elementwise", ext.silu_and_mul, torch_ref.silu_and_mul),
                   attention=CpuAttentionBackend(ext) if {"attention", "elementwise"}.isdisjoint(scalar)
                   else TorchAttentionBackend(),
                   awq_prepare=pick("awq_gemv", awq_torch.repack_for_cpu, awq_torch.prepare_ref),
                   awq_linear=pick("awq_gemv", awq_linear, awq_torch.awq_linear_ref),
                   int8_linear=pick("int8_gemv", ext.int8_linear, torch_ref.int8_linear),
                   moe=pick("moe", ext.fused_moe, moe_torch.fused_moe),
                   lora_add=lora_cpu.lora_add)  # built on first use, its own module (kernels/lora_cpu.py)
