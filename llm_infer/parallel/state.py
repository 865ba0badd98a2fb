"""Who this process is in the parallel layout: its tensor and pipeline ranks and groups.

Global rank = pp_rank * tp_size + tp_rank; one tensor-parallel group per
pipeline stage. A single process is the degenerate layout (1 x 1, no groups).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ParallelState:
    tp_size: int = 1
    tp_rank: int = 0
    pp_size: int = 1
    pp_rank: int = 0
    tp_group: Any = None  # torch.distributed ProcessGroup of this stage, None when tp_size == 1
    expert_parallel: bool = False  # MoE experts: whole experts per TP rank instead of slices of each

    @property
    def is_first_stage(self) -> bool:
        return self.pp_rank == 0

    @property
    def is_last_stage(self) -> bool:
        return self.pp_rank == self.pp_size - 1

    @property
    def samples(self) -> bool:
        """The one rank that computes full logits and samples: TP rank 0 of the last stage."""
        return self.is_last_stage and self.tp_rank == 0

    def stage_rank(self, pp_rank: int) -> int:
        """Global rank of the same TP position on another stage."""
        return pp_rank * self.tp_size + self.tp_rank


_state = ParallelState()


def get_parallel_state() -> ParallelState:
    return _state


def set_parallel_state(state: ParallelState) -> None:
    global _state
    _state = state
