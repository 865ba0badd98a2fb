"""Turns a step plan into tensors, runs this worker's part of the model, samples.

The model runner owns the model, its KV cache and the sampler. It never sees
requests, only the plan's flat token lists; the model never sees the plan,
only tensors and attention metadata.
"""

from __future__ import annotations

import time

import torch

from llm_infer.config import EngineConfig
from llm_infer.errors import UserError
from llm_infer.parallel.communication import tp_broadcast_ints
from llm_infer.parallel.state import get_parallel_state
from llm_infer.kernels import dispatch
from llm_infer.kernels.attention_metadata import AttentionMetadata
from llm_infer.runtime.kv_cache import KVCache, available_memory, bytes_per_block
from llm_infer.runtime.models.decoder import CausalLM, IntermediateTensors
from llm_infer.runtime.models.fused_decode import FusedDecode
from llm_infer.runtime.models.loader import load_weights
from llm_infer.runtime.models.model_config import ModelConfig
from llm_infer.runtime.quant.awq import AWQConfig
from llm_infer.runtime.sampler import Sampler
from llm_infer.runtime.speculative.verify import fill_proposals, logit_rows, verify_step
from llm_infer.runtime.step_inputs import build_inputs
from llm_infer.runtime.step_plan import StepOutput, StepPlan

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_dtype(name: str, model_config: ModelConfig, device: torch.device) -> torch.dtype:
    """`auto` follows vLLM: half precision for full-precision checkpoints (bf16, or fp16 when the
    checkpoint is fp16 and the device is CUDA; CPU fp16 matmuls are slow)."""
    if name != "auto":
        return _DTYPES[name]
    if model_config.torch_dtype == "float16" and device.type == "cuda":
        return torch.float16
    return torch.bfloat16


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise UserError("device: cuda was requested but no CUDA device is available")
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device("cpu")


def build_model(config: EngineConfig, model_dir: str, device: torch.device, kernels: dispatch.Kernels,
                progress: bool = True, pipeline_layers: list[int] | None = None) -> tuple[CausalLM, ModelConfig]:
    """This rank's part of the model in `model_dir`, with its weights (dense or AWQ) loaded."""
    model_config = ModelConfig.from_dir(model_dir)
    dtype = resolve_dtype(config.dtype, model_config, device)
    awq = AWQConfig.from_model_dir(model_dir, model_config.quantization)
    method_for = (lambda prefix: awq.method_for(prefix, kernels)) if awq else None
    with torch.device(device):
        model = CausalLM(model_config, dtype, kernels, method_for, pipeline_layers=pipeline_layers,
                         lm_head_int8=config.quantization.lm_head == "int8")
    load_weights(model, model_dir, progress=progress)
    return model.eval(), model_config


class ModelRunner:
    def __init__(self, config: EngineConfig, model_dir: str, device: torch.device, progress: bool = True):
        self.config = config
        self.model_config = ModelConfig.from_dir(model_dir)
        self.device = device
        self.dtype = resolve_dtype(config.dtype, self.model_config, device)
        self.block_size = config.cache.block_size
        self.max_model_len = self.model_config.max_model_len(config.scheduler.max_model_len)
        self.kernels = dispatch.select_kernels(config.kernels, device, self.dtype)
        self.model, _ = build_model(config, model_dir, device, self.kernels, progress, config.parallel.pipeline_layers)
        self.backend = self.kernels.attention
        self.sampler = Sampler()
        self.kv_cache: KVCache | None = None
        self.graphs = None
        spec = config.speculative
        self.drafter = None
        if spec.method in ("draft", "layers") and get_parallel_state().samples:
            from llm_infer.runtime.models.resolve import resolve_model_dir
            from llm_infer.runtime.speculative.draft import Drafter

            draft_dir = str(resolve_model_dir(spec.draft_model)) if spec.method == "draft" else None
            self.drafter = Drafter(self, spec.method, draft_dir, spec.draft_layers)

    def block_bytes(self) -> int:
        layers = self.model.attention_layers()
        target = bytes_per_block(len(layers), self.block_size, layers[0].num_kv_heads, layers[0].head_dim, self.dtype)
        return target + (self.drafter.block_bytes() if self.drafter is not None else 0)

    def available_blocks(self) -> int:
        """Blocks that fit in `cache.memory_fraction` of the memory still free (or `cache.num_blocks`)."""
        if self.config.cache.num_blocks is not None:
            return self.config.cache.num_blocks
        budget = available_memory(self.device) * self.config.cache.memory_fraction
        return int(budget // self.block_bytes())

    def init_cache(self, num_blocks: int) -> None:
        layers = self.model.attention_layers()
        self.kv_cache = KVCache(len(layers), num_blocks, self.block_size, layers[0].num_kv_heads,
                                layers[0].head_dim, self.dtype, self.device)
        for attn, kv in zip(layers, self.kv_cache.layers):
            attn.k_cache, attn.v_cache = kv[0], kv[1]
        if FusedDecode.supported(self.model, self.kernels.name, get_parallel_state().tp_size):
            self.model.model.fused = FusedDecode(self.model, self.kernels.attention.ext)
        if self.drafter is not None:
            self.drafter.init_cache(num_blocks)
        state = get_parallel_state()
        if self.config.cuda_graphs and self.kernels.name == "cuda" and state.tp_size * state.pp_size == 1:
            from llm_infer.runtime.cuda_graphs import DecodeGraphs

            first = layers[0]
            self.graphs = DecodeGraphs(self.model, self.kernels.attention, self.device, self.block_size,
                                       self.max_model_len, self.config.scheduler.max_num_seqs, first.num_heads,
                                       first.head_dim)
            self.graphs.capture()

    def prepare(self, plan: StepPlan) -> tuple[torch.Tensor, torch.Tensor, AttentionMetadata]:
        return build_inputs(plan, self.block_size, self.backend, self.device)

    @torch.inference_mode()
    def execute(self, plan: StepPlan, intermediate: IntermediateTensors | None = None
                ) -> StepOutput | IntermediateTensors | None:
        """Run one step. Non-final pipeline stages return what the next stage needs;
        the sampling rank returns the sampled tokens; other ranks return None."""
        if plan.block_copies:
            self.kv_cache.copy_blocks(plan.block_copies)
        draft_time, drafted = 0.0, None
        if plan.spec is not None and plan.spec.method != "ngram":
            start = time.perf_counter()
            if self.drafter is not None:
                drafted = self.drafter.propose(plan)
                fill_proposals(plan, drafted[0])
            if get_parallel_state().tp_size > 1:  # the other ranks need the proposals as input
                plan.input_ids = tp_broadcast_ints(plan.input_ids)
            draft_time = time.perf_counter() - start
        start = time.perf_counter()
        if self.graphs is not None and intermediate is None and self.graphs.handles(plan):
            hidden = self.graphs.run(plan)
        else:
            input_ids, positions, meta = self.prepare(plan)
            hidden = self.model(input_ids, positions, meta, intermediate)
        if isinstance(hidden, IntermediateTensors):
            return hidden
        rows, spans = logit_rows(plan)
        logits = self.model.compute_logits(hidden[rows] if rows is not None else hidden)
        if logits is None:
            return None
        out = StepOutput(plan.step_id, [])
        if plan.spec is not None:
            out.accepted = verify_step(plan, logits, spans, drafted, self.sampler)
            out.draft_time_s, out.verify_time_s = draft_time, time.perf_counter() - start
        else:
            sample_rows = [spans[i][1] - 1 for i, s in enumerate(plan.sample) if s]
            if sample_rows:
                out.sampled = self.sampler(logits[sample_rows], plan.sampling)
        for i, want in enumerate(plan.return_logits):
            if want:
                out.logits[plan.seq_ids[i]] = logits[spans[i][0] : spans[i][1]].cpu()
        return out
