"""GPU benchmark sections: each module has `plan() -> dict` (what it would measure, no CUDA needed)
and `run(peak_bytes_per_s, budget_s) -> dict` (the measurements, on CUDA)."""
