"""Where a configured model name points on disk."""

from __future__ import annotations

from pathlib import Path

from llm_infer.errors import UserError


def resolve_model_dir(name: str, what: str = "model") -> Path:
    """`default` is the embedded SmolLM2 (converted once into the user cache); anything
    else must be a Hugging Face-format folder with config.json and safetensors (a `what`
    "tokenizer" folder needs only to exist: the tokenizer checks its own files). Raises
    UserError naming `what`."""
    if name == "default":
        from llm_infer.runtime.models.default_model import ensure_default_model

        return ensure_default_model()
    path = Path(name).expanduser()
    if not path.is_dir():
        raise UserError(f"{what} folder not found: {name}")
    if what != "tokenizer" and not (path / "config.json").is_file():
        raise UserError(f"{what} folder {name} has no config.json")
    return path
