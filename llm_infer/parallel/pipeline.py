"""Which decoder layers each pipeline stage owns."""

from __future__ import annotations

from llm_infer.errors import ConfigError


def stage_layer_counts(num_layers: int, stages: int, override: list[int] | None = None) -> list[int]:
    """Even split with the remainder on the first stages, unless `override` lists the counts."""
    if override is not None:
        if sum(override) != num_layers:
            raise ConfigError(
                f"parallel.pipeline_layers sums to {sum(override)} but the model has {num_layers} layers"
            )
        return list(override)
    if stages > num_layers:
        raise ConfigError(f"parallel.pipeline={stages} exceeds the model's {num_layers} layers")
    base, extra = divmod(num_layers, stages)
    return [base + (1 if i < extra else 0) for i in range(stages)]


def stage_layer_range(num_layers: int, stages: int, stage: int, override: list[int] | None = None) -> range:
    counts = stage_layer_counts(num_layers, stages, override)
    start = sum(counts[:stage])
    return range(start, start + counts[stage])
