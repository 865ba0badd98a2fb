"""AutoAWQ int4 format in torch: unpacking, dequantisation (the reference), and the
repacking for the C++ CPU kernel.

AutoAWQ "GEMM" layout: `qweight` int32 `[in, out/8]`, `qzeros` int32 `[in/group, out/8]`,
`scales` fp16 `[in/group, out]`; nibble i (bits 4i..4i+3) of each int32 holds output
column 8j + AWQ_ORDER[i]; W[in, out] = (q - z) * s. Every function here also takes the zero points
unpacked, uint8 `[in/group, out]` (GPTQ v1 zeros reach 16, which a nibble cannot hold), and float32
or bfloat16 scales.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

AWQ_ORDER = [0, 2, 4, 6, 1, 3, 5, 7]
_SHIFTS = torch.arange(0, 32, 4, dtype=torch.int32)


def unpack_awq(packed: torch.Tensor) -> torch.Tensor:
    """int32 `[rows, cols/8]` -> uint8 `[rows, cols]` of values 0..15, columns in natural order.
    Column c of each 8 sits in nibble `AWQ_ORDER.index(c)` = c // 2 + 4 * (c % 2). The shifts are
    made on the tensor's device (no host copy), so a CUDA graph can capture this."""
    c = torch.arange(8, dtype=torch.int32, device=packed.device)
    shifts = 4 * ((c >> 1) + 4 * (c & 1))
    return ((packed.unsqueeze(-1) >> shifts) & 0xF).reshape(packed.shape[0], -1).to(torch.uint8)


def pack_awq(q: torch.Tensor) -> torch.Tensor:
    """uint8/int `[rows, cols]` of 0..15 -> int32 `[rows, cols/8]` (the inverse of `unpack_awq`)."""
    q = q.to(torch.int32).reshape(q.shape[0], -1, 8)[..., AWQ_ORDER]
    return (q << _SHIFTS.to(q.device)).sum(-1, dtype=torch.int32)


def zero_points(qzeros: torch.Tensor) -> torch.Tensor:
    """uint8 `[in/group, out]`: packed int32 qzeros unpacked, unpacked (uint8) ones as they are."""
    return qzeros if qzeros.dtype == torch.uint8 else unpack_awq(qzeros)


def dequantize_awq(qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor, group: int) -> torch.Tensor:
    """float32 W `[out, in]` (torch's linear layout)."""
    q = unpack_awq(qweight).float().view(-1, group, qweight.shape[1] * 8)  # [in/group, group, out]
    z = zero_points(qzeros).float().unsqueeze(1)
    return ((q - z) * scales.float().unsqueeze(1)).view(-1, q.shape[-1]).t().contiguous()


@dataclass
class AWQWeights:
    """One layer's int4 weight in the form the selected kernel consumes."""

    group: int
    qweight: torch.Tensor | None = None  # reference path: the AutoAWQ tensors as loaded
    qzeros: torch.Tensor | None = None
    scales: torch.Tensor | None = None
    packed: torch.Tensor | None = None  # CPU kernel: uint8 [out, in/2]
    scales_nk: torch.Tensor | None = None  # fp32 [out, in/group]
    zeros_nk: torch.Tensor | None = None  # fp32 [in/group, out]: scale * zero point, group-major
    q4: torch.Tensor | None = None  # Triton kernels (kernels/triton/awq_pack.py): int32 [out, in/8]
    s_gn: torch.Tensor | None = None  # fp16 [in/group, out]: the scales
    z_gn: torch.Tensor | None = None  # uint8 [in/group, out]: the zero points


def awq_linear_ref(x: torch.Tensor, w: AWQWeights, bias: torch.Tensor | None) -> torch.Tensor:
    """Dequantise in fp32, cast to the activation dtype, multiply: the oracle for the kernels."""
    weight = dequantize_awq(w.qweight, w.qzeros, w.scales, w.group).to(x.dtype)
    return F.linear(x, weight, bias)


def prepare_ref(qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor, group: int) -> AWQWeights:
    return AWQWeights(group, qweight, qzeros, scales)


CPU_GROUP_MULTIPLE = 64  # the CPU kernel works on 64-weight superblocks within a group


def repack_for_cpu(qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor, group: int) -> AWQWeights:
    """Rows per output feature, in 128-weight blocks of 64 bytes: low nibbles the block's first
    64 weights, high nibbles the next 64; an odd trailing 64 weights as a 32-byte half block
    (see csrc/cpu/awq_gemv.cpp). Group sizes that are not a multiple of 64 keep the reference form."""
    if group % CPU_GROUP_MULTIPLE:
        return prepare_ref(qweight, qzeros, scales, group)
    q = unpack_awq(qweight).t().contiguous()  # [out, in]
    n, k = q.shape
    full = k // 128 * 128
    blocks = q[:, :full].reshape(n, full // 128, 2, 64)
    parts = [(blocks[:, :, 0, :] | (blocks[:, :, 1, :] << 4)).reshape(n, full // 2)]
    if k > full:
        tail = q[:, full:].reshape(n, 2, 32)
        parts.append(tail[:, 0, :] | (tail[:, 1, :] << 4))
    packed = torch.cat(parts, dim=1).contiguous()
    zero_scales = (zero_points(qzeros).float() * scales.float()).contiguous()  # [in/group, out]
    return AWQWeights(group, packed=packed, scales_nk=scales.float().t().contiguous(), zeros_nk=zero_scales)
