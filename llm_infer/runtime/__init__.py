"""The engine: scheduler, paged KV cache, model runner, sampler, models."""
