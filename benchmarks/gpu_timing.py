"""Kernel timing on a GPU by CUDA-graph replay over rotating buffers.

Timing single calls between CUDA events measures launch latency (about 20 us for a kernel
that runs 5 us). Instead, `graph_time` captures `calls` invocations of the kernel into one
CUDA graph, each invocation reading a different copy of its inputs (copies are chosen by the
caller so that together they exceed the L2 cache: 60 MB on an H200), replays the graph a few
times, and divides: the per-call figure then includes only the device time and the ~1 us
gap between graph nodes, as it does inside our decode-step graphs.

    copies = copies_to_exceed_l2(bytes_per_call)
    bufs = [make_inputs() for _ in range(copies)]
    seconds = graph_time(lambda i: kernel(*bufs[i]), copies)
"""

from __future__ import annotations

import statistics
from typing import Callable

import torch

L2_FLUSH_BYTES = 256 << 20  # rotate over at least this much memory (4x an H200's 60 MB L2)


def copies_to_exceed_l2(bytes_per_call: int, limit: int = 64) -> int:
    """How many copies of a call's inputs to rotate through so that they exceed the L2 cache."""
    return max(2, min(limit, -(-L2_FLUSH_BYTES // max(1, bytes_per_call))))


def graph_time(call: Callable[[int], object], copies: int, calls: int | None = None, replays: int = 5) -> float:
    """Median seconds per call of `call(i)` (i: which copy of the inputs, 0..copies-1), measured
    by replaying a CUDA graph of `calls` invocations (default: enough to cycle the copies at
    least twice, and at least 64). The callable runs twice per copy before capture (compilation,
    autotuning, lazy allocations)."""
    calls = calls or max(64, 2 * copies)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for i in range(min(copies, calls)):
            call(i)
            call(i)
    torch.cuda.current_stream().wait_stream(stream)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for i in range(calls):
            call(i % copies)
    graph.replay()  # first replay uploads the graph
    torch.cuda.synchronize()
    times = []
    for _ in range(replays):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3 / calls)
    del graph
    return statistics.median(times)


def pct_of_bandwidth(nbytes: int, seconds: float, peak_bytes_per_s: float) -> float:
    """Bytes moved per call over the time, as a percentage of the measured copy bandwidth."""
    return 100.0 * nbytes / seconds / peak_bytes_per_s
