"""One timing rule for every benchmark: triton.testing.do_bench median (ms) on a GPU; under the
Triton interpreter, the wall-clock of a single call (so that benchmarks run anywhere and cannot rot)."""

from __future__ import annotations

import time

import triton

from moe_kernels import _runtime


def time_ms(fn, *, warmup: int = 25, rep: int = 200) -> float:
    if _runtime.INTERPRET:
        t = time.perf_counter()
        fn()
        return (time.perf_counter() - t) * 1e3
    return triton.testing.do_bench(fn, warmup=warmup, rep=rep, return_mode="median")
