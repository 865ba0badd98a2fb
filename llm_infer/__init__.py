"""llm-infer: a distributed inference runtime for Qwen-family language models."""

from llm_infer.entrypoints.llm import LLM
from llm_infer.runtime.outputs import RequestOutput
from llm_infer.runtime.pooling import PoolingParams
from llm_infer.runtime.sampling_params import SamplingParams

__all__ = ["LLM", "PoolingParams", "SamplingParams", "RequestOutput"]
__version__ = "0.1.0"
