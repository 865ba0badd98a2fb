"""Entry points: the Python API (`LLM`), the CLI, executors that start workers, job submission."""
