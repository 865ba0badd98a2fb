"""The executor family: what runs the workers for the engine, and how the engine talks to them.

- `base.py`: the `Executor` the engine sees (`submit`/`collect` steps, KV cache set-up,
  `collective_rpc(method, *args)` for everything else) and the reply-rank rules.
- `factory.py`: `parallel.launcher` and the world size -> one of the executors below.
- `inprocess.py`: world size 1, the Worker in the controller's process (calls, no pickling).
- `channel.py`: the authenticated TCP line to worker processes and its wire format.
- `channel_executor.py`: the RPC and the pipelined steps over that channel.
- `processes.py` / `ray_actors.py`: start, watch and stop workers as local processes / Ray actors.
- `worker_loop.py`: a worker process: receive a call, `getattr(target, method)(*args)`, reply.
"""
