"""What a sentence-transformers model folder says about embeddings (Qwen3-Embedding ships as one).

`modules.json` lists the modules the folder's model runs: the transformer, then (typically) a
`Pooling` module whose `config.json` names the pooling mode (`pooling_mode_lasttoken`,
`pooling_mode_mean_tokens`, `pooling_mode_cls_token`, ...), then optionally `Normalize`. Such
a folder serves embeddings (`model_task: auto` -> `embed`), pooled its way (`pooling.method:
auto`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from llm_infer.errors import UserError

# sentence-transformers' pooling-mode keys -> our methods
_MODES = {"pooling_mode_lasttoken": "last", "pooling_mode_mean_tokens": "mean", "pooling_mode_cls_token": "cls"}


@dataclass(frozen=True)
class SentenceTransformersInfo:
    """`pooling`: our method for the folder's pooling mode (None: no Pooling module); `mode`: the
    sentence-transformers mode when it is one we do not implement (max, weightedmean, ...)."""

    pooling: str | None
    normalize: bool
    mode: str | None = None


def read_sentence_transformers(model_dir: str | Path) -> SentenceTransformersInfo | None:
    """The folder's sentence-transformers setup, or None when it has no `modules.json`."""
    path = Path(model_dir) / "modules.json"
    if not path.is_file():
        return None
    try:
        modules = json.loads(path.read_text())
        types = {str(m.get("type", "")).rsplit(".", 1)[-1]: str(m.get("path", "")) for m in modules}
    except (ValueError, AttributeError, TypeError):
        raise UserError(f"{path}: not a sentence-transformers module list") from None
    if "Pooling" not in types:
        return SentenceTransformersInfo(None, "Normalize" in types)
    config = Path(model_dir) / types["Pooling"] / "config.json"
    try:
        modes = [key for key, on in json.loads(config.read_text()).items() if key.startswith("pooling_mode") and on]
    except (OSError, ValueError, AttributeError):
        raise UserError(f"{config}: missing or not valid JSON (the sentence-transformers pooling config)") from None
    ours = [_MODES[m] for m in modes if m in _MODES]
    if len(modes) != 1 or not ours:
        return SentenceTransformersInfo(None, "Normalize" in types, "+".join(modes) or "none")
    return SentenceTransformersInfo(ours[0], "Normalize" in types)


def resolve_task(model_task: str, model_dir: str | Path) -> str:
    """`generate` or `embed`: `model_task` as configured, `auto` -> `embed` for a sentence-transformers folder."""
    if model_task != "auto":
        return model_task
    return "embed" if read_sentence_transformers(model_dir) is not None else "generate"


def resolve_pooling_method(method: str, model_dir: str | Path) -> str:
    """`pooling.method` as configured, `auto` -> the folder's sentence-transformers pooling, else
    `last`; a UserError for a sentence-transformers mode we do not implement."""
    if method != "auto":
        return method
    info = read_sentence_transformers(model_dir)
    if info is None or (info.pooling is None and info.mode is None):
        return "last"
    if info.pooling is None:
        raise UserError(f"the model's sentence-transformers pooling ({info.mode}) is not supported; set "
                        "pooling.method to last, mean or cls")
    return info.pooling
