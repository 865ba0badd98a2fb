"""A worker's adapters: LoRA stacks on its model's linear layers, host copies, and each step's slots.

`attach` gives every dense attention and MLP projection of this rank's layers a `LoRAStack`
(`parallel/lora.py`) of `lora.max_loras` slots. Before a step's forward, `prepare` performs the
plan's slot loads (from the host copy of this rank's shards, read from the adapter file when
there is none: at most `lora.max_cpu_loras` copies, least recently used dropped) and sets the
token -> slot map the stacks read. A plan without adapters leaves the map empty, and the layers
run exactly as without LoRA.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import numpy as np
import torch

from llm_infer.config import LoRAConfig
from llm_infer.errors import UserError
from llm_infer.kernels.dispatch import Kernels
from llm_infer.parallel.lora import LoRAContext, LoRAStack
from llm_infer.parallel.weight_utils import WeightShapeError
from llm_infer.runtime.lora.adapter import open_tensors, read_adapter
from llm_infer.runtime.lora.registry import SlotLoad
from llm_infer.runtime.step_plan import StepPlan

# Decoder module -> its LoRA-capable linears: (attribute, checkpoint projections and their shard ids).
_TARGETS = {
    "self_attn": [("qkv_proj", [("q_proj", "q"), ("k_proj", "k"), ("v_proj", "v")]), ("o_proj", [("o_proj", None)])],
    "mlp": [("gate_up_proj", [("gate_proj", 0), ("up_proj", 1)]), ("down_proj", [("down_proj", None)])],
}

HostCopy = list[tuple[torch.Tensor, torch.Tensor] | None]  # per stack: (a, b), None where untouched


class WorkerLoRA:
    def __init__(self, model: Any, config: LoRAConfig, kernels: Kernels, dtype: torch.dtype, device: torch.device):
        self.model, self.config, self.device = model, config, device
        self.context = LoRAContext()
        self.stacks: list[LoRAStack] = []
        self.target: dict[tuple[int, str], tuple[int, Any]] = {}  # (layer, projection) -> (stack, shard id)
        decoder = model.model
        for layer in decoder.layer_range:
            for part, linears in _TARGETS.items():
                owner = getattr(decoder.layers[layer], part)
                for attr, projections in linears:
                    linear = getattr(owner, attr, None)
                    if linear is None:  # a mixture-of-experts block: its experts take no adapters
                        continue
                    if getattr(linear, "input_perm", None) is not None or getattr(linear, "input_arrives_ordered", False):
                        raise UserError("lora.enabled does not support act-order (desc_act) GPTQ checkpoints")
                    with torch.device(device):
                        stack = LoRAStack(linear, [shard for _, shard in projections], config.max_loras,
                                          config.max_rank, dtype, self.context, kernels.lora_add, kernels.silu_and_mul)
                    linear.lora = stack
                    for name, shard in projections:
                        self.target[(layer, name)] = (len(self.stacks), shard)
                    self.stacks.append(stack)
        model.lora_context = self.context
        self._host: OrderedDict[int, HostCopy] = OrderedDict()
        self._model_config = model.config

    def _host_copy(self, lora_id: int, path: str) -> HostCopy:
        """This rank's shards of adapter `lora_id`, from the host cache or read from `path`."""
        copy = self._host.get(lora_id)
        if copy is not None:
            self._host.move_to_end(lora_id)
            return copy
        adapter = read_adapter(path, self._model_config, self.config.max_rank)
        per_stack: dict[int, dict[Any, tuple[Any, Any, float]]] = {}
        copy = [None] * len(self.stacks)
        with open_tensors(adapter) as f:
            for module in adapter.modules:
                if (module.layer, module.name) not in self.target:
                    continue  # a layer of another pipeline stage
                stack, shard = self.target[(module.layer, module.name)]
                per_stack.setdefault(stack, {})[shard] = (f.get_slice(f"{module.prefix}.lora_A.weight"),
                                                          f.get_slice(f"{module.prefix}.lora_B.weight"), module.scale)
            for stack, weights in per_stack.items():
                try:
                    copy[stack] = self.stacks[stack].shard(weights)
                except WeightShapeError as e:
                    raise UserError(f"LoRA adapter {adapter.weights_file}: {e}") from None
        self._host[lora_id] = copy
        limit = self.config.max_cpu_loras or self.config.max_loras
        while len(self._host) > limit:
            self._host.popitem(last=False)
        return copy

    def load(self, load: SlotLoad) -> None:
        """Fill device slot `load.slot` with adapter `load.lora_id` (stacks it does not adapt: zero)."""
        copy = self._host_copy(load.lora_id, load.path)
        for stack, shard in zip(self.stacks, copy):
            if shard is None:
                stack.clear_slot(load.slot)
            else:
                stack.set_slot(load.slot, *shard)

    def prepare(self, plan: StepPlan) -> None:
        """Before the step's forward: drop forgotten adapters, fill slots, set the token -> slot map."""
        for lora_id in plan.lora_dropped:
            self._host.pop(lora_id, None)
        for load in plan.lora_loads:
            self.load(load)
        if plan.lora_slots is None:
            self.context.token_slots = None
            return
        slots = np.repeat(np.asarray(plan.lora_slots, dtype=np.int64), plan.query_lens)
        self.context.token_slots = torch.from_numpy(slots).to(self.device, non_blocking=True)
