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

from benchmarks._timing import time_graph_ms, time_ms  # noqa: E402
from moe_kernels._tuning import CONFIGS  # noqa: E402

GPU_SHAPES = [(8192, 2880), (16384, 7168)]
CPU_SHAPES = [(64, 256)]
# (block_m, block_k, num_warps) tried by --sweep; the winner goes into configs.json's "quant" entry
SWEEP_TILES = [(16, 256, 4), (16, 256, 8), (8, 256, 4), (32, 256, 8), (8, 512, 4), (16, 512, 8), (4, 512, 4),
               (32, 128, 4)]


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
            copy, kernel = functools.partial(dst.copy_, src), functools.partial(fn, x)
            t_copy, t_kernel = time_ms(copy), time_ms(kernel)
            g_copy, g_kernel = time_graph_ms(copy), time_graph_ms(kernel)
            rows.append(dict(kernel=name, M=M, K=K, bytes=moved, t_kernel_ms=t_kernel, t_copy_ms=t_copy,
                             kernel_GBps=moved / t_kernel / 1e6, copy_GBps=moved / t_copy / 1e6,
                             fraction_of_copy=t_copy / t_kernel, graph_kernel_ms=g_kernel, graph_copy_ms=g_copy,
                             graph_fraction_of_copy=g_copy / g_kernel if g_kernel else None))
    return rows


def sweep(shapes, device) -> list[dict]:
    """The MX quantizers at every SWEEP_TILES tile (configs.json's entry restored afterwards)."""
    saved, rows = dict(CONFIGS["quant"]), []
    try:
        for block_m, block_k, warps in SWEEP_TILES:
            CONFIGS["quant"].update(block_m=block_m, block_k=block_k, num_warps=warps)
            for r in bench(shapes, device):
                if r["kernel"] != "fp8_per_token":
                    rows.append(dict(r, tile=[block_m, block_k, warps]))
                    print(f"  tile {block_m:3d}x{block_k:4d} w{warps}: {r['kernel']:6s} {r['M']}x{r['K']} "
                          f"{r['t_kernel_ms']:.4f} ms = {r['fraction_of_copy']:.2f} of copy", flush=True)
    finally:
        CONFIGS["quant"].clear()
        CONFIGS["quant"].update(saved)
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", default=None)
    ap.add_argument("--sweep", action="store_true", help="also time the MX quantizers at other tiles")
    args = ap.parse_args(argv)
    gpu = torch.cuda.is_available() and not _runtime.INTERPRET
    device = "cuda" if gpu else "cpu"
    card = torch.cuda.get_device_name() if gpu else "cpu (Triton interpreter)"
    swept = sweep(GPU_SHAPES if gpu else CPU_SHAPES, device) if args.sweep else []
    rows = bench(GPU_SHAPES if gpu else CPU_SHAPES, device)
    print(f"card: {card}")
    print(f"{'kernel':15s} {'M':>6s} {'K':>6s} {'kernel ms':>10s} {'copy ms':>9s} {'GB/s':>8s} {'copy GB/s':>9s} "
          f"{'frac':>6s} {'graph frac':>10s}")
    for r in rows:
        g = r["graph_fraction_of_copy"]
        print(f"{r['kernel']:15s} {r['M']:6d} {r['K']:6d} {r['t_kernel_ms']:10.4f} {r['t_copy_ms']:9.4f} "
              f"{r['kernel_GBps']:8.0f} {r['copy_GBps']:9.0f} {r['fraction_of_copy']:6.2f} "
              f"{'-' if g is None else f'{g:.2f}':>10s}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"card": card, "tile": CONFIGS["quant"], "rows": rows, "sweep": swept}, f, indent=1)


if __name__ == "__main__":
    main()
