"""AWQ int4 weights (the Triton layout, `awq_pack.py`) dequantized to a dense `[N, K]` matrix in one
launch, for large-M matmuls (prefill) that cuBLAS then runs on tensor cores: at M >= 128 our W4A16
GEMM measured 6-15x cuBLAS bf16's time on an H200 (2026-12-04), while writing the dense weight
costs about one read of the int4 data and one write of the bf16 data."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from llm_infer.kernels.awq_torch import AWQWeights
from llm_infer.kernels.triton.awq_pack import MAGIC_BITS, dequant_tile
from llm_infer.kernels.triton.checks import ACTIVATION_DTYPES, need

BLOCK_N = 64  # output rows per program; each program covers one group of K


@triton.jit
def _dequant_kernel(q4_ptr, s_ptr, z_ptr, w_ptr, N, K, magic, GROUP: tl.constexpr, BLOCK_N: tl.constexpr):
    pid_n, g = tl.program_id(0), tl.program_id(1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = offs_n < N
    offs_w = g * (GROUP // 8) + tl.arange(0, GROUP // 8)
    words = tl.load(q4_ptr + offs_n[:, None] * (K // 8) + offs_w[None, :], mask=n_mask[:, None], other=0)
    s = tl.load(s_ptr + g * N + offs_n, mask=n_mask, other=0.0).to(tl.float32)[:, None]
    z = tl.load(z_ptr + g * N + offs_n, mask=n_mask, other=0).to(tl.float32)[:, None]
    tile = dequant_tile(words, s, z, magic, w_ptr.dtype.element_ty, BLOCK_N, GROUP, True)
    offs_k = g * GROUP + tl.arange(0, GROUP)
    tl.store(w_ptr + offs_n[:, None] * K + offs_k[None, :], tile, mask=n_mask[:, None])


def dequantize(w: AWQWeights, dtype: torch.dtype) -> torch.Tensor:
    """The dense weight `[N, K]` in `dtype` (fp16 or bf16): (q - z) * s in fp32, rounded once, as
    `awq_torch.dequantize_awq(...).to(dtype)` gives it. `w` must hold the Triton layout (`q4`).
    Raises ValueError for another form or dtype."""
    need(w.q4 is not None, "w", "expected the Triton layout (repack_for_triton)")
    need(dtype in ACTIVATION_DTYPES, "dtype", f"expected float16 or bfloat16, got {dtype}")
    N, K = w.q4.shape[0], w.q4.shape[1] * 8
    out = torch.empty(N, K, dtype=dtype, device=w.q4.device)
    _dequant_kernel[(triton.cdiv(N, BLOCK_N), K // w.group)](w.q4, w.s_gn, w.z_gn, out, N, K, MAGIC_BITS,
                                                              GROUP=w.group, BLOCK_N=BLOCK_N, num_warps=4)
    return out
