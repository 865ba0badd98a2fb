"""Whether a model can be split the way the configuration asks."""

from __future__ import annotations

from typing import TYPE_CHECKING

from llm_infer.config import ParallelConfig
from llm_infer.errors import ConfigError
from llm_infer.parallel.pipeline import stage_layer_counts

if TYPE_CHECKING:  # for the annotation only: parallel/ does not import the runtime above it
    from llm_infer.runtime.models.moe_config import MoEConfig


def check_layout(num_heads: int, num_kv_heads: int, intermediate_size: int, num_layers: int,
                 parallel: ParallelConfig, moe: MoEConfig | None = None) -> None:
    """One-line ConfigError when tensor/pipeline sizes (or, for MoE models, the expert layout)
    do not fit the model."""
    tp = parallel.tensor
    if moe is not None:
        _check_experts(moe, parallel)
    elif parallel.expert_parallel:
        raise ConfigError("parallel.expert_parallel needs a mixture-of-experts model")
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


def _check_experts(moe: MoEConfig, parallel: ParallelConfig) -> None:
    tp = parallel.tensor
    if parallel.expert_parallel and moe.num_experts % tp:
        raise ConfigError(f"parallel.tensor={tp} does not divide the model's {moe.num_experts} experts for "
                          f"expert parallelism (valid sizes: {', '.join(map(str, _divisors(moe.num_experts)))})")
    if not parallel.expert_parallel and moe.intermediate_size % tp:
        raise ConfigError(f"parallel.tensor={tp} does not divide the expert size {moe.intermediate_size} "
                          "(parallel.expert_parallel: true distributes whole experts instead)")
    if moe.shared_expert_intermediate_size % tp:
        raise ConfigError(f"parallel.tensor={tp} does not divide the shared expert size "
                          f"{moe.shared_expert_intermediate_size}")


def _kv_ok(kv_heads: int, tp: int) -> bool:
    return kv_heads % tp == 0 or tp % kv_heads == 0


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]
