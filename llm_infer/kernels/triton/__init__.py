"""Triton kernels of the CUDA decode path (GPU only at run time; proven on CPU in CI).

Conventions, shared by every module here:
- One kernel concept per module: the `@triton.jit` kernel(s) and one Python launcher with
  shape/dtype checks (`ValueError` naming the argument) and a docstring giving tensor shapes,
  dtypes and what is written in place. Its torch reference lives in `kernels/torch_ref.py`
  (or `awq_torch.py`); `kernels/dispatch.py` is the one place that chooses between them.
- Launchers never synchronize, never allocate on the host, never read device values on the
  host, and take tile sizes from the module's own `TILES` table (committed, keyed by shape
  class, with defaults valid on every GPU), so that a CUDA graph can capture them and nothing
  is autotuned while the engine serves. `benchmarks/gpu_kernels.py` sweeps the candidates on a
  lent GPU and the winners are committed to the tables.
- Arithmetic in fp32, inputs and outputs in the activation dtype (fp16 or bf16).
- Tests (`tests/test_triton_*.py`) run the kernels on CUDA when present, else under Triton's
  interpreter on CPU tensors (`TRITON_INTERPRET=1`, set by `tests/conftest.py` before triton
  is imported); outputs are poisoned (NaN) before each call.

`triton` is imported only by these modules, which only the CUDA kernel set and the tests import.
"""
