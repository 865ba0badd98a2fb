"""Workers as Ray actors (`parallel.launcher: ray`).

One placement group per pipeline stage (one bundle per rank: 1 GPU on CUDA,
`threads` CPUs on CPU) with the PACK strategy, so a stage's tensor-parallel
ranks share a node when one has room. Ray places and starts the actors; each
actor runs the worker loop, and the calls then go over the controller channel,
not through Ray.

`parallel.ray_address`: `auto` joins the running cluster, `host:port` (or
`ray://...`) joins that one, null starts a private local instance bound to
127.0.0.1 and stops it at shutdown.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import weakref

from llm_infer.config import EngineConfig
from llm_infer.errors import UserError
from llm_infer.executor.channel_executor import ChannelExecutor

try:
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy
except ImportError:  # reported when a config asks for Ray
    ray = None


def node_ip() -> str:
    """The address Ray knows this actor's node by (as registered by `ray start --node-ip-address`)."""
    node_id = ray.get_runtime_context().get_node_id()
    return next(n["NodeManagerAddress"] for n in ray.nodes() if n["NodeID"] == node_id)


_LIVE: "weakref.WeakSet[RayExecutor]" = weakref.WeakSet()  # to say who holds the cluster when placing fails


class RayExecutor(ChannelExecutor):
    """One actor per rank, placed by stage; an actor's death is reported in Ray's words."""

    def __init__(self, config: EngineConfig):
        if ray is None:
            raise UserError("parallel.launcher: ray needs Ray: pip install 'llm-infer[ray]'")
        p = config.parallel
        world = config.world_size
        self._owns_ray = False
        self.actors: list = []
        self.refs: list = []
        self.groups: list = []
        if not ray.is_initialized():
            self._connect(config)
        use_gpu = config.device == "cuda" or (config.device == "auto" and ray.cluster_resources().get("GPU", 0) >= 1)
        threads = config.threads or (1 if use_gpu else max(1, int(ray.cluster_resources().get("CPU", 1)) // world))
        super().__init__(config, self._driver_ip())
        self.bundle = {"GPU": 1, "CPU": 1} if use_gpu else {"CPU": threads}
        self.worker_config = dataclasses.replace(config, threads=threads, device="cuda" if use_gpu else "cpu")
        _LIVE.add(self)
        try:
            self.launch()
        except BaseException:
            self.release()  # nobody will call shutdown on an executor that never started
            raise

    def launch(self) -> None:
        """New placement groups and actors (on whichever nodes have room), then the workers' start-up."""
        try:
            self._place(self.bundle, self.config.parallel.tensor, self.config.parallel.pipeline)
        except BaseException as e:
            self._abort(str(e))
            raise
        self.start(self.worker_config, connect_timeout_s=300.0)

    def _connect(self, config: EngineConfig) -> None:
        address = config.parallel.ray_address
        if address is None:
            # A private instance: loopback only, with enough logical CPUs for one bundle per rank.
            os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
            cpus = max(os.cpu_count() or 1, config.world_size * (config.threads or 1))
            ray.init(num_cpus=cpus, include_dashboard=False, _node_ip_address="127.0.0.1",
                     logging_level=logging.WARNING, configure_logging=True)
            self._owns_ray = True
        else:
            try:
                ray.init(address=address, logging_level=logging.WARNING)
            except ConnectionError as e:
                raise UserError(f"cannot reach the Ray cluster at parallel.ray_address={address!r}: {e}") from None

    @staticmethod
    def _driver_ip() -> str:
        """The address workers reach the controller at: this node's address in the cluster."""
        try:
            return node_ip()
        except StopIteration:
            return ray.util.get_node_ip_address()

    def _place(self, bundle: dict, tp: int, pp: int) -> None:
        held = sum(len(other.actors) for other in _LIVE if other is not self)
        free = ray.available_resources()
        short = any(free.get(k, 0) < v * tp * pp for k, v in bundle.items())
        # Resources held by this very process will not come free while we wait: say so at once.
        wait_s = 0 if (short and held) else 60
        self.groups = [placement_group([bundle] * tp, strategy="PACK") for _ in range(pp)]
        ready, _ = ray.wait([g.ready() for g in self.groups], num_returns=pp, timeout=wait_s)
        if len(ready) < pp:
            hint = (f"; {held} workers belong to another LLM of this process: close() or drop it first"
                    if held else "")
            raise UserError(f"the Ray cluster cannot place {tp * pp} workers of {bundle} (it has {free}){hint}")
        remote = ray.remote(num_cpus=0)(_WorkerActor)
        host, port = self.channel.address
        for rank in range(tp * pp):
            stage, index = divmod(rank, tp)
            actor = remote.options(
                num_cpus=bundle.get("CPU", 0), num_gpus=bundle.get("GPU", 0),
                scheduling_strategy=PlacementGroupSchedulingStrategy(self.groups[stage], index),
            ).remote()
            self.actors.append(actor)
            self.refs.append(actor.serve.remote((host, port), self.channel.authkey, rank, bundle.get("CPU")))

    def describe_death(self, rank: int) -> str:
        done, _ = ray.wait([self.refs[rank]], timeout=2)
        if not done:
            return "its connection closed"
        try:
            ray.get(done[0])
        except Exception as e:  # the actor's own report
            return str(e).strip().splitlines()[0][:300]
        return "the actor returned early"

    def kill_workers(self) -> None:
        for actor in self.actors:
            try:
                ray.kill(actor)
            except Exception:
                pass
        for group in self.groups:
            try:
                remove_placement_group(group)
            except Exception:
                pass
        self.actors, self.groups, self.refs = [], [], []

    def release(self) -> None:
        """Stop the private Ray instance this executor started (joined clusters stay up)."""
        if self._owns_ray and ray.is_initialized():
            ray.shutdown()
            self._owns_ray = False

    def stop_workers(self) -> None:
        ray.wait(self.refs, num_returns=len(self.refs), timeout=10)
        self.kill_workers()


class _WorkerActor:
    """A Ray actor whose one task runs the worker loop until the controller says shutdown."""

    def serve(self, address, authkey: bytes, rank: int, threads: int | None) -> None:
        from llm_infer.executor.worker_loop import serve

        if threads:
            os.environ["OMP_NUM_THREADS"] = str(threads)
        serve(tuple(address), authkey, rank, node_ip(), local_rank=0)
