"""Problems and references of the report's MoE cases: one random layer per shape, tokens per M, and
for each case the emulated reference of a path, the float64 ideal and the derived bound
(``moe_ref.bounded``: expert by expert, products on the GPU of a GPU run), cached, and computed
concurrently where asked, in as many workers as memory allows."""

from __future__ import annotations

import dataclasses
import multiprocessing
import multiprocessing.connection
import os
import sys
import time

import numpy as np

from moe_ref import MoESpec, random_moe_problem
from moe_ref.bounded import moe_reference_bounded, reference_bytes
from moe_ref.problems import random_routed_tokens

from .cases import DeviceKey, LayerCase, LayerKey, ProblemKey, RefKey
from .progress import Progress

__all__ = ["layer", "problem", "on_device", "release", "reference", "prefetch", "mma_k_of",
           "reference_device", "ReferenceFailed", "worker_count", "memory_budget", "peak_memory"]


def mma_k_of(device: str):
    """The tolerance's accumulation model: tensor-core blocks of 16 on a GPU, any order on CPU."""
    return 16 if device != "cpu" else None


OUTLIER_ROWS = 0.25  # a quarter of the tokens 4x larger: SwiGLU's clamps are reached (moe_ref.random_moe_problem)
ZERO_WEIGHT_ROWS = 1 / 16  # tokens routed with weight 0 on every slot (padded tokens of a serving engine)


def reference_device(device):
    """Where the references' products run: the GPU of a GPU run (``moe_ref.products``), else NumPy."""
    return None if device is None or str(device) == "cpu" else str(device)


def layer(cache: dict, shape: dict, seed: int, with_bias: bool = True):
    """The shape's random layer (weights and biases), drawn once and frozen (read-only: the references
    use it in place, neither copied nor hashed; ``moe_ref.weights``)."""
    key = LayerKey(seed, tuple(shape.items()), with_bias)
    if key not in cache:
        p = random_moe_problem(np.random.default_rng([seed, *shape.values()]), M=1, with_bias=with_bias, **shape)
        for arr in (p.w1, p.w1_scale, p.w2, p.w2_scale, p.bias1, p.bias2):
            if arr is not None:
                arr.setflags(write=False)
        cache[key] = p
    return cache[key]


def problem(cache: dict, case: LayerCase, seed: int, with_bias: bool = True):
    """The case's random problem: tokens and routing drawn per M, the layer per shape (one layer across
    the M sweep)."""
    pkey = ProblemKey(seed, case.M, case.shape_key, with_bias)
    if pkey not in cache:
        shape = case.shape
        hidden, tw, ids = random_routed_tokens(np.random.default_rng([seed, case.M, *shape.values()]), M=case.M,
                                               E=shape["E"], H=shape["H"], topk=shape["topk"], outlier_rows=OUTLIER_ROWS,
                                               zero_weight_rows=ZERO_WEIGHT_ROWS)
        cache[pkey] = dataclasses.replace(layer(cache, shape, seed, with_bias), hidden=hidden, topk_weights=tw,
                                          topk_ids=ids)
    return cache[pkey]


_LAYER_FIELDS = ("w1", "w1_scale", "w2", "w2_scale", "bias1", "bias2")


def on_device(cache: dict, p, device):
    """``p.to_torch(device)`` with the layer's tensors uploaded once per layer and device (a real
    model's layer is gigabytes; every case of its M sweep runs on it). A case puts back whatever an
    implementation wrote to them (``layer.check_layer_case``)."""
    key = DeviceKey(id(p.w1), str(device))
    if key not in cache or cache[key][0] is not p.w1:
        empty = {f: getattr(p, f)[:0] for f in ("hidden", "topk_weights", "topk_ids")}
        cache[key] = (p.w1, dataclasses.replace(p, **empty).to_torch(device))
    tokens = dataclasses.replace(p, **dict.fromkeys(_LAYER_FIELDS)).to_torch(device)
    return dataclasses.replace(tokens, **{f: getattr(cache[key][1], f) for f in _LAYER_FIELDS})


def release(cache: dict, case: LayerCase, keep_layer: bool) -> None:
    """Drop what only a finished (shape, M) group used: its problem and references, and unless
    ``keep_layer`` its layer (host and device copies). The cases come group by group, so a real
    model's run holds one layer and one M's references at a time."""
    for key in list(cache):
        if (isinstance(key, (RefKey, ProblemKey)) and (key.shape, key.M) == case.group) or (
                not keep_layer and isinstance(key, LayerKey) and key.shape == case.shape_key):
            del cache[key]
    live = {id(v.w1) for k, v in cache.items() if isinstance(k, LayerKey)}
    for key in [k for k in cache if isinstance(k, DeviceKey) and k.w1_id not in live]:
        del cache[key]


def _compute(p, act_dtype: str, spec: MoESpec, mma_k, device=None):
    """(emulated reference, float64 ideal, elementwise bound) of a problem on one path."""
    r = moe_reference_bounded(*p.args(), act_dtype=act_dtype, mma_k=mma_k, device=device, spec=spec, **p.biases())
    return r.out, r.ideal, r.bound


@dataclasses.dataclass(frozen=True)
class ReferenceFailed:
    """A reference that could not be computed (its worker died, or it raised): its cases become error rows."""

    error: str


def _key(case: LayerCase, act_dtype, seed, mma_k, with_bias, variant=()) -> RefKey:
    """``variant``: (name, value) pairs of the reference's convention options (intermediate_dtype,
    routing_weight_dtype, slot_dtype, or another scale_mode than the case's), the contract where absent."""
    return RefKey(seed, case.M, case.shape_key, act_dtype, case.spec.replace(**dict(variant)), mma_k, with_bias)


def reference(cache: dict, case: LayerCase, act_dtype: str, seed: int, mma_k, with_bias: bool = True, variant: tuple = (),
              device=None):
    """(problem, reference, ideal, bound) of a case on path ``act_dtype`` (and a convention ``variant``);
    cached, since other archs and envs select the same path on the same data. ``device``: where the
    products run (:func:`reference_device`)."""
    key = _key(case, act_dtype, seed, mma_k, with_bias, variant)
    if isinstance(cache.get(key), ReferenceFailed):
        raise RuntimeError(f"the {act_dtype} reference could not be computed: {cache[key].error}")
    if key not in cache:
        p = problem(cache, case, seed, with_bias)
        t0 = time.perf_counter()
        cache[key] = (p, *_compute(p, act_dtype, key.spec, mma_k, device))
        if device is not None:  # a line per reference: at a real model's shapes they take seconds each
            label = _label((case, act_dtype)) + (f" {dict(variant)}" if variant else "")
            print(f"reference {label}: {time.perf_counter() - t0:.1f}s", file=sys.stderr, flush=True)
    return cache[key]


_SHARED: dict = {}  # the parent's problems, inherited by forked workers (copy-on-write: not copied)


def _job(job):  # in a forked worker, or here
    case, act_dtype, seed, mma_k, with_bias, device = job
    return _compute(problem(_SHARED, case, seed, with_bias), act_dtype, case.spec, mma_k, device=device)


def _label(job) -> str:
    case, act_dtype, *_ = job
    s = case.shape
    return f"E={s['E']} H={s['H']} I={s['I']} top-{s['topk']} M={case.M} {act_dtype} {case.gate_mode}"


def available_bytes() -> int:
    """MemAvailable of /proc/meminfo (Linux), else the physical memory."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def resident_bytes() -> int:
    """This process's resident memory now (Linux /proc; 0 where unknown)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


MEMORY_GIB = 14.0  # the report's host memory budget by default (--max-memory-gb)


def memory_budget(max_gib: float | None = None) -> int:
    """Bytes the references may take now: the budget less what is resident, and at most 60% of what
    the machine has available."""
    limit = (MEMORY_GIB if max_gib is None else max_gib) * 2**30
    return int(max(0, min(limit - resident_bytes(), 0.6 * available_bytes())))


def worker_count(jobs: list[tuple], requested: int, budget: int) -> tuple[int, int]:
    """(workers, bytes per worker): as many as asked whose references fit in ``budget`` bytes (at least 1)."""
    per = max(reference_bytes(j[0].M, **j[0].shape, device=j[5] is not None, frozen_weights=True) for j in jobs)
    return max(1, min(requested, len(jobs), int(budget // per))), per


def prefetch(jobs: list[tuple], cache: dict, workers: int, max_memory_gib: float | None = None,
             progress: bool = True) -> None:
    """Compute the distinct host references ``(case, act_dtype, seed, mma_k, with_bias, device)`` before
    the cases run, in ``workers`` forked processes (as many as fit the memory budget:
    :func:`memory_budget`), one progress line each, and fill ``cache``. With one worker, and whenever the
    products run on a device, they are computed on demand by :func:`reference`, group by group (the GPU
    does the heavy work; on the H200 host, threads sharing it ran 40x slower at E >= 128 than one
    reference alone; and a group's references are released when its cases are done).
    A reference that fails, or whose worker dies, is recorded as :class:`ReferenceFailed` (its cases
    become error rows; the others still run)."""
    todo = {}
    for job in jobs:
        todo.setdefault(_key(*job[:5]), job)
    todo = {k: j for k, j in todo.items() if k not in cache}
    if not todo or any(j[5] is not None for j in todo.values()) or workers <= 1 or len(todo) <= 1:
        return
    for case, _, seed, _, with_bias, _ in todo.values():
        problem(cache, case, seed, with_bias)  # drawn here: forked workers inherit them
    budget = memory_budget(max_memory_gib)
    n, per = worker_count(list(todo.values()), workers, budget)
    if n < min(workers, len(todo)):
        print(f"references: {n} processes instead of {workers} (each needs up to {per / 2**30:.1f} GiB; "
              f"{budget / 2**30:.1f} GiB left of the memory budget)", file=sys.stderr)
    global _SHARED
    _SHARED = cache
    bar = Progress(len(todo), "references", every_step=True, enabled=progress)
    t0 = time.perf_counter()
    for key, result in (_here(todo) if n <= 1 else _forked(todo, n)):
        job = todo[key]
        cache[key] = result if isinstance(result, ReferenceFailed) else (problem(cache, job[0], job[2], job[4]), *result)
        bar.step(f"{_label(job)}, {time.perf_counter() - t0:.0f}s")
    _SHARED = {}
    bar.close()


def _here(todo: dict):
    """(key, result or ReferenceFailed) for each reference, in this process."""
    for key, job in todo.items():
        try:
            yield key, _job(job)
        except Exception as exc:  # noqa: BLE001 - recorded: its cases become rows with this error
            yield key, ReferenceFailed(f"{type(exc).__name__}: {exc}")


def _child(job, conn) -> None:  # a forked worker: one reference, its result through the pipe
    try:
        conn.send(("ok", _job(job)))
    except Exception as exc:  # noqa: BLE001 - reported to the parent as this reference's error
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        conn.close()


def _forked(todo: dict, n: int):
    """(key, result or ReferenceFailed) as each reference finishes: one forked process per reference,
    ``n`` at a time; a process that dies (killed for memory) fails its own reference only."""
    ctx = multiprocessing.get_context("fork")
    pending, running = list(todo.items()), {}
    while pending or running:
        while pending and len(running) < n:
            key, job = pending.pop(0)
            receive, send = ctx.Pipe(duplex=False)
            proc = ctx.Process(target=_child, args=(job, send), daemon=True)
            proc.start()
            send.close()
            running[receive] = (key, proc)
        for receive in multiprocessing.connection.wait(list(running)):
            key, proc = running.pop(receive)
            try:
                status, payload = receive.recv()
            except Exception:  # noqa: BLE001 - EOF, or a message cut short: the process died
                proc.join()
                how = f"killed by signal {-proc.exitcode}" if (proc.exitcode or 0) < 0 else f"exit status {proc.exitcode}"
                status, payload = "error", (f"its worker process died ({how}; out of memory? rerun with fewer --workers)")
            receive.close()
            proc.join()
            yield key, payload if status == "ok" else ReferenceFailed(payload)


def peak_memory() -> tuple[float, float]:
    """(this process's, the largest finished worker's) peak resident memory in GiB."""
    import resource

    scale = 1024 if sys.platform != "darwin" else 1
    return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**30,
            resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * scale / 2**30)
