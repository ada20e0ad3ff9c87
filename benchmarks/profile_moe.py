"""Where the MoE layer's device time goes, per kernel: ours on each path and triton_kernels' matmul_ogs
(issue 18), from one torch.profiler run per (implementation, M) on ``bench_moe``'s gpt-oss-120b layer.

For each M it prints every kernel's device time per call (µs, mean over ``--calls`` calls after a
warm-up) and launches per call, and the sum. The peer's kernel names carry its tile choice (block
sizes, persistence), so the table also shows how it picks tiles per M. ``--json PATH`` saves it.
GPU only (the profiler's device activity has no meaning under the interpreter).
"""

from __future__ import annotations

# isort: off
import moe_kernels as mk  # before triton: it picks the interpreter on a machine without a GPU
import torch
from moe_kernels import _runtime
# isort: on

import argparse
import collections
import functools
import json

from benchmarks.bench_moe import GPU_SHAPE, ROUTES, _weights, routed_inputs, triton_kernels_peer


def kernel_times_us(fn, calls: int) -> dict[str, tuple[float, float]]:
    """{kernel name: (device µs per call, launches per call)} over ``calls`` calls of ``fn``."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
    total, count = collections.defaultdict(float), collections.defaultdict(int)
    for evt in prof.events():
        if evt.device_type == torch.autograd.DeviceType.CUDA:
            total[evt.name] += evt.device_time
            count[evt.name] += 1
    return {name: (total[name] / calls, count[name] / calls) for name in sorted(total, key=total.get, reverse=True)}


def host_profile(w1, s1, w2, s2, M, gen, calls=500):
    """Host time of one eager a16w4 call and of its parts (wall-clock per call of back-to-back calls,
    one sync: ``_timing.time_host_ms``), then where cProfile sees it. Run it in a process that has
    not run torch.profiler (its hooks stay and slow every launch)."""
    import cProfile
    import pstats

    from benchmarks._timing import time_host_ms
    from moe_kernels import routing

    E, H, topk = w1.shape[0], w1.shape[2] * 2, GPU_SHAPE["topk"]
    hidden, weights, ids = routed_inputs(M, E, H, topk, "cuda", gen)
    args = (hidden, w1, s1, w2, s2, weights, ids)
    fn = functools.partial(mk.fused_moe, *args, **ROUTES["a16w4"])
    plan = mk.plan_moe(*args, **ROUTES["a16w4"])

    parts = {"fused_moe (all)": fn, "plan_moe (validate, selector, tiles)": functools.partial(mk.plan_moe, *args,
                                                                                             **ROUTES["a16w4"]),
             "align_pairs (one Triton launch + 3 allocations)": functools.partial(routing.align_pairs, ids, None,
                                                                                plan.block_m, E)}
    for name, part in parts.items():
        print(f"host: M={M} {name}: {time_host_ms(part, calls=calls):.4f} ms a call")
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(calls):
        fn()
    prof.disable()
    torch.cuda.synchronize()
    pstats.Stats(prof).sort_stats("tottime").print_stats(25)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--M", type=int, nargs="*", default=[1, 64, 1024, 8192])
    ap.add_argument("--calls", type=int, default=20)
    ap.add_argument("--json", default=None)
    ap.add_argument("--host", action="store_true", help="only the host time of eager a16w4 calls at the first M, its parts and a cProfile")
    args = ap.parse_args(argv)
    if _runtime.INTERPRET or not torch.cuda.is_available():
        raise SystemExit("profile_moe needs a GPU (the profiler's device times)")
    E, H, I, topk = (GPU_SHAPE[k] for k in ("E", "H", "I", "topk"))  # noqa: E741
    gen = torch.Generator(device="cuda").manual_seed(0)
    w1, s1, w2, s2 = _weights(E, H, I, "cuda", gen)
    if args.host:  # alone in its process: torch.profiler's hooks would slow every launch after it
        return host_profile(w1, s1, w2, s2, args.M[0], gen)
    peer, why = triton_kernels_peer(w1, s1, w2, s2)
    print(f"card: {torch.cuda.get_device_name()}; shape {GPU_SHAPE}; triton_kernels: {'loaded' if peer else why}")
    rows = []
    for M in args.M:
        hidden, weights, ids = routed_inputs(M, E, H, topk, "cuda", gen)
        impls = {p: functools.partial(mk.fused_moe, hidden, w1, s1, w2, s2, weights, ids, **r) for p, r in ROUTES.items()}
        if peer is not None:
            impls["triton_kernels"] = functools.partial(peer, hidden, weights, ids)
        for name, fn in impls.items():
            kernels = kernel_times_us(fn, args.calls)
            rows.append(dict(M=M, impl=name, kernels=kernels))
            print(f"M={M} {name}: {sum(t for t, _ in kernels.values()):.1f} µs of kernels")
            for kname, (us, n) in kernels.items():
                print(f"    {us:9.1f} µs  x{n:4.1f}  {kname[:110]}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(card=torch.cuda.get_device_name(), shape=GPU_SHAPE, rows=rows), f, indent=1)


if __name__ == "__main__":
    main()
