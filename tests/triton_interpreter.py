"""Test-side fix for Triton's CPU interpreter, shared by the `tests/test_triton_*.py` modules:
import the fixture into a test module (`from tests.triton_interpreter import interpreter_scalar_index`)
and it applies to every test there."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(autouse=True)
def interpreter_scalar_index(monkeypatch):
    """triton 3.6's interpreter turns a runtime loop bound into a Python int with
    `int(<1-element array>)`, which numpy >= 2.4 refuses ("only 0-dimensional arrays can be
    converted"): every `range(runtime_value)` in a kernel fails. Convert with `.item()` instead,
    for the duration of each test (no effect on CUDA)."""
    if os.environ.get("TRITON_INTERPRET") != "1":
        return
    import triton.runtime.interpreter as interp

    original = interp._patch_lang_tensor

    def patched(tensor, scope):
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.item()))

    monkeypatch.setattr(interp, "_patch_lang_tensor", patched)
