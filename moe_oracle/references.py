"""Problems and references of the report's MoE cases: one random layer per shape, tokens per M, and
for each case the emulated reference of a path, the float64 ideal and the derived bound (cached, and
computed in worker processes where asked: on a GPU run they dominate the time)."""

from __future__ import annotations

import dataclasses
import itertools
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np

from moe_ref import MoEWeights, kernel_tolerance, moe_reference, random_moe_problem, select_activation_dtype

from .progress import Progress

__all__ = ["cases", "problem", "reference", "prefetch", "mma_k_of"]


def cases(cfg, archs, gate_modes=None):
    """The product of the matrix; the extra scale modes run on fp4x2 cases of the first arch and env."""
    for shape, M, arch, env, gate_mode in itertools.product(cfg.shapes, cfg.M, archs, cfg.envs,
                                                            gate_modes or cfg.gate_modes):
        dtype = select_activation_dtype(M, arch=arch, gate_mode=gate_mode, env=env).dtype
        every_mode = dtype == "fp4x2" and arch == archs[0] and env == cfg.envs[0]
        for mode in (cfg.scale_modes if every_mode else cfg.scale_modes[:1]):
            yield dict(shape=shape, M=M, arch=arch, env=env, gate_mode=gate_mode, scale_mode=mode)


def mma_k_of(device: str):
    """The tolerance's accumulation model: tensor-core blocks of 16 on a GPU, any order on CPU."""
    return 16 if device != "cpu" else None


OUTLIER_ROWS = 0.25  # a quarter of the tokens 4x larger: SwiGLU's clamps are reached (moe_ref.random_moe_problem)


def problem(cache: dict, case: dict, seed: int, with_bias: bool = True):
    """The case's random problem: tokens and routing drawn per M, weights and biases per shape (one
    layer across the M sweep, so the references dequantize its weights once: ``MoEWeights``)."""
    pkey = ("problem", seed, case["M"], tuple(case["shape"].items()), with_bias)
    if pkey not in cache:
        shape = case["shape"]
        layer = random_moe_problem(np.random.default_rng([seed, *shape.values()]), M=1, with_bias=with_bias, **shape)
        p = random_moe_problem(np.random.default_rng([seed, case["M"], *shape.values()]), M=case["M"],
                               with_bias=with_bias, outlier_rows=OUTLIER_ROWS, **shape)
        cache[pkey] = dataclasses.replace(p, w1=layer.w1, w1_scale=layer.w1_scale, w2=layer.w2,
                                          w2_scale=layer.w2_scale, bias1=layer.bias1, bias2=layer.bias2)
    return cache[pkey]


def _compute(p, case: dict, act_dtype: str, mma_k, variant: tuple = ()):
    """(emulated reference, float64 ideal, elementwise bound) of a case's problem on one path;
    ``variant``: (name, value) pairs of the reference's convention options (intermediate_dtype,
    routing_weight_dtype, slot_dtype, or another scale_mode than the case's), the contract where absent."""
    opts = dict(variant)
    mode = opts.pop("scale_mode", case["scale_mode"])
    kw = dict(gate_mode=case["gate_mode"], scale_mode=mode, **p.biases())
    ref, trace = moe_reference(*p.args(), act_dtype=act_dtype, return_trace=True, **opts, **kw)
    ideal = moe_reference(*p.args(), act_dtype=None, **kw)
    w = MoEWeights.from_arrays(p.w1, p.w1_scale, p.w2, p.w2_scale)
    bound = kernel_tolerance(trace, w, p.topk_weights, p.topk_ids, act_dtype=opts.get("intermediate_dtype") or act_dtype,
                             gate_mode=case["gate_mode"], scale_mode=mode, mma_k=mma_k,
                             slot_dtype=opts.get("slot_dtype", "fp32"))
    return ref, ideal, bound


def _key(case, act_dtype, seed, mma_k, with_bias, variant):
    return ("ref", seed, case["M"], tuple(case["shape"].items()), case["gate_mode"], act_dtype, case["scale_mode"],
            mma_k, with_bias, tuple(variant))


def reference(cache: dict, case: dict, act_dtype: str, seed: int, mma_k, with_bias: bool = True, variant: tuple = ()):
    """(problem, reference, ideal, bound) of a case on path ``act_dtype`` (and a convention ``variant``);
    cached, since other archs and envs select the same path on the same data."""
    key = _key(case, act_dtype, seed, mma_k, with_bias, variant)
    if key not in cache:
        p = problem(cache, case, seed, with_bias)
        cache[key] = (p, *_compute(p, case, act_dtype, mma_k, variant))
    return cache[key]


def _job(job):  # a worker process: regenerates the problem from its seed
    case, act_dtype, seed, mma_k, with_bias = job
    return _compute(problem({}, case, seed, with_bias), case, act_dtype, mma_k)


def prefetch(jobs: list[tuple], cache: dict, workers: int) -> None:
    """Compute the distinct references ``(case, act_dtype, seed, mma_k, with_bias)`` in ``workers``
    processes and fill ``cache`` (serially, they are computed on demand by :func:`reference`)."""
    todo = {}
    for case, act_dtype, seed, mma_k, with_bias in jobs:
        todo.setdefault(_key(case, act_dtype, seed, mma_k, with_bias, ()), (case, act_dtype, seed, mma_k, with_bias))
    todo = {k: j for k, j in todo.items() if k not in cache}
    if workers <= 1 or len(todo) <= 1:
        return
    progress = Progress(len(todo), "references")
    t0 = time.perf_counter()
    with ProcessPoolExecutor(min(workers, len(todo)), mp_context=multiprocessing.get_context("fork")) as ex:
        for key, res in zip(todo, ex.map(_job, todo.values())):
            case, _, seed, _, with_bias = todo[key]
            cache[key] = (problem(cache, case, seed, with_bias), *res)
            progress.step(f"{time.perf_counter() - t0:.0f}s")
    progress.close()
