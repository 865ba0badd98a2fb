"""The Python API: `LLM(config).generate(prompts, params)`."""

from __future__ import annotations

import dataclasses
import weakref
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import torch

from llm_infer.config import EngineConfig, load_config
from llm_infer.errors import UserError
from llm_infer.executor.factory import make_executor
from llm_infer.parallel.layout import check_layout
from llm_infer.runtime.engine import LLMEngine
from llm_infer.runtime.lora.registry import LoRAInfo
from llm_infer.runtime.models.build import resolve_device, resolve_model
from llm_infer.runtime.models.resolve import resolve_model_dir
from llm_infer.runtime.output_parsers import ChatOutputParser
from llm_infer.runtime.models.sentence_transformers import resolve_pooling_method
from llm_infer.runtime.outputs import RequestOutput
from llm_infer.runtime.pooling import PoolingParams
from llm_infer.runtime.sampling_params import SamplingParams
from llm_infer.runtime.structured_output.params import ReasoningStart
from llm_infer.runtime.structured_output.tool_calls import one_call_stop, tool_call_constraint
from llm_infer.runtime.tokenizer import Tokenizer

Prompt = str | list[int]
Message = dict[str, Any]


class LLM:
    """An inference engine over one model.

    `config` is a YAML path, a dict or an `EngineConfig`; keyword overrides use
    the same keys, with sections as dicts (`LLM("c.yaml", dtype="float32",
    scheduler={"max_num_seqs": 4})`) or dotted strings in `overrides`.
    `lora_modules` ({name: adapter folder}) loads LoRA adapters at start (`add_lora`; needs
    `lora.enabled`).
    """

    def __init__(self, config: str | Path | Mapping[str, Any] | EngineConfig | None = None,
                 overrides: Mapping[str, Any] | list[str] | None = None, progress: bool = True,
                 lora_modules: Mapping[str, str | Path] | None = None, **kwargs: Any):
        flat = dict(_flatten(kwargs))
        if isinstance(overrides, Mapping):
            flat.update(overrides)
            overrides = None
        self.config = load_config(config, overrides)
        if flat:
            self.config = load_config(self.config, flat)
        # The model folder, its config and the context length, read once here (each worker does the same).
        # `device: cuda` is not checked here: the workers may sit on other (GPU) nodes than this one.
        device = torch.device("cuda") if self.config.device == "cuda" else resolve_device(self.config.device)
        resolved = resolve_model(self.config.model, self.config.dtype, device, self.config.scheduler.max_model_len,
                                 self.config.model_task)
        self.model_config = resolved.config
        self.task = resolved.task  # `generate` or `embed` (embeddings only)
        # What `embed` does unless told otherwise (config `pooling`, `auto` read from the model folder).
        self.pooling = PoolingParams(resolve_pooling_method(self.config.pooling.method, resolved.model_dir),
                                     self.config.pooling.normalize)
        self.tokenizer = Tokenizer(resolve_model_dir(self.config.tokenizer, "tokenizer") if self.config.tokenizer
                                   else resolved.model_dir)
        self.chat_parser = ChatOutputParser(self.tokenizer, self.config.chat.reasoning_parser,
                                            self.config.chat.tool_call_parser)
        mc = self.model_config
        check_layout(mc.num_heads, mc.num_kv_heads, mc.intermediate_size, mc.num_layers, self.config.parallel,
                     mc.moe)
        self._executor = make_executor(self.config, progress=progress)
        # Workers (processes, Ray actors and placement groups) are released by close(), or when this
        # object is garbage collected, or at interpreter exit, whichever comes first. The finalizer
        # holds the executor, never the LLM, so dropping the LLM is enough.
        self._release = weakref.finalize(self, self._executor.shutdown)
        try:
            self.engine = LLMEngine(self.config, self._executor, self.tokenizer, self.model_config)
            for name, path in (lora_modules or {}).items():
                self.engine.add_lora(name, str(path))
        except BaseException:
            self._release()
            raise

    def generate(self, prompts: Prompt | Sequence[Prompt],
                 params: SamplingParams | Sequence[SamplingParams] | None = None) -> list[RequestOutput]:
        """One finished output per prompt, in order. Prompts are strings or token-id lists."""
        self._check_generates()
        batch = _as_prompt_list(prompts)
        param_list = _as_param_list(params, len(batch))
        return self._run([(p, sp, False) for p, sp in zip(batch, param_list)])

    def embed(self, prompts: Prompt | Sequence[Prompt], pooling: PoolingParams | None = None) -> list[RequestOutput]:
        """One finished output per prompt (a string or token-id list), in order, its `embedding` a
        float32 vector: the last hidden states (after the final norm) pooled as `pooling` says
        (default `self.pooling`, from the config's `pooling` section). The prompts are prefilled
        through the same batcher, prefix cache and workers as generation; nothing is generated."""
        batch = _as_prompt_list(prompts)
        return self._run([(p, None, False) for p in batch], pooling=pooling or self.pooling)

    def chat(self, messages: list[Message] | list[list[Message]],
             params: SamplingParams | Sequence[SamplingParams] | None = None, *,
             tools: list[dict[str, Any]] | None = None, chat_template_kwargs: dict[str, Any] | None = None,
             add_generation_prompt: bool | None = None, continue_final_message: bool = False,
             tool_choice: str | dict[str, Any] | None = None,
             parallel_tool_calls: bool = True) -> RequestOutput | list[RequestOutput]:
        """Render the conversation(s) with the model's chat template and generate the reply.

        `tools` (OpenAI's tool list), `chat_template_kwargs` (e.g. `{"enable_thinking": False}`),
        `add_generation_prompt` (default: `not continue_final_message`) and `continue_final_message`
        (the reply continues the last, assistant, message) reach the template as
        `Tokenizer.encode_chat` describes; text in the messages never becomes control tokens.
        Each sample's `message` is its reply parsed by the configured parsers (`chat` section):
        `content`, `reasoning_content` and, when `tools` are given and `tool_choice` is not
        `"none"`, `tool_calls` (`message.finish_reason(sample.finish_reason)` gives OpenAI's
        `tool_calls` reason). A template that does not handle tools gets them in the messages
        (`runtime/tool_prompt.py`). `tool_choice` `"required"` or `{"type": "function",
        "function": {"name": ...}}` constrains the reply to calls of the tools
        (`structured_output/tool_calls.py`; a UserError without a tool-call parser);
        `parallel_tool_calls=False` allows one call (with `auto` the reply ends after it). With a
        reasoning parser the reply's reasoning is unconstrained, and
        `SamplingParams.thinking_budget` caps it. A reply cut by max_tokens never shows an
        unfinished tool call.
        """
        self._check_generates()
        if not isinstance(messages, list) or not messages:
            raise UserError("messages must be a non-empty list of {role, content} objects")
        single = isinstance(messages[0], dict)
        conversations = [messages] if single else messages
        prompts = [self.tokenizer.encode_chat(c, add_generation_prompt, tools=tools, tool_choice=tool_choice,
                                              continue_final_message=continue_final_message,
                                              chat_template_kwargs=chat_template_kwargs) for c in conversations]
        param_list = _as_param_list(params, len(prompts))
        forced = tool_call_constraint(tools or [], tool_choice, parallel_tool_calls)
        one_call = bool(tools) and tool_choice in (None, "auto") and not parallel_tool_calls
        if (forced is not None or one_call) and self.chat_parser.tool_calls is None:
            raise UserError("tool_choice 'required' or a named function, and parallel_tool_calls=False, need a "
                            "tool-call parser (chat.tool_call_parser is off)")
        if forced is not None:
            if any(p.structured_outputs is not None for p in param_list):
                raise UserError("tool_choice 'required' or a named function cannot be combined with structured_outputs")
            param_list = [dataclasses.replace(p, structured_outputs=forced) for p in param_list]
        if one_call:
            param_list = [dataclasses.replace(p, stop=one_call_stop(p.stop)) for p in param_list]
        if any(p.thinking_budget is not None for p in param_list) and self.chat_parser.budget_problem():
            raise UserError(f"thinking_budget cannot be enforced: {self.chat_parser.budget_problem()}")
        outputs = self._run([(ids, p, False) for ids, p in zip(prompts, param_list)],
                            [self.chat_parser.reasoning_start(ids) for ids in prompts])
        for out in outputs:
            for sample in out.outputs:
                sample.message = self.chat_parser.parse(sample.text, out.prompt_token_ids,
                                                        parse_tools=bool(tools) and tool_choice != "none",
                                                        cut=sample.finish_reason == "length")
        return outputs[0] if single else outputs

    def stream(self, prompt: Prompt, params: SamplingParams | None = None) -> Iterator[RequestOutput]:
        """Yield an update (with `new_text`) every step until the request finishes."""
        self._check_open()
        self._check_generates()
        request_id = self.engine.add_request(prompt, params)
        try:
            while True:
                for out in self.engine.step():
                    if out.request_id == request_id:
                        yield out
                        if out.finished:
                            return
        finally:
            self.engine.abort(request_id)

    def logits(self, token_ids: list[int]) -> torch.Tensor:
        """float32 logits `[len(token_ids), vocab]` of every position, computed through the paged cache
        (a prompt may fill the whole context, `max_model_len` tokens: nothing is generated)."""
        self._check_generates()
        (out,) = self._run([(list(token_ids), SamplingParams(max_tokens=0, temperature=0), True)])
        return out.logits[: len(token_ids)]

    def _run(self, requests: list[tuple[Prompt, SamplingParams | None, bool]],
             reasoning: list[ReasoningStart | None] | None = None,
             pooling: PoolingParams | None = None) -> list[RequestOutput]:
        self._check_open()
        ids = []
        try:
            for i, (prompt, sp, want_logits) in enumerate(requests):
                ids.append(self.engine.add_request(prompt, sp, return_logits=want_logits,
                                                   reasoning=reasoning[i] if reasoning else None, pooling=pooling))
            done: dict[str, RequestOutput] = {}
            while len(done) < len(ids):
                for out in self.engine.step():
                    if out.finished:
                        done[out.request_id] = out
            return [done[i] for i in ids]
        finally:
            for i in ids:
                self.engine.abort(i)

    def worker_info(self) -> dict[str, str]:
        """What the sampling rank runs: device, dtype, kernel set (`cpu`, `cuda`, `torch`) and
        forward path (`reference`, `fused-cpu`, `cuda-graphs`)."""
        self._check_open()
        p = self.config.parallel
        return self._executor.collective_rpc("describe", reply_rank=(p.pipeline - 1) * p.tensor)

    def close(self) -> None:
        """Stop the workers and release what they hold. Idempotent; the LLM cannot be used afterwards."""
        self._release()

    @property
    def closed(self) -> bool:
        return not self._release.alive

    def add_lora(self, name: str, path: str | Path) -> LoRAInfo:
        """Load the PEFT LoRA adapter folder `path` as `name` (`SamplingParams(lora=name)` uses it);
        see `LLMEngine.add_lora` for what it checks and the errors it raises."""
        self._check_open()
        return self.engine.add_lora(name, str(path))

    def remove_lora(self, name: str) -> LoRAInfo:
        """Forget adapter `name` (requests already added finish with it). UserError if unknown."""
        self._check_open()
        return self.engine.remove_lora(name)

    def list_loras(self) -> list[LoRAInfo]:
        """The loaded adapters (name, id, path, rank), in the order they were added."""
        return self.engine.list_loras()

    def _check_open(self) -> None:
        if self.closed:
            raise UserError("this LLM has been closed; create a new one")

    def _check_generates(self) -> None:
        if self.task == "embed":
            raise UserError("this model serves embeddings only (model_task: embed): use LLM.embed")

    def __enter__(self) -> "LLM":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _flatten(data: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in data.items():
        if isinstance(value, Mapping):
            yield from _flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def _as_prompt_list(prompts: Prompt | Sequence[Prompt]) -> list[Prompt]:
    if isinstance(prompts, str):
        return [prompts]
    prompts = list(prompts)
    if prompts and all(isinstance(t, int) for t in prompts):
        return [prompts]
    for p in prompts:
        if not isinstance(p, str) and not (isinstance(p, list) and all(isinstance(t, int) for t in p)):
            raise UserError("each prompt must be a string or a list of token ids")
    return prompts


def _as_param_list(params: SamplingParams | Sequence[SamplingParams] | None, n: int) -> list[SamplingParams]:
    if params is None or isinstance(params, SamplingParams):
        return [params or SamplingParams()] * n
    params = list(params)
    if len(params) != n:
        raise UserError(f"got {len(params)} sampling parameter sets for {n} prompts")
    return params
