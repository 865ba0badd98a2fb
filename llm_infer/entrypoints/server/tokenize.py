"""`POST /tokenize` and `POST /detokenize`, in vLLM's shapes.

/tokenize takes a `prompt` (text, tokenized as /v1/completions does) or chat `messages` (with
`add_generation_prompt`, `continue_final_message`, `tools`, `tool_choice` and
`chat_template_kwargs`, rendered exactly as /v1/chat/completions renders them: `chat_prompt`),
and answers `{tokens, count, max_model_len, token_strs}` (`token_strs` with `return_token_strs`,
else null). /detokenize takes `tokens` and answers `{prompt}`.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from llm_infer.entrypoints.server.chat_protocol import ChatMessage, Tool, ToolChoice, chat_prompt
from llm_infer.entrypoints.server.errors import ApiError
from llm_infer.entrypoints.server.logprobs import TokenText
from llm_infer.entrypoints.server.protocol import check_fields, validate_body
from llm_infer.errors import UserError

_BODY = ConfigDict(strict=True, extra="ignore")  # unknown fields are caught by check_fields


class TokenizePromptRequest(BaseModel):
    """/tokenize with a prompt."""

    model_config = _BODY
    model: str | None = None
    prompt: str
    add_special_tokens: bool = True
    return_token_strs: bool = False


class TokenizeChatRequest(BaseModel):
    """/tokenize with chat messages: the prompt /v1/chat/completions would build from them."""

    model_config = _BODY
    model: str | None = None
    messages: list[ChatMessage] = Field(min_length=1, description="a non-empty list of {role, content} objects")
    add_generation_prompt: bool | None = None  # default: not continue_final_message
    continue_final_message: bool = False
    add_special_tokens: bool = False
    tools: list[Tool] | None = Field(
        None, description="a list of {type: 'function', function: {name, description, parameters}} objects")
    tool_choice: ToolChoice | None = Field(
        None, description="'none', 'auto', 'required' or {type: 'function', function: {name}}")
    chat_template_kwargs: dict[str, Any] | None = Field(None, description="an object of template variables")
    return_token_strs: bool = False


class DetokenizeRequest(BaseModel):
    model_config = _BODY
    model: str | None = None
    tokens: list[int] = Field(description="a list of token ids")


def tokenize(body: dict, tokenizer: Any, max_model_len: int, token_text: TokenText) -> dict[str, Any]:
    """The /tokenize reply for `body`; a 400 naming the field for any mistake."""
    if "messages" in body:
        check_fields(body, TokenizeChatRequest, ignored=(), refused={})
        chat = validate_body(TokenizeChatRequest, body)
        if chat.add_special_tokens:
            raise ApiError(400, "'add_special_tokens': chat prompts take their special tokens from the chat "
                                "template (only false is accepted)", param="add_special_tokens")
        ids = chat_prompt(tokenizer, chat.messages, chat.tools, chat.tool_choice, chat.add_generation_prompt,
                          chat.continue_final_message, chat.chat_template_kwargs).ids
        strs = chat.return_token_strs
    else:
        check_fields(body, TokenizePromptRequest, ignored=(), refused={})
        req = validate_body(TokenizePromptRequest, body)
        try:
            ids = tokenizer.encode(req.prompt, add_special_tokens=req.add_special_tokens)
        except UserError as e:
            raise ApiError(400, f"'prompt': {e}", param="prompt") from None
        strs = req.return_token_strs
    return {"count": len(ids), "max_model_len": max_model_len, "tokens": ids,
            "token_strs": [token_text.text(t) for t in ids] if strs else None}


def detokenize(body: dict, tokenizer: Any, vocab_size: int) -> dict[str, Any]:
    """The /detokenize reply for `body`: the text of `tokens`, special tokens included (as vLLM)."""
    check_fields(body, DetokenizeRequest, ignored=(), refused={})
    req = validate_body(DetokenizeRequest, body)
    outside = next((t for t in req.tokens if not 0 <= t < vocab_size), None)
    if outside is not None:
        raise ApiError(400, f"'tokens': token id {outside} is outside the vocabulary (size {vocab_size})",
                       param="tokens")
    return {"prompt": tokenizer.decode(req.tokens, skip_special_tokens=False)}
