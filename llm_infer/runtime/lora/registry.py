"""The controller's view of LoRA adapters: names, ids and which device slot holds which adapter.

No tensors live here. Each `add` checks the adapter (`adapter.read_adapter`, headers only) and
gives it a fresh id, never reused: the id keys the prefix cache (two adapters, or one name loaded
twice, never share KV blocks) and the workers' host copies. `remove` forgets the name at once (new
requests naming it are refused); requests already admitted keep running with it, and the
workers drop their copies once none is left (`take_dropped`).

Device slots: `lora.max_loras` of them, least recently used first out. `assign` maps a step's
adapters to slots; an adapter not resident is loaded into a free slot, or into the slot of the
least recently used adapter that the step does not use, and the workers are told to load it
(`SlotLoad`) before the step's forward. The scheduler keeps the adapters of the running
requests within the slot count, so a step never needs more slots than there are.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from llm_infer.config import LoRAConfig
from llm_infer.errors import UserError
from llm_infer.runtime.lora.adapter import read_adapter
from llm_infer.runtime.models.model_config import ModelConfig

NO_LORA = 0  # Request.lora_id of a request without an adapter
NO_SLOT = -1  # the slot of such a request's tokens


@dataclass(frozen=True)
class LoRAInfo:
    """A registered adapter: its name, engine-wide id, folder and largest rank."""

    name: str
    id: int
    path: str
    rank: int


@dataclass(frozen=True)
class SlotLoad:
    """Workers: fill device slot `slot` with adapter `lora_id` from the folder `path`."""

    slot: int
    lora_id: int
    path: str


class LoRARegistry:
    def __init__(self, config: LoRAConfig, model_config: ModelConfig):
        self.config = config
        self.model_config = model_config
        self._ids = itertools.count(1)
        self._by_name: dict[str, LoRAInfo] = {}
        self._by_id: dict[int, LoRAInfo] = {}  # every adapter a live request may still use
        self._removed: set[int] = set()  # removed by name; dropped once no request uses them
        self._slot_of: OrderedDict[int, int] = OrderedDict()  # resident id -> slot, least recent first
        self._dropped: list[int] = []

    def add(self, name: str, path: str | Path) -> LoRAInfo:
        """Register the adapter at `path` as `name`. Raises UserError for an empty or taken name, or
        an adapter that does not fit the model (naming the file and tensor)."""
        if not isinstance(name, str) or not name.strip():
            raise UserError("a LoRA adapter needs a non-empty name")
        if name in self._by_name:
            raise UserError(f"a LoRA adapter named {name!r} is already loaded (remove it first)")
        adapter = read_adapter(path, self.model_config, self.config.max_rank)
        info = LoRAInfo(name, next(self._ids), str(adapter.path), adapter.rank)
        self._by_name[name] = info
        self._by_id[info.id] = info
        return info

    def remove(self, name: str) -> LoRAInfo:
        """Forget `name`; requests already using it finish with it. Raises UserError if unknown."""
        info = self._by_name.pop(name, None)
        if info is None:
            raise UserError(f"no LoRA adapter named {name!r} is loaded")
        self._removed.add(info.id)
        return info

    def list(self) -> list[LoRAInfo]:
        return list(self._by_name.values())

    def resolve(self, name: str) -> int:
        """The id of the adapter `name`. Raises UserError when none is loaded under that name."""
        info = self._by_name.get(name)
        if info is None:
            known = ", ".join(sorted(self._by_name)) or "none"
            raise UserError(f"no LoRA adapter named {name!r} is loaded (loaded: {known})")
        return info.id

    def collect(self, in_use: set[int]) -> None:
        """Drop removed adapters that no request in `in_use` (ids of live requests) still uses."""
        for lora_id in [i for i in self._removed if i not in in_use]:
            self._removed.discard(lora_id)
            del self._by_id[lora_id]
            self._slot_of.pop(lora_id, None)
            self._dropped.append(lora_id)

    @property
    def has_removed(self) -> bool:
        return bool(self._removed)

    def take_dropped(self) -> list[int]:
        """Ids whose host copies the workers may free (since the last call)."""
        dropped, self._dropped = self._dropped, []
        return dropped

    def assign(self, lora_ids: list[int]) -> tuple[list[int], list[SlotLoad]]:
        """Slots for a step whose requests use `lora_ids` (NO_LORA: none): each request's slot
        (NO_SLOT for none) and the loads the workers do first. Raises RuntimeError if the step
        uses more adapters than there are slots (the scheduler prevents it)."""
        wanted = list(dict.fromkeys(i for i in lora_ids if i != NO_LORA))
        if len(wanted) > self.config.max_loras:
            raise RuntimeError(f"a step uses {len(wanted)} adapters, more than lora.max_loras={self.config.max_loras}")
        loads = []
        for lora_id in wanted:
            if lora_id in self._slot_of:
                self._slot_of.move_to_end(lora_id)
                continue
            used = set(self._slot_of.values())
            free = next((s for s in range(self.config.max_loras) if s not in used), None)
            if free is None:
                victim = next(i for i in self._slot_of if i not in wanted)
                free = self._slot_of.pop(victim)
            self._slot_of[lora_id] = free
            loads.append(SlotLoad(free, lora_id, self._by_id[lora_id].path))
        return [self._slot_of[i] if i != NO_LORA else NO_SLOT for i in lora_ids], loads

    def forget_slots(self) -> None:
        """The workers were replaced: no slot holds anything."""
        self._slot_of.clear()
