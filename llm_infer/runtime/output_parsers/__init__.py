"""Chat replies parsed into reasoning, content and tool calls (see `chat_output.py`)."""

from llm_infer.runtime.output_parsers.chat_output import ChatDelta, ChatOutputParser, ChatOutputStream, ParsedMessage
from llm_infer.runtime.output_parsers.reasoning import Qwen3ReasoningParser
from llm_infer.runtime.output_parsers.tool_calls import HermesToolParser, ToolCall

__all__ = ["ChatDelta", "ChatOutputParser", "ChatOutputStream", "HermesToolParser", "ParsedMessage",
           "Qwen3ReasoningParser", "ToolCall"]
