"""Creating and tearing down the process groups of one rank.

World = tensor x pipeline ranks; global rank = pp_rank * tp + tp_rank; one
tensor-parallel group per pipeline stage (every rank creates every group, in
the same order, as torch.distributed requires). Backend `auto` is NCCL on CUDA
and gloo on CPU. The rendezvous is a TCP store on the rank-0 worker's address.
"""

from __future__ import annotations

import datetime
import os

import torch
import torch.distributed as dist

from llm_infer.parallel.state import ParallelState, set_parallel_state


def resolve_backend(backend: str, device: torch.device) -> str:
    if backend != "auto":
        return backend
    return "nccl" if device.type == "cuda" else "gloo"


def init_parallel_groups(tp: int, pp: int, rank: int, backend: str, master_addr: str, master_port: int,
                         timeout_s: float, device: torch.device, expert_parallel: bool = False) -> ParallelState:
    """`expert_parallel`: MoE layers give each TP rank whole experts (see `parallel/experts.py`)."""
    world = tp * pp
    if world == 1:
        state = ParallelState(expert_parallel=expert_parallel)
        set_parallel_state(state)
        return state
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(
        backend=resolve_backend(backend, device),
        init_method=f"tcp://{_host(master_addr)}:{master_port}",
        world_size=world,
        rank=rank,
        timeout=datetime.timedelta(seconds=timeout_s),
    )
    pp_rank, tp_rank = divmod(rank, tp)
    tp_group = None
    for stage in range(pp):
        group = dist.new_group(list(range(stage * tp, (stage + 1) * tp)))
        if stage == pp_rank:
            tp_group = group
    state = ParallelState(tp_size=tp, tp_rank=tp_rank, pp_size=pp, pp_rank=pp_rank,
                          tp_group=tp_group if tp > 1 else None, expert_parallel=expert_parallel)
    set_parallel_state(state)
    return state


def destroy_parallel_groups() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
    set_parallel_state(ParallelState())


def _host(addr: str) -> str:
    return f"[{addr}]" if ":" in addr else addr


def bind_gloo_to(ip: str) -> None:
    """Make gloo use the interface that carries `ip` (loopback stays loopback)."""
    name = interface_of(ip)
    if name is not None:
        os.environ.setdefault("GLOO_SOCKET_IFNAME", name)


def interface_of(ip: str) -> str | None:
    try:
        import psutil
    except ImportError:
        return "lo" if ip.startswith("127.") else None
    for name, addrs in psutil.net_if_addrs().items():
        if any(a.address == ip for a in addrs):
            return name
    return None
