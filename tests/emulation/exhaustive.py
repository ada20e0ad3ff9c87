"""All 2^32 fp32 bit patterns through the fp8 and e2m1 encoders vs the independent oracle.

Run: ``nox -s exhaustive`` or ``python -m tests.emulation.exhaustive [--chunk-bits 24] [--jobs N]``.
Each chunk of patterns is encoded by ``emulation.encode`` (table lookup built from the grid
definition) and by ``tests.emulation.oracle`` (nearest-value search), under both overflow policies
and both tie rules; any mismatch is printed with its bit pattern and the run exits non-zero.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np

FORMATS = ("e2m1", "e4m3fn", "e4m3fnuz", "e5m2")
POLICIES = [(o, t) for o in ("satfinite", "ocp") for t in ("even", "away", "zero")]


def check_chunk(start: int, size: int) -> list[str]:
    from emulation import encode

    from .oracle import oracle_encode

    x = (np.arange(start, start + size, dtype=np.uint64).astype(np.uint32)).view(np.float32)
    problems = []
    for fmt in FORMATS:
        for overflow, ties in POLICIES:
            ours = encode(x, fmt, overflow=overflow, ties=ties)
            want = oracle_encode(x, fmt, overflow, ties)
            bad = np.flatnonzero(ours != want)
            if bad.size:
                i = bad[0]
                problems.append(f"{fmt}/{overflow}/{ties}: {bad.size} mismatches, first 0x{x.view(np.uint32)[i]:08x}: "
                                f"ours 0x{ours[i]:02x} oracle 0x{want[i]:02x}")
    return problems


def run(chunk_bits: int = 24, jobs: int | None = None, limit_chunks: int | None = None,
        first_chunk: int = 0) -> list[str]:
    size = 1 << chunk_bits
    starts = list(range(0, 1 << 32, size))[first_chunk:][:limit_chunks]
    jobs = jobs or os.cpu_count() or 1
    problems, t0 = [], time.perf_counter()
    with ProcessPoolExecutor(jobs) as pool:
        for done, found in enumerate(pool.map(check_chunk, starts, [size] * len(starts)), 1):
            problems += found
            frac = done / len(starts)
            bar = "#" * int(40 * frac)
            eta = (time.perf_counter() - t0) / frac * (1 - frac)
            print(f"\r[{bar:<40}] {done}/{len(starts)} chunks, {len(problems)} problems, eta {eta:5.0f}s",
                  end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    return problems


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chunk-bits", type=int, default=24)
    ap.add_argument("--jobs", type=int, default=None)
    ap.add_argument("--limit-chunks", type=int, default=None, help="check only N chunks")
    ap.add_argument("--first-chunk", type=int, default=0, help="resume a sweep at this chunk")
    args = ap.parse_args(argv)
    problems = run(args.chunk_bits, args.jobs, args.limit_chunks, args.first_chunk)
    for p in problems:
        print(p)
    total_chunks = (1 << 32) >> args.chunk_bits
    n_chunks = min(total_chunks - args.first_chunk, args.limit_chunks or total_chunks)
    n = n_chunks << args.chunk_bits
    print(f"chunks {args.first_chunk}..{args.first_chunk + n_chunks - 1} of {total_chunks}")
    print(f"{n} fp32 patterns x {len(FORMATS)} formats x {len(POLICIES)} policies: "
          f"{'OK' if not problems else f'{len(problems)} FAILED'}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
