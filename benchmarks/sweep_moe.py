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
from benchmarks.bench_moe import GPU_SHAPE, ROUTES, _weights, routed_inputs
from moe_kernels import _tuning

KEYS = ("block_m", "block_n1", "block_n2", "block_k", "num_warps", "num_stages")
# (block_m, n1, n2, k, warps, stages) per regime of pairs per expert: around the current tiles and the
# peer's (triton_kernels picks 16x256x128 at decode, 32x256x128 at M=1024: N 256 = our n1 128 / n2 256)
CANDIDATES = {
    "decode": [(16, 128, 256, 128, 4, 3), (16, 128, 256, 128, 8, 3), (16, 64, 256, 128, 4, 3),
               (16, 128, 128, 128, 4, 3), (16, 64, 128, 256, 4, 3), (16, 128, 256, 256, 8, 3),
               (16, 32, 128, 128, 4, 3), (16, 64, 128, 128, 4, 4)],
    "middle": [(32, 64, 128, 128, 4, 3), (32, 128, 256, 128, 4, 3), (32, 64, 256, 128, 4, 3),
               (32, 128, 128, 128, 8, 3), (64, 128, 256, 64, 8, 3), (64, 64, 256, 64, 4, 3),
               (64, 128, 128, 64, 8, 3), (64, 64, 128, 128, 4, 3)],
    "prefill": [(128, 128, 256, 64, 8, 3), (128, 64, 256, 64, 8, 3), (128, 128, 128, 64, 8, 3),
                (128, 64, 128, 64, 8, 4), (64, 64, 128, 64, 8, 3)],
}


def candidates(M: int, E: int, topk: int):
    pairs = max(1, M * topk // E)
    regime = "decode" if pairs <= 16 else "middle" if pairs <= 128 else "prefill"
    for cand in CANDIDATES[regime]:
        yield dict(zip(KEYS, cand))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--M", type=int, nargs="*", default=[8, 64, 1024, 8192])
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    E, H, I, topk = (GPU_SHAPE[k] for k in ("E", "H", "I", "topk"))  # noqa: E741
    gen = torch.Generator(device="cuda").manual_seed(0)
    w1, s1, w2, s2 = _weights(E, H, I, "cuda", gen)
    saved = list(_tuning.CONFIGS["gpu"])
    print(f"card: {torch.cuda.get_device_name()}; shape {GPU_SHAPE}")
    rows = []
    for M in args.M:
        hidden, weights, ids = routed_inputs(M, E, H, topk, "cuda", gen)
        fn = functools.partial(mk.fused_moe, hidden, w1, s1, w2, s2, weights, ids, **ROUTES["a16w4"])
        base_out, base_ms = fn(), time_graph_ms(fn)
        print(f"M={M}: current {mk.dispatch.config_name(mk.dispatch._config(M, E, topk, H=H, I=I))} {base_ms:.3f} ms")
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
            rows.append(dict(M=M, config=name, ms=ms, current_ms=base_ms, rel_diff=diff))
            best = min(best, (ms, name))
            print(f"    {name}: {ms:.3f} ms ({base_ms / ms:.2f}x) diff {diff:.1e}", flush=True)
            if args.json:
                with open(args.json, "w") as f:
                    json.dump(dict(card=torch.cuda.get_device_name(), rows=rows), f, indent=1)
        print(f"M={M}: best {best[1]} {best[0]:.3f} ms ({base_ms / best[0]:.2f}x the current)", flush=True)


if __name__ == "__main__":
    main()
