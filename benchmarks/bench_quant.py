"""Quantization kernels vs a device-to-device copy of the same bytes (issue target: >= 80%).

For each x [M, K] bf16 the kernel reads 2*M*K bytes and writes its codes and scales; a copy of a
buffer of (read + written) / 2 bytes moves the same traffic. Fraction = t_copy / t_kernel.
Runs on a GPU; without one it runs small shapes under the interpreter so that it cannot rot.
"""

from __future__ import annotations

import argparse
import functools
import json

# isort: off
import moe_kernels as mk  # before triton: it picks the interpreter on a machine without a GPU
import torch
from moe_kernels import _runtime
# isort: on

from benchmarks._timing import time_ms  # noqa: E402

GPU_SHAPES = [(8192, 2880), (16384, 7168)]
CPU_SHAPES = [(64, 256)]


def _time(fn) -> float:
    return time_ms(fn)


def bench(shapes, device) -> list[dict]:
    rows = []
    for M, K in shapes:
        x = torch.randn(M, K, device=device).to(torch.bfloat16)
        kernels = {
            "mxfp4": (mk.quantize_mxfp4, M * K // 2 + M * K // 32),
            "mxfp8": (mk.quantize_mxfp8, M * K + M * K // 32),
            "fp8_per_token": (mk.quantize_fp8_per_token, M * K + 4 * M),
        }
        for name, (fn, out_bytes) in kernels.items():
            moved = 2 * M * K + out_bytes
            src = torch.empty(moved // 2, dtype=torch.uint8, device=device)
            dst = torch.empty_like(src)
            t_copy = _time(functools.partial(dst.copy_, src))
            t_kernel = _time(functools.partial(fn, x))
            rows.append(dict(kernel=name, M=M, K=K, bytes=moved, t_kernel_ms=t_kernel, t_copy_ms=t_copy,
                             kernel_GBps=moved / t_kernel / 1e6, copy_GBps=moved / t_copy / 1e6,
                             fraction_of_copy=t_copy / t_kernel))
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    gpu = torch.cuda.is_available() and not _runtime.INTERPRET
    device = "cuda" if gpu else "cpu"
    card = torch.cuda.get_device_name() if gpu else "cpu (Triton interpreter)"
    rows = bench(GPU_SHAPES if gpu else CPU_SHAPES, device)
    print(f"card: {card}")
    print(f"{'kernel':15s} {'M':>6s} {'K':>6s} {'kernel ms':>10s} {'copy ms':>9s} {'GB/s':>8s} {'copy GB/s':>9s} {'frac':>6s}")
    for r in rows:
        print(f"{r['kernel']:15s} {r['M']:6d} {r['K']:6d} {r['t_kernel_ms']:10.4f} {r['t_copy_ms']:9.4f} "
              f"{r['kernel_GBps']:8.0f} {r['copy_GBps']:9.0f} {r['fraction_of_copy']:6.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"card": card, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
