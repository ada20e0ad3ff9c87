"""Profile one bounded reference (``moe_ref.bounded``) of the report at a given shape and M:
``python -m benchmarks.profile_reference E H I topk M act_dtype [device]`` (where its time goes)."""

from __future__ import annotations

import cProfile
import pstats
import sys
import time

from moe_oracle import references as refs
from moe_ref.bounded import moe_reference_bounded


def main(argv: list[str]) -> None:
    E, H, I, topk, M = map(int, argv[:5])  # noqa: E741
    act, device = argv[5], (argv[6] if len(argv) > 6 else None)
    t = time.perf_counter()
    p = refs.problem({}, dict(shape=dict(E=E, H=H, I=I, topk=topk), M=M), 7)
    print(f"problem drawn in {time.perf_counter() - t:.1f}s", flush=True)
    kw = dict(act_dtype=act, mma_k=16, gate_mode="separated", device=device, **p.biases())
    t = time.perf_counter()
    moe_reference_bounded(*p.args(), **kw)  # warm: uploads, CUDA context
    print(f"first call {time.perf_counter() - t:.1f}s", flush=True)
    prof = cProfile.Profile()
    t = time.perf_counter()
    prof.enable()
    moe_reference_bounded(*p.args(), **kw)
    prof.disable()
    print(f"E={E} H={H} I={I} top-{topk} M={M} {act} on {device or 'host'}: {time.perf_counter() - t:.1f}s")
    pstats.Stats(prof).sort_stats("tottime").print_stats(14)


if __name__ == "__main__":
    main(sys.argv[1:])
