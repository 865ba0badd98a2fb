"""Where llm-infer keeps what it makes once: converted models and compiled kernels."""

from __future__ import annotations

import os
from pathlib import Path


def llm_infer_home() -> Path:
    """`$LLM_INFER_HOME`, else `~/.cache/llm_infer` (models under `models/`, kernel builds under `build/`)."""
    return Path(os.environ.get("LLM_INFER_HOME") or Path.home() / ".cache" / "llm_infer").expanduser()
