"""Tile sweep of the MoE GEMMs on the GPU at hand: CUDA-graph time of ``fused_moe`` (a16w4) per tile
configuration and M on ``bench_moe``'s gpt-oss-120b layer, the current ``configs.json`` choice timed
in the same run. Each candidate replaces ``configs.json``'s gpu entries for the call (``_tuning``
reads them at call time). Tiles change only the fp32 accumulation order (BLOCK_K, and the MMA
instruction that BLOCK_M selects), so each candidate's output is reported against the current tile's
(max difference over max magnitude: bf16 level, ~4e-3, or less). ``--json PATH`` saves the rows.
"""

from __future__ import annotations

# isort: off
import moe_kernels as mk  # before triton: it picks the interpreter on a machine without a GPU
import torch
# isort: on

import argparse
import functools
import json

from benchmarks._timing import time_graph_ms
from benchmarks.bench_moe import GPU_MS, GPU_SHAPE, ROUTES, _weights, routed_inputs, triton_kernels_peer
from moe_kernels import _tuning

KEYS = ("block_m", "block_n1", "block_n2", "block_k", "num_warps", "num_stages", "w_left")
# (block_m, n1, n2, k, warps, stages, w_left) per regime of pairs per expert: around the current tiles and the
# peer's (triton_kernels picks 16x256x128 at decode, 32x256x128 at M=1024: N 256 = our n1 128 / n2 256);
# w_left: the weights prepared and the MMA's left operand (moe_gemm.weight_mma), N then wgmma's M (>= 64);
# BLOCK_K 64 left tiles lost everywhere (NOTES.md version 10) and are not swept; the staged tile of each regime is
# what a CUDA-graph capture of public weights runs
CANDIDATES = {
    "decode": [(16, 64, 128, 128, 4, 3, False), (16, 64, 128, 128, 4, 3, True), (16, 64, 256, 128, 4, 3, True),
               (16, 64, 128, 128, 4, 4, True), (16, 128, 128, 128, 8, 3, True)],
    "middle": [(64, 64, 128, 64, 4, 3, False), (64, 64, 128, 128, 4, 3, True), (64, 64, 128, 128, 4, 4, True),
               (32, 64, 128, 128, 4, 3, True), (32, 128, 256, 128, 8, 3, True)],
    "prefill": [(128, 64, 128, 64, 8, 3, False), (128, 64, 128, 128, 8, 3, True), (128, 64, 128, 128, 8, 4, True),
                (64, 128, 128, 128, 8, 3, True), (64, 64, 128, 128, 4, 3, True), (64, 64, 128, 128, 4, 4, True)],
}


def candidates(M: int, E: int, topk: int):
    pairs = max(1, M * topk // E)
    regime = "decode" if pairs <= 16 else "middle" if pairs <= 128 else "prefill"
    for cand in CANDIDATES[regime]:
        yield dict(zip(KEYS, cand))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--M", type=int, nargs="*", default=list(GPU_MS))
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    E, H, I, topk = (GPU_SHAPE[k] for k in ("E", "H", "I", "topk"))  # noqa: E741
    gen = torch.Generator(device="cuda").manual_seed(0)
    w1, s1, w2, s2 = _weights(E, H, I, "cuda", gen)
    saved = list(_tuning.CONFIGS["gpu"])
    peer, why = triton_kernels_peer(w1, s1, w2, s2)  # timed in the same run, for the ratios
    held = mk.prepare_weights(w1, s1, w2, s2)  # held prepared (the left tiles read it), as the peer's are swizzled
    print(f"card: {torch.cuda.get_device_name()}; shape {GPU_SHAPE}; triton_kernels: {'timed' if peer else why}")
    rows = []
    for M in args.M:
        hidden, weights, ids = routed_inputs(M, E, H, topk, "cuda", gen)
        fn = functools.partial(mk.fused_moe, hidden, w1, s1, w2, s2, weights, ids, prepared=held, **ROUTES["a16w4"])
        base_out, base_ms = fn(), time_graph_ms(fn)
        peer_ms = time_graph_ms(functools.partial(peer, hidden, weights, ids)) if peer else None
        print(f"M={M}: current {mk.dispatch.config_name(mk.dispatch._config(M, E, topk, H=H, I=I))} {base_ms:.3f} ms"
              + (f"; triton_kernels {peer_ms:.3f} ms" if peer_ms else ""))
        best = (base_ms, "current")
        for cand in candidates(M, E, topk):
            _tuning.CONFIGS["gpu"][:] = [dict(backend="cuda", max_pairs_per_expert=None, **cand)]
            name = mk.dispatch.config_name(tuple(cand[k] for k in KEYS))
            try:
                out = fn()
                diff = float((out.float() - base_out.float()).abs().max() / base_out.float().abs().max())
                ms = time_graph_ms(fn)
            except Exception as exc:  # noqa: BLE001  (a tile that does not fit: out of shared memory)
                print(f"    {name}: {type(exc).__name__} {str(exc).splitlines()[0][:80]}")
                continue
            finally:
                _tuning.CONFIGS["gpu"][:] = saved
            rows.append(dict(M=M, config=name, ms=ms, current_ms=base_ms, rel_diff=diff, triton_kernels_ms=peer_ms))
            best = min(best, (ms, name))
            vs_peer = f", {ms / peer_ms:.2f} of triton_kernels" if peer_ms else ""
            print(f"    {name}: {ms:.3f} ms ({base_ms / ms:.2f}x){vs_peer} diff {diff:.1e}", flush=True)
            if args.json:
                with open(args.json, "w") as f:
                    json.dump(dict(card=torch.cuda.get_device_name(), rows=rows), f, indent=1)
        print(f"M={M}: best {best[1]} {best[0]:.3f} ms ({base_ms / best[0]:.2f}x the current"
              + (f", {best[0] / peer_ms:.2f} of triton_kernels)" if peer_ms else ")"), flush=True)


if __name__ == "__main__":
    main()
