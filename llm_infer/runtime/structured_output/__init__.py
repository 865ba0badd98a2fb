"""Grammar-constrained output (JSON schema, regex, choice, grammar) and the reasoning gate."""

from llm_infer.runtime.structured_output.params import ConstraintSpec, StructuredOutputsParams

__all__ = ["ConstraintSpec", "StructuredOutputsParams"]
