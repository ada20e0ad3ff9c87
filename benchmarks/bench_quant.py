"""Quantization kernels vs a device-to-device copy of the same bytes (issue target: >= 80%), and the MX
ones vs OpenAI triton_kernels' ``downcast_to_mxfp`` where it can be loaded (``MOE_ORACLE_TRITON_KERNELS_PATH``).

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


def downcast_peers() -> tuple[dict, str | None]:
    """OpenAI triton_kernels' ``downcast_to_mxfp`` (ROUND_UP) as the MX quantizers' peer, by kernel name
    ({} and why where it cannot be loaded or run: ``moe_oracle.adapters.triton_kernels``)."""
    if _runtime.INTERPRET:
        return {}, "not under the interpreter"
    try:
        from moe_oracle.adapters.triton_kernels import PeerUnavailable, implementation
    except ImportError as exc:
        return {}, str(exc)
    try:
        quantizers = {q.kind: q.fn for q in implementation().quantizers() if q.label.startswith("downcast")}
    except (PeerUnavailable, RuntimeError) as exc:
        return {}, f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
    return {"mxfp4": quantizers.get("quantize_mxfp4"), "mxfp8": quantizers.get("quantize_mxfp8")}, None


def _equal_fraction(a, b) -> float:
    a, b = a.view(torch.uint8), b.view(torch.uint8)
    return float((a == b).float().mean()) if a.shape == b.shape else 0.0


def bench(shapes, device, only=None) -> list[dict]:
    peers, why = downcast_peers()
    if why:
        print(f"triton_kernels downcast_to_mxfp: not timed ({why})")
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
            row = dict(kernel=name, M=M, K=K, bytes=moved, t_kernel_ms=t_kernel, t_copy_ms=t_copy,
                       kernel_GBps=moved / t_kernel / 1e6, copy_GBps=moved / t_copy / 1e6,
                       fraction_of_copy=t_copy / t_kernel, graph_kernel_ms=g_kernel, graph_copy_ms=g_copy,
                       graph_fraction_of_copy=g_copy / g_kernel if g_kernel else None,
                       back_to_back_call_ms=host)
            if peers.get(name) is not None:  # checked first: same scales (ROUND_UP), codes differing on ties only
                (q_peer, s_peer), (q_ours, s_ours) = peers[name](x), fn(x)
                row.update(peer_scales_equal=_equal_fraction(s_peer, s_ours), peer_codes_equal=_equal_fraction(q_peer, q_ours))
                if row["peer_scales_equal"] < 0.999:
                    raise RuntimeError(f"{name} {M}x{K}: triton_kernels' scales differ from ours on "
                                       f"{1 - row['peer_scales_equal']:.3%} of the blocks: not the same quantization")
                peer = functools.partial(peers[name], x)
                row.update(peer_ms=time_ms(peer), peer_graph_ms=time_graph_ms(peer))
                row["peer_graph_fraction_of_copy"] = g_copy / row["peer_graph_ms"] if row["peer_graph_ms"] else None
            rows.append(row)
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
              f"{'-' if call is None else f'{call:.4f}':>8s}", end="")
        if r.get("peer_graph_ms"):  # same run: the peer's graph time, its fraction of copy, ours / peer
            print(f" | triton_kernels graph {r['peer_graph_ms']:.4f} ms = {r['peer_graph_fraction_of_copy']:.2f} of copy, "
                  f"ours/peer {r['graph_kernel_ms'] / r['peer_graph_ms']:.2f} (codes equal {r['peer_codes_equal']:.3f})",
                  end="")
        print()
    resident = {str(k): v for k, v in _persistent._RESIDENT.items()}
    if resident:
        print("programs resident per SM (persistent grids):", resident)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"card": card, "resident_per_sm": resident, "configs": {k: CONFIGS[k] for k in ("quant", "per_token")}, "rows": rows, "sweep": swept}, f, indent=1)


if __name__ == "__main__":
    main()
