"""Turns a step plan into tensors, runs this worker's part of the model, samples.

The model runner owns the model, its KV cache and the sampler. It never sees
requests, only the plan's flat token lists; the model never sees the plan,
only tensors and attention metadata.
"""

from __future__ import annotations

import numpy as np
import torch

from llm_infer.config import EngineConfig
from llm_infer.errors import UserError
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


class ModelRunner:
    def __init__(self, config: EngineConfig, model_dir: str, device: torch.device, progress: bool = True):
        self.config = config
        self.model_config = ModelConfig.from_dir(model_dir)
        self.device = device
        self.dtype = resolve_dtype(config.dtype, self.model_config, device)
        self.block_size = config.cache.block_size
        self.kernels = dispatch.select_kernels(config.kernels, device, self.dtype)
        awq = AWQConfig.from_model_dir(model_dir, self.model_config.quantization)
        method_for = (lambda prefix: awq.method_for(prefix, self.kernels)) if awq else None
        with torch.device(device):
            self.model = CausalLM(self.model_config, self.dtype, self.kernels, method_for,
                                  pipeline_layers=config.parallel.pipeline_layers,
                                  lm_head_int8=config.quantization.lm_head == "int8")
        load_weights(self.model, model_dir, progress=progress)
        self.model.eval()
        self.backend = self.kernels.attention
        self.sampler = Sampler()
        self.kv_cache: KVCache | None = None

    def block_bytes(self) -> int:
        layers = self.model.attention_layers()
        return bytes_per_block(len(layers), self.block_size, layers[0].num_kv_heads, layers[0].head_dim, self.dtype)

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

    def prepare(self, plan: StepPlan) -> tuple[torch.Tensor, torch.Tensor, AttentionMetadata]:
        # Index arithmetic in numpy: a decode step is a handful of tiny arrays, where each torch
        # op would cost more than the arithmetic.
        dev = self.device
        q_lens = np.asarray(plan.query_lens, dtype=np.int64)
        seq_of_token = np.repeat(np.arange(plan.num_seqs), q_lens)
        first_token = np.cumsum(q_lens) - q_lens
        starts = np.asarray(plan.seq_lens, dtype=np.int64) - q_lens
        positions = starts[seq_of_token] + np.arange(plan.num_tokens) - first_token[seq_of_token]
        width = max(len(t) for t in plan.block_tables)
        tables = np.zeros((plan.num_seqs, width), dtype=np.int64)
        for i, t in enumerate(plan.block_tables):
            tables[i, : len(t)] = t
        slots = tables[seq_of_token, positions // self.block_size] * self.block_size + positions % self.block_size
        meta = AttentionMetadata(list(plan.query_lens), list(plan.seq_lens), torch.from_numpy(slots).to(dev),
                                 torch.from_numpy(tables).to(dev), self.block_size, self.backend)
        self.backend.prepare(meta)
        input_ids = torch.tensor(plan.input_ids, dtype=torch.int64, device=dev)
        return input_ids, torch.from_numpy(positions).to(dev), meta

    @torch.inference_mode()
    def execute(self, plan: StepPlan, intermediate: IntermediateTensors | None = None
                ) -> StepOutput | IntermediateTensors | None:
        """Run one step. Non-final pipeline stages return what the next stage needs;
        the sampling rank returns the sampled tokens; other ranks return None."""
        input_ids, positions, meta = self.prepare(plan)
        hidden = self.model(input_ids, positions, meta, intermediate)
        if isinstance(hidden, IntermediateTensors):
            return hidden
        rows, spans = self._logit_rows(plan)
        logits = self.model.compute_logits(hidden[rows] if rows is not None else hidden)
        if logits is None:
            return None
        out = StepOutput(plan.step_id, [])
        sample_rows = [spans[i][1] - 1 for i, s in enumerate(plan.sample) if s]
        if sample_rows:
            out.sampled = self.sampler(logits[sample_rows], plan.sampling)
        for i, want in enumerate(plan.return_logits):
            if want:
                out.logits[plan.seq_ids[i]] = logits[spans[i][0] : spans[i][1]].cpu()
        return out

    @staticmethod
    def _logit_rows(plan: StepPlan) -> tuple[list[int] | None, list[tuple[int, int]]]:
        """Hidden rows needing logits (None: all) and each sequence's span within them."""
        rows: list[int] = []
        spans: list[tuple[int, int]] = []
        start = 0
        for n, sample, want_all in zip(plan.query_lens, plan.sample, plan.return_logits):
            first = len(rows)
            if want_all:
                rows.extend(range(start, start + n))
            elif sample:
                rows.append(start + n - 1)
            spans.append((first, len(rows)))
            start += n
        return (None if len(rows) == plan.num_tokens else rows), spans
