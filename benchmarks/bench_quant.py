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
from moe_kernels import _persistent, _runtime
# isort: on

from benchmarks._timing import time_graph_ms, time_host_ms, time_ms  # noqa: E402
from moe_kernels._tuning import CONFIGS  # noqa: E402

GPU_SHAPES = [(8192, 2880), (16384, 7168)]
CPU_SHAPES = [(64, 256)]
# configs.json entries tried by --sweep (kernel -> the entry it reads and the overrides to try);
# the winners go into configs.json
SWEEP = {
    "mxfp4": ("quant", [dict(flat_blocks=b, num_warps=w, programs_per_sm=p) for b in (128, 256) for w in (4, 8)
                        for p in ("occupancy", 8, 16)]),
    "mxfp8": ("quant", [dict(flat_blocks=b, num_warps=w, programs_per_sm=p) for b in (128, 256) for w in (4, 8)
                        for p in ("occupancy", 8, 16)]),
    "fp8_per_token": ("per_token", [dict(tile_pairs=t, pairs_per_thread=n, programs_per_sm="occupancy")
                                    for t in (2048, 4096) for n in (2, 4, 8)]),
}


def bench(shapes, device, only=None) -> list[dict]:
    rows = []
    for M, K in shapes:
        x = torch.randn(M, K, device=device).to(torch.bfloat16)
        kernels = {
            "mxfp4": (mk.quantize_mxfp4, M * K // 2 + M * K // 32),
            "mxfp8": (mk.quantize_mxfp8, M * K + M * K // 32),
            "fp8_per_token": (mk.quantize_fp8_per_token, M * K + 4 * M),
        }
        for name, (fn, out_bytes) in kernels.items():
            if only and name != only:
                continue
            moved = 2 * M * K + out_bytes
            src = torch.empty(moved // 2, dtype=torch.uint8, device=device)
            dst = torch.empty_like(src)
            copy, kernel = functools.partial(dst.copy_, src), functools.partial(fn, x)
            t_copy, t_kernel = time_ms(copy), time_ms(kernel)
            g_copy, g_kernel = time_graph_ms(copy), time_graph_ms(kernel)
            host = time_host_ms(kernel)
            rows.append(dict(kernel=name, M=M, K=K, bytes=moved, t_kernel_ms=t_kernel, t_copy_ms=t_copy,
                             kernel_GBps=moved / t_kernel / 1e6, copy_GBps=moved / t_copy / 1e6,
                             fraction_of_copy=t_copy / t_kernel, graph_kernel_ms=g_kernel, graph_copy_ms=g_copy,
                             graph_fraction_of_copy=g_copy / g_kernel if g_kernel else None,
                             back_to_back_call_ms=host))
    return rows


def sweep(shapes, device, kernels) -> list[dict]:
    """Each kernel at every SWEEP configuration (configs.json's entries restored afterwards)."""
    rows = []
    for kernel, (entry, overrides) in SWEEP.items():
        if kernel not in kernels:
            continue
        saved = dict(CONFIGS[entry])
        try:
            for override in overrides:
                CONFIGS[entry].update(override)
                for r in bench(shapes, device, only=kernel):
                    rows.append(dict(r, config=override))
                    g = r["graph_fraction_of_copy"]
                    print(f"  {kernel:13s} {r['M']}x{r['K']} {override}: {r['t_kernel_ms']:.4f} ms = "
                          f"{r['fraction_of_copy']:.2f} of copy (graph {'-' if g is None else f'{g:.2f}'})", flush=True)
        finally:
            CONFIGS[entry].clear()
            CONFIGS[entry].update(saved)
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", default=None)
    ap.add_argument("--sweep", nargs="*", default=None, metavar="KERNEL",
                    help="also time the kernels (all, or those named) at the SWEEP configurations")
    args = ap.parse_args(argv)
    gpu = torch.cuda.is_available() and not _runtime.INTERPRET
    device = "cuda" if gpu else "cpu"
    card = torch.cuda.get_device_name() if gpu else "cpu (Triton interpreter)"
    swept = [] if args.sweep is None else sweep(GPU_SHAPES if gpu else CPU_SHAPES, device, args.sweep or list(SWEEP))
    rows = bench(GPU_SHAPES if gpu else CPU_SHAPES, device)
    print(f"card: {card}  (call ms: back-to-back calls, one sync; above the kernel time, eager timing measures the host)")
    print(f"{'kernel':15s} {'M':>6s} {'K':>6s} {'kernel ms':>10s} {'copy ms':>9s} {'GB/s':>8s} {'copy GB/s':>9s} "
          f"{'frac':>6s} {'graph frac':>10s} {'call ms':>8s}")
    for r in rows:
        g, call = r["graph_fraction_of_copy"], r["back_to_back_call_ms"]
        print(f"{r['kernel']:15s} {r['M']:6d} {r['K']:6d} {r['t_kernel_ms']:10.4f} {r['t_copy_ms']:9.4f} "
              f"{r['kernel_GBps']:8.0f} {r['copy_GBps']:9.0f} {r['fraction_of_copy']:6.2f} "
              f"{'-' if g is None else f'{g:.2f}':>10s} "
              f"{'-' if call is None else f'{call:.4f}':>8s}")
    resident = {str(k): v for k, v in _persistent._RESIDENT.items()}
    if resident:
        print("programs resident per SM (persistent grids):", resident)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"card": card, "resident_per_sm": resident, "configs": {k: CONFIGS[k] for k in ("quant", "per_token")}, "rows": rows, "sweep": swept}, f, indent=1)


if __name__ == "__main__":
    main()
