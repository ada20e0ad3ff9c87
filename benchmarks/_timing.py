"""One timing rule for every benchmark: triton.testing.do_bench median (ms) on a GPU; under the
Triton interpreter, the wall-clock of a single call (so that benchmarks run anywhere and cannot rot)."""

from __future__ import annotations

import time

import torch
import triton

from moe_kernels import _runtime


def time_ms(fn, *, warmup: int = 25, rep: int = 200) -> float:
    if _runtime.INTERPRET:
        t = time.perf_counter()
        fn()
        return (time.perf_counter() - t) * 1e3
    return triton.testing.do_bench(fn, warmup=warmup, rep=rep, return_mode="median")


def time_graph_ms(fn) -> float | None:
    """Median of CUDA-graph replays (``triton.testing.do_bench_cudagraph``): the device time without the
    host's launch overhead; None under the interpreter or where graphs are not available."""
    if _runtime.INTERPRET or not hasattr(triton.testing, "do_bench_cudagraph"):
        return None
    return triton.testing.do_bench_cudagraph(fn, rep=100, return_mode="median")


def time_host_ms(fn, *, calls: int = 200) -> float | None:
    """Wall-clock per call of ``calls`` back-to-back calls, one synchronisation at the end: the larger of
    a call's host (launch) time and its device time. Where it exceeds the do_bench/graph time, eager
    timings of that call measure the host, not the kernel. None under the interpreter."""
    if _runtime.INTERPRET:
        return None
    fn()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(calls):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t) * 1e3 / calls
