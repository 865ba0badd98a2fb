"""Weight quantization: AWQ int4 checkpoints (loading, and making them)."""
