"""Whether a model can be split the way the configuration asks."""

from __future__ import annotations

from llm_infer.config import ParallelConfig
from llm_infer.errors import ConfigError
from llm_infer.parallel.pipeline import stage_layer_counts


def check_layout(num_heads: int, num_kv_heads: int, intermediate_size: int, num_layers: int,
                 parallel: ParallelConfig) -> None:
    """One-line ConfigError when tensor/pipeline sizes do not fit the model."""
    tp = parallel.tensor
    if num_heads % tp:
        raise ConfigError(
            f"parallel.tensor={tp} does not divide the model's {num_heads} query heads "
            f"(valid sizes: {', '.join(str(d) for d in _divisors(num_heads) if _kv_ok(num_kv_heads, d))})"
        )
    if not _kv_ok(num_kv_heads, tp):
        raise ConfigError(f"parallel.tensor={tp} neither divides nor is a multiple of the model's "
                          f"{num_kv_heads} KV heads")
    if intermediate_size % tp:
        raise ConfigError(f"parallel.tensor={tp} does not divide the MLP size {intermediate_size}")
    stage_layer_counts(num_layers, parallel.pipeline, parallel.pipeline_layers)


def _kv_ok(kv_heads: int, tp: int) -> bool:
    return kv_heads % tp == 0 or tp % kv_heads == 0


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]
