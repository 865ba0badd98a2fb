"""GPTQ and block-wise FP8 copies of tiny random checkpoints, written here without the runtime's
code (packing loops as AutoGPTQ writes them, FP8 blocks as Qwen's FP8 checkpoints hold them), and
the dense checkpoint of the same model with every quantized weight dequantized: the oracle's input.

`write_gptq(src, dst, ...)` quantizes each linear weight of `src` round-to-nearest per group
(act-order: the inputs of a group are a random subset, `g_idx` says which) and writes the GPTQ
folder; `write_fp8(src, dst, ...)` does the same for FP8 e4m3 with a float32 `weight_scale_inv` per
128 x 128 block. Both return the dense reference folder too (`dst.parent / (dst.name + "-dense")`).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

BLOCK = 128
FP8_MAX = 448.0


def _linear_names(tensors: dict[str, torch.Tensor]) -> list[str]:
    """Every decoder linear (q/k/v/o, gate/up/down, per expert too) by its module name."""
    return sorted(k.removesuffix(".weight") for k in tensors if ".layers." in k and k.endswith("_proj.weight"))


def _to_int32(words: torch.Tensor) -> torch.Tensor:
    return torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)


def pack_along_input(q: torch.Tensor, bits: int) -> torch.Tensor:
    """AutoGPTQ's qweight: q `[K, N]` -> int32 `[K/p, N]`, word r holding inputs p*r .. p*r+p-1,
    input p*r+i at bits*i (the loop of AutoGPTQ's `pack`)."""
    p = 32 // bits
    words = torch.zeros(q.shape[0] // p, q.shape[1], dtype=torch.int64)
    for r in range(words.shape[0]):
        for i in range(p):
            words[r] |= q[p * r + i].long() << (bits * i)
    return _to_int32(words)


def pack_along_output(z: torch.Tensor, bits: int) -> torch.Tensor:
    """AutoGPTQ's qzeros: z `[G, N]` -> int32 `[G, N/p]`, output p*c+i of word c at bits*i."""
    p = 32 // bits
    words = torch.zeros(z.shape[0], z.shape[1] // p, dtype=torch.int64)
    for c in range(words.shape[1]):
        for i in range(p):
            words[:, c] |= (z[:, p * c + i].long() & ((1 << bits) - 1)) << (bits * i)
    return _to_int32(words)


def quantize_gptq(w: torch.Tensor, bits: int, group: int, sym: bool, order: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """w `[N, K]` -> (q int `[K, N]`, zeros int `[G, N]`, scales fp16 `[G, N]`, g_idx int32 `[K]`),
    round to nearest per group; group g holds inputs order[g*group : (g+1)*group] (act-order: a
    permutation, else arange(K))."""
    n, k = w.shape
    group = k if group == -1 else group
    maxq = (1 << bits) - 1
    g_idx = torch.empty(k, dtype=torch.int32)
    g_idx[order] = (torch.arange(k) // group).to(torch.int32)
    q = torch.empty(k, n, dtype=torch.int64)
    zeros, scales = [], []
    for g in range(k // group):
        cols = (g_idx == g).nonzero().flatten()
        wg = w[:, cols].float()  # [N, group]
        if sym:
            amax = wg.abs().amax(1).clamp(min=1e-5)
            scale = (2 * amax / maxq).half().float()
            zero = torch.full((n,), (maxq + 1) // 2, dtype=torch.int64)
        else:
            lo, hi = wg.amin(1).clamp(max=0), wg.amax(1).clamp(min=0)
            scale = ((hi - lo) / maxq).clamp(min=1e-5).half().float()
            zero = torch.round(-lo / scale).clamp(1, maxq).long()  # v1 cannot store a zero of 0
        q[cols] = (torch.round(wg / scale[:, None]) + zero[:, None]).clamp(0, maxq).long().t()
        zeros.append(zero)
        scales.append(scale.half())
    return q, torch.stack(zeros), torch.stack(scales), g_idx


def dequantize(q: torch.Tensor, zeros: torch.Tensor, scales: torch.Tensor, g_idx: torch.Tensor) -> torch.Tensor:
    """float32 `[N, K]`: W[n, k] = (q[k, n] - zeros[g_idx[k], n]) * scales[g_idx[k], n]."""
    g = g_idx.long()
    return ((q.float() - zeros[g].float()) * scales[g].float()).t().contiguous()


def _write(src: Path, dst: Path, tensors: dict[str, torch.Tensor], dense: dict[str, torch.Tensor],
           quantization: dict) -> tuple[Path, Path]:
    shutil.copytree(src, dst)
    save_file(tensors, str(dst / "model.safetensors"))
    cfg = json.loads((src / "config.json").read_text())
    cfg["quantization_config"] = quantization
    (dst / "config.json").write_text(json.dumps(cfg))
    ref = dst.parent / f"{dst.name}-dense"
    shutil.copytree(src, ref)
    save_file(dense, str(ref / "model.safetensors"))
    return dst, ref


def write_gptq(src: Path, dst: Path, bits: int = 4, group: int = 64, sym: bool = True, act_order: bool = False,
               v2: bool = False, seed: int = 0) -> tuple[Path, Path]:
    """The GPTQ copy of `src` (fp32 safetensors) in `dst`, and its dense reference folder."""
    gen = torch.Generator().manual_seed(seed)
    source = load_file(src / "model.safetensors")
    tensors = {k: v.half() for k, v in source.items()}
    dense = {k: v.float() for k, v in tensors.items()}
    orders: dict[str, torch.Tensor] = {}  # projections of one input (q/k/v, gate/up) share its order
    for name in _linear_names(source):
        w = tensors.pop(f"{name}.weight")
        site = name.replace("k_proj", "q_proj").replace("v_proj", "q_proj").replace("up_proj", "gate_proj")
        k = w.shape[1]
        if site not in orders:
            orders[site] = torch.randperm(k, generator=gen) if act_order else torch.arange(k)
        q, zeros, scales, g_idx = quantize_gptq(source[f"{name}.weight"], bits, group, sym, orders[site])
        stored = zeros if v2 else zeros - 1
        tensors.update({f"{name}.qweight": pack_along_input(q, bits), f"{name}.qzeros": pack_along_output(stored, bits),
                        f"{name}.scales": scales, f"{name}.g_idx": g_idx})
        dense[f"{name}.weight"] = dequantize(q, zeros, scales, g_idx)
        del w
    quantization = {"quant_method": "gptq", "bits": bits, "group_size": group, "sym": sym, "desc_act": act_order,
                    "damp_percent": 0.01, "true_sequential": True, "static_groups": False,
                    "checkpoint_format": "gptq_v2" if v2 else "gptq"}
    return _write(src, dst, tensors, dense, quantization)


def quantize_fp8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """w `[N, K]` -> (float8_e4m3fn `[N, K]`, float32 scale_inv `[ceil(N/128), ceil(K/128)]`): each
    128 x 128 block scaled so that its largest |w| is the format's 448."""
    n, k = w.shape
    bn, bk = -(-n // BLOCK), -(-k // BLOCK)
    padded = torch.zeros(bn * BLOCK, bk * BLOCK)
    padded[:n, :k] = w.float()
    blocks = padded.view(bn, BLOCK, bk, BLOCK)
    scale_inv = (blocks.abs().amax(dim=(1, 3)) / FP8_MAX).clamp(min=1e-12)
    q = (blocks / scale_inv[:, None, :, None]).to(torch.float8_e4m3fn).view(bn * BLOCK, bk * BLOCK)[:n, :k]
    return q.contiguous(), scale_inv


def dequantize_fp8(q: torch.Tensor, scale_inv: torch.Tensor) -> torch.Tensor:
    """float32 `[N, K]`: each weight times its block's scale_inv."""
    n, k = q.shape
    s = scale_inv.repeat_interleave(BLOCK, 0)[:n].repeat_interleave(BLOCK, 1)[:, :k]
    return q.float() * s


def write_fp8(src: Path, dst: Path, keep: tuple[str, ...] = ()) -> tuple[Path, Path]:
    """The block-wise FP8 copy of `src` in `dst` (other tensors bf16; modules whose names contain a
    string of `keep` stay bf16 and are listed in modules_to_not_convert), and its dense reference."""
    source = load_file(src / "model.safetensors")
    tensors = {k: v.bfloat16() for k, v in source.items()}
    dense = {k: v.bfloat16().float() for k, v in source.items()}
    for name in _linear_names(source):
        if any(s in name for s in keep):
            continue
        q, scale_inv = quantize_fp8(source[f"{name}.weight"])
        tensors[f"{name}.weight"], tensors[f"{name}.weight_scale_inv"] = q, scale_inv
        dense[f"{name}.weight"] = dequantize_fp8(q, scale_inv)
    quantization = {"quant_method": "fp8", "activation_scheme": "dynamic", "fmt": "e4m3",
                    "weight_block_size": [BLOCK, BLOCK], "modules_to_not_convert": list(keep) or None}
    return _write(src, dst, tensors, dense, quantization)
