"""The batched LoRA kernels against their torch reference (kernels/lora_torch.py): the CPU C++
kernel (fp32 within 1e-5 x max|y|, bf16 within one bf16 rounding of y) and the Triton kernel
(on CUDA, or under Triton's interpreter on CPU). Seeded inputs; slot -1 rows must stay untouched;
a padded rank (zero rows of A) as the slots hold adapters of lower rank."""

from __future__ import annotations

import pytest
import torch

from llm_infer.kernels import lora_torch

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
# (tokens, slots, rank, K, sub-projection sizes): a decode batch of the default model's qkv, one
# row-parallel projection, gate/up, and single tokens
CASES = [(16, 16, 16, 576, [576, 192, 192]), (5, 3, 8, 64, [64]), (7, 4, 4, 128, [96, 96]), (1, 2, 16, 96, [40])]


def case(tokens, slots, rank, k, outs, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    offsets = [0]
    for o in outs:
        offsets.append(offsets[-1] + o)
    a = torch.randn(slots, len(outs) * rank, k, generator=g) / k**0.5
    a[:, rank - 2 : rank] = 0  # the first sub-projection's adapter has rank R - 2
    b = torch.randn(slots, rank, offsets[-1], generator=g)
    x = torch.randn(tokens, k, generator=g)
    index = torch.randint(-1, slots, (tokens,), generator=g)
    index[0] = slots - 1
    y = torch.randn(tokens, offsets[-1], generator=g)
    return [t.to(DEVICE, dtype) for t in (y, x, a, b)] + [index.to(DEVICE), tuple(offsets)]


def check(kernel, dtype, spec, seed, ulp):
    y, x, a, b, slots, offsets = case(*spec, dtype, seed)
    ref, out = y.clone(), y.clone()
    lora_torch.lora_add(ref, x, a, b, slots, offsets)
    kernel(out, x, a, b, slots, offsets)
    scale = ref.float().abs().max().item()
    assert (out.float() - ref.float()).abs().max().item() <= ulp * scale
    assert torch.equal(out[slots < 0], y[slots < 0])
    assert not torch.equal(out[slots >= 0], y[slots >= 0])


@pytest.mark.parametrize("spec", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cpu_lora_kernel_matches_its_reference(spec, dtype):
    from llm_infer.kernels import lora_cpu

    if CUDA:
        pytest.skip("the CPU kernel's test runs on the CPU machines")
    if lora_cpu.load_lora_extension() is None:
        pytest.skip("no C++ compiler")
    check(lora_cpu.lora_add, dtype, spec, 1, 1e-5 if dtype == torch.float32 else 2.0**-7)


@pytest.mark.parametrize("spec", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_triton_lora_kernel_matches_its_reference(spec, dtype):
    pytest.importorskip("triton")
    from llm_infer.kernels.triton.lora import lora_add

    # bf16 in the interpreter truncates instead of rounding: one ulp, 2^-7
    check(lora_add, dtype, spec, 2, 1e-5 if dtype == torch.float32 else 2.0**-7)


def test_a_cpu_that_cannot_run_the_variant_gets_the_torch_reference(monkeypatch):
    """Code built with the variant's -march flags would stop on an illegal instruction there."""
    from llm_infer.kernels import cpu_extension, lora_cpu

    monkeypatch.setattr(cpu_extension, "cpu_features", lambda: set())
    assert lora_cpu.load_lora_extension.__wrapped__("avx2") is None
