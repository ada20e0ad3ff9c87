"""The conformance report: kernels beside the emulation over a matrix of cases.

``python -m moe_kernels.verify`` (or ``moe-oracle verify``, ``nox -s verify``) runs the embedded default
configuration: for every case (shape, M, arch, env, gate mode, scale mode) it asks the selector which
path to take, runs ``fused_moe``, and compares with ``moe_ref``: the stage-1 quantized bytes must equal
the emulation's, and the output must lie within the derived tolerance (``moe_ref.kernel_tolerance``)
of the emulated reference; the distance to the float64 ideal is reported too. Exit status 1 when any
case fails.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

import emulation as em
from moe_ref import MoEWeights, kernel_tolerance, moe_reference, random_moe_problem

from . import _runtime
from .dispatch import fused_moe

__all__ = ["VerifyConfig", "DEFAULT_CPU", "DEFAULT_GPU", "QUICK", "load_config", "run", "main"]


@dataclasses.dataclass(frozen=True)
class VerifyConfig:
    shapes: tuple = ({"E": 4, "H": 64, "I": 64, "topk": 2},)
    M: tuple = (1, 255, 256, 511, 512)
    archs: tuple = ("gfx942", "gfx950")
    envs: tuple = ({}, {"AITER_MOE_FORCE_BF16_ACT": "1"})
    gate_modes: tuple = ("separated", "interleave")
    scale_modes: tuple = ("round_up", "round_down", "ceil", "even")  # each for the fp4x2 path
    seed: int | None = None  # None: a fresh seed per run, printed and saved in the report
    tolerance_scale: float = 1.0  # < 1 tightens the derived bound (to demonstrate failures)
    reference_act_dtype: str | None = None  # compare against this path's reference instead of the selected one

    @classmethod
    def from_mapping(cls, data: dict, *, source: str = "config") -> VerifyConfig:
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - fields)
        if unknown:
            raise ValueError(f"{source}: unknown key(s) {unknown}; expected some of {sorted(fields)}")
        kw = {}
        for key, value in data.items():
            if key in ("seed",):
                if not isinstance(value, int) or isinstance(value, bool):
                    raise ValueError(f"{source}: {key} must be an integer, got {value!r}")
            elif key == "tolerance_scale":
                if not isinstance(value, (int, float)) or value <= 0:
                    raise ValueError(f"{source}: tolerance_scale must be a number > 0, got {value!r}")
            elif key == "reference_act_dtype":
                if value not in (None, "bf16", "fp4x2", "fp8"):
                    raise ValueError(f"{source}: reference_act_dtype must be bf16, fp4x2 or fp8, got {value!r}")
            else:
                if not isinstance(value, list) or not value:
                    raise ValueError(f"{source}: {key} must be a non-empty list, got {value!r}")
                value = tuple(value)
            kw[key] = value
        cfg = cls(**kw)
        for s in cfg.shapes:
            if not isinstance(s, dict) or set(s) != {"E", "H", "I", "topk"}:
                raise ValueError(f"{source}: each shape needs exactly E, H, I, topk; got {s!r}")
            if s["H"] % 32 or s["I"] % 32:
                raise ValueError(f"{source}: shape {s} has H or I not a multiple of 32")
        for m in cfg.M:
            if not isinstance(m, int) or m < 0:
                raise ValueError(f"{source}: M values must be integers >= 0, got {m!r}")
        for env in cfg.envs:
            if not isinstance(env, dict) or not all(isinstance(v, str) for v in env.values()):
                raise ValueError(f"{source}: envs must be mappings of variable -> string, got {env!r}")
        for mode in cfg.scale_modes:
            em.ScaleMode.parse(mode, arg=f"{source}: scale_modes")
        return cfg


DEFAULT_CPU = VerifyConfig()
QUICK = VerifyConfig(M=(1, 256, 512), envs=({},), scale_modes=("round_up", "even"))
DEFAULT_GPU = VerifyConfig(shapes=({"E": 32, "H": 2880, "I": 2880, "topk": 4},), M=(1, 64, 255, 256, 511, 512))


def load_config(path: str) -> VerifyConfig:
    p = Path(path)
    if not p.exists():
        raise ValueError(f"--config: no file {path}")
    text = p.read_text()
    if p.suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"--config {path}: invalid JSON: {exc}") from None
    elif p.suffix == ".toml":
        try:
            import tomllib
        except ImportError:  # Python 3.10
            import tomli as tomllib
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ValueError(f"--config {path}: invalid TOML: {exc}") from None
    else:
        raise ValueError(f"--config {path}: expected a .json or .toml file")
    if not isinstance(data, dict):
        raise ValueError(f"--config {path}: expected a table/object at the top level")
    return VerifyConfig.from_mapping(data, source=f"--config {path}")


def _cases(cfg: VerifyConfig, archs):
    """The product of the matrix; the extra scale modes run on fp4x2 cases of the first arch and env."""
    from moe_ref import select_activation_dtype

    for shape, M, arch, env, gate_mode in itertools.product(cfg.shapes, cfg.M, archs, cfg.envs, cfg.gate_modes):
        dtype = select_activation_dtype(M, arch=arch, gate_mode=gate_mode, env=env).dtype
        every_mode = dtype == "fp4x2" and arch == archs[0] and env == cfg.envs[0]
        for mode in (cfg.scale_modes if every_mode else cfg.scale_modes[:1]):
            yield dict(shape=shape, M=M, arch=arch, env=env, gate_mode=gate_mode, scale_mode=mode)


def _stage1_bytes(run, hidden_np, act_dtype, scale_mode) -> tuple[int, int]:
    if act_dtype == "bf16":
        want = em.encode(hidden_np, "bf16")
        got = run.a_q.view(torch.int16).cpu().numpy().view(np.uint16)
        return int((got == want).sum()), want.size
    if act_dtype == "fp4x2":
        q, s = em.quantize_mxfp4(hidden_np, scale_mode=scale_mode)
    else:
        q, s = em.quantize_mxfp8(hidden_np, fmt="e4m3fn", scale_mode=scale_mode)
    got_q, got_s = run.a_q.cpu().numpy(), run.a_scale.cpu().numpy()
    return int((got_q == q).sum() + (got_s == s).sum()), q.size + s.size


def _mma_k(device: str):
    """The tolerance's accumulation model: tensor-core blocks of 16 on a GPU, sequential fp32 on CPU."""
    return 16 if device != "cpu" else None


def _reference_key(case: dict, ref_dtype: str, seed: int, mma_k) -> tuple:
    shape = tuple(case["shape"].items())
    return (seed, case["M"], shape, case["gate_mode"], ref_dtype, case["scale_mode"], mma_k)


def _problem(cache: dict, case: dict, seed: int):
    """The case's random problem: tokens and routing drawn per M, weights and biases per shape (one
    layer across the M sweep, so the references dequantize its weights once: ``MoEWeights``)."""
    pkey = (seed, case["M"], tuple(case["shape"].items()))
    if pkey not in cache:
        layer = random_moe_problem(np.random.default_rng([seed, *case["shape"].values()]), M=1, with_bias=True,
                                   **case["shape"])
        p = random_moe_problem(np.random.default_rng([seed, case["M"], *case["shape"].values()]), M=case["M"],
                               with_bias=True, **case["shape"])
        cache[pkey] = dataclasses.replace(p, w1=layer.w1, w1_scale=layer.w1_scale, w2=layer.w2,
                                          w2_scale=layer.w2_scale, bias1=layer.bias1, bias2=layer.bias2)
    return cache[pkey]


def _compute_reference(p, case: dict, ref_dtype: str, mma_k):
    """(emulated reference, float64 ideal, tolerance) of a case's problem."""
    kw = dict(gate_mode=case["gate_mode"], scale_mode=case["scale_mode"], **p.biases())
    ref, trace = moe_reference(*p.args(), act_dtype=ref_dtype, return_trace=True, **kw)
    ideal = moe_reference(*p.args(), act_dtype=None, **kw)
    w = MoEWeights.from_arrays(p.w1, p.w1_scale, p.w2, p.w2_scale)
    bound = kernel_tolerance(trace, w, p.topk_weights, p.topk_ids, act_dtype=ref_dtype,
                             gate_mode=case["gate_mode"], scale_mode=case["scale_mode"], mma_k=mma_k)
    return ref, ideal, bound


def _reference_job(job):  # a worker process: regenerates the problem from its seed
    case, ref_dtype, seed, mma_k = job
    return _compute_reference(_problem({}, case, seed), case, ref_dtype, mma_k)


def _reference(cache: dict, case: dict, ref_dtype: str, seed: int, mma_k):
    """Problem, emulated reference, ideal and tolerance of a case; cached, since many cases (other
    archs or env) select the same path on the same data and the references dominate the run time."""
    key = _reference_key(case, ref_dtype, seed, mma_k)
    if key not in cache:
        p = _problem(cache, case, seed)
        cache[key] = (p, *_compute_reference(p, case, ref_dtype, mma_k))
    return cache[key]


def _ref_dtype(case: dict, cfg: VerifyConfig) -> str:
    from moe_ref import select_activation_dtype

    act = select_activation_dtype(case["M"], arch=case["arch"], gate_mode=case["gate_mode"], env=case["env"]).dtype
    return cfg.reference_act_dtype or act


def prefetch_references(cases, cfg: VerifyConfig, device: str, cache: dict, workers: int) -> None:
    """Compute the distinct references of ``cases`` in ``workers`` processes (host work that dominates
    a GPU run: float64 and exact-dot references of gpt-oss shapes) and fill ``cache``."""
    mma_k = _mma_k(device)
    jobs = {}
    for case in cases:
        ref_dtype = _ref_dtype(case, cfg)
        jobs.setdefault(_reference_key(case, ref_dtype, cfg.seed, mma_k), (case, ref_dtype, cfg.seed, mma_k))
    jobs = {k: j for k, j in jobs.items() if k not in cache}
    if workers <= 1 or len(jobs) <= 1:
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    t0 = time.perf_counter()
    with ProcessPoolExecutor(min(workers, len(jobs)), mp_context=multiprocessing.get_context("fork")) as ex:
        for i, (key, res) in enumerate(zip(jobs, ex.map(_reference_job, jobs.values())), 1):
            case = jobs[key][0]
            cache[key] = (_problem(cache, case, cfg.seed), *res)
            _progress(i, len(jobs), t0, "references")


def run_case(case: dict, cfg: VerifyConfig, device: str, seed: int, cache: dict | None = None) -> dict:
    cache = {} if cache is None else cache
    ref_dtype = _ref_dtype(case, cfg)
    p, ref, ideal, bound = _reference(cache, case, ref_dtype, seed, _mma_k(device))
    bound = cfg.tolerance_scale * bound
    pt = p.to_torch(device)
    t0 = time.perf_counter()
    out, run = fused_moe(*pt.args(), **pt.biases(), gate_mode=case["gate_mode"], scale_mode=case["scale_mode"],
                         arch=case["arch"], env=case["env"], return_trace=True, poison=True)
    seconds = time.perf_counter() - t0
    act = run.plan.act_dtype  # the path that ran (the comparison below fails if it is not ref_dtype's)
    o = out.float().cpu().numpy().astype(np.float64)
    diff_ref, diff_ideal = np.abs(o - ref), np.abs(o - ideal)
    scale = max(float(np.abs(ideal).max()), 1e-30) if ideal.size else 1.0
    equal, total = _stage1_bytes(run, em.round_to_bf16(p.hidden), act, case["scale_mode"])
    within = bool(np.all(diff_ref <= bound))
    return dict(
        E=case["shape"]["E"], H=case["shape"]["H"], I=case["shape"]["I"], topk=case["shape"]["topk"], M=case["M"],
        arch=case["arch"], env=case["env"], gate_mode=case["gate_mode"], scale_mode=case["scale_mode"],
        path=run.plan.path, act_dtype=act, rule=run.plan.decision.rule, reason=run.plan.decision.reason,
        bytes_equal=equal, bytes_total=total,
        max_err_ref=float(diff_ref.max()) if o.size else 0.0, rel_err_ref=float(diff_ref.max() / scale) if o.size else 0.0,
        max_err_ideal=float(diff_ideal.max()) if o.size else 0.0,
        rel_err_ideal=float(diff_ideal.max() / scale) if o.size else 0.0,
        within_tolerance=within, kernel_seconds=seconds,
        verdict="PASS" if within and equal == total else "FAIL",
    )


def _progress(i: int, n: int, t0: float, what: str = "cases") -> None:
    bar = "#" * int(30 * i / n)
    end = "\n" if i == n and what != "cases" else ""
    print(f"\r[{bar:<30}] {i}/{n} {what}, {time.perf_counter() - t0:5.1f}s", end=end, file=sys.stderr, flush=True)


def run(cfg: VerifyConfig, *, device: str, archs, workers: int = 1) -> list[dict]:
    cases = list(_cases(cfg, archs))
    rows, cache = [], {}
    prefetch_references(cases, cfg, device, cache, workers)
    t0 = time.perf_counter()
    _progress(0, len(cases), t0)
    for i, case in enumerate(cases, 1):
        rows.append(run_case(case, cfg, device, cfg.seed, cache))
        _progress(i, len(cases), t0)
    print(file=sys.stderr)
    return rows


def _env_text(env: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in env.items()) or "-"


def format_table(rows: list[dict]) -> str:
    head = (f"{'E/H/I/k':16s} {'M':>5s} {'arch':7s} {'env':28s} {'gate':10s} {'scale':10s} {'path':6s} {'rule':>4s} "
            f"{'bytes eq':>13s} {'err ref':>9s} {'rel ref':>8s} {'err ideal':>9s} {'rel ideal':>9s} verdict")
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['E']}/{r['H']}/{r['I']}/{r['topk']:<6} {r['M']:5d} {r['arch']:7s} {_env_text(r['env']):28s} "
            f"{r['gate_mode']:10s} {r['scale_mode']:10s} {r['path']:6s} {r['rule']:4d} "
            f"{r['bytes_equal']:>6d}/{r['bytes_total']:<6d} {r['max_err_ref']:9.2e} {r['rel_err_ref']:8.1e} "
            f"{r['max_err_ideal']:9.2e} {r['rel_err_ideal']:9.1e} {r['verdict']}")
    return "\n".join(lines)


def _markdown(rows, meta) -> str:
    n_fail = sum(r["verdict"] == "FAIL" for r in rows)
    lines = ["# moe-oracle conformance report", "", f"- device: {meta['device']}", f"- cases: {len(rows)}, failed: {n_fail}",
             f"- seed: {meta['seed']}", "", "| M | arch | env | gate | scale | path | rule | reason | bytes equal | "
             "max err vs emulated | max err vs ideal | verdict |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['M']} | {r['arch']} | {_env_text(r['env'])} | {r['gate_mode']} | {r['scale_mode']} | "
                     f"{r['path']} | {r['rule']} | {r['reason']} | {r['bytes_equal']}/{r['bytes_total']} | "
                     f"{r['max_err_ref']:.3g} | {r['max_err_ideal']:.3g} | {r['verdict']} |")
    return "\n".join(lines) + "\n"


def _plot(rows, path: Path) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install 'moe-oracle[plot]'): no plot written"
    rows = [r for r in rows if r["M"] > 0]
    if not rows:
        return "no case with M > 0: no plot written"
    fig, ax = plt.subplots(figsize=(7, 4))
    floor = 1e-9  # exact agreement (error 0) is drawn on this line
    for color, p in zip(("C0", "C1", "C2"), sorted({r["path"] for r in rows}), strict=False):
        pts = sorted((r["M"], max(r["rel_err_ideal"], floor)) for r in rows if r["path"] == p)
        ax.plot([m for m, _ in pts], [e for _, e in pts], "o", color=color, label=f"{p}: vs float64 ideal")
        pts = sorted((r["M"], max(r["rel_err_ref"], floor)) for r in rows if r["path"] == p)
        ax.plot([m for m, _ in pts], [e for _, e in pts], "x", color=color, label=f"{p}: vs emulated reference")
    ax.axhline(floor, color="grey", lw=0.5, ls=":")
    ax.text(min(r["M"] for r in rows), floor * 1.5, "exact (error 0)", fontsize=7, color="grey")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("M (tokens)")
    ax.set_ylabel("max relative error")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="moe-oracle verify", description=__doc__.splitlines()[0])
    ap.add_argument("--config", help="JSON or TOML file (keys: shapes, M, archs, envs, gate_modes, scale_modes, seed, "
                                     "tolerance_scale, reference_act_dtype)")
    ap.add_argument("--device", choices=["cpu", "cuda"], default=None)
    ap.add_argument("--arch", action="append", help="arch profile(s) to run (default: gfx942, gfx950 and the detected one)")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--out", default=None, help="directory for report.json, report.md and error_vs_M.png")
    ap.add_argument("--quick", action="store_true", help="a smaller matrix (CI smoke run)")
    ap.add_argument("--workers", type=int, default=None,
                    help="processes computing the references (default: up to 8 on a GPU run, 1 on CPU)")
    args = ap.parse_args(argv)
    gpu = torch.cuda.is_available() and not _runtime.INTERPRET
    device = args.device or ("cuda" if gpu else "cpu")
    if device == "cuda" and not gpu:
        ap.error("--device cuda: no GPU is visible (or TRITON_INTERPRET=1)")
    try:
        cfg = load_config(args.config) if args.config else (QUICK if args.quick else DEFAULT_GPU if device == "cuda" else DEFAULT_CPU)
    except ValueError as exc:
        print(f"moe-oracle verify: {exc}", file=sys.stderr)
        return 2
    if args.seed is not None:
        cfg = dataclasses.replace(cfg, seed=args.seed)
    if cfg.seed is None:
        import secrets

        cfg = dataclasses.replace(cfg, seed=secrets.randbits(32))
    print(f"seed: {cfg.seed} (rerun with --seed {cfg.seed})", file=sys.stderr)
    from moe_ref import detect_arch

    archs = list(dict.fromkeys(args.arch or [*cfg.archs, detect_arch()]))
    workers = args.workers if args.workers is not None else (min(8, os.cpu_count() or 1) if device == "cuda" else 1)
    rows = run(cfg, device=device, archs=archs, workers=workers)
    print(format_table(rows))
    n_fail = sum(r["verdict"] == "FAIL" for r in rows)
    meta = dict(device=torch.cuda.get_device_name() if device == "cuda" else "cpu (Triton interpreter)",
                seed=cfg.seed, config=dataclasses.asdict(cfg), archs=archs)
    print(f"\n{len(rows) - n_fail} passed, {n_fail} failed")
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "report.json").write_text(json.dumps({"meta": meta, "cases": rows}, indent=1))
        (out / "report.md").write_text(_markdown(rows, meta))
        note = _plot(rows, out / "error_vs_M.png")
        if note:
            print(note, file=sys.stderr)
    return 1 if n_fail else 0


def cli() -> None:
    """Console script ``moe-oracle``: ``moe-oracle verify [options]``."""
    argv = sys.argv[1:]
    if not argv or argv[0] != "verify":
        sys.exit("usage: moe-oracle verify [--config FILE] [--device cpu|cuda] [--arch ARCH] [--seed N] [--out DIR] [--quick]")
    sys.exit(main(argv[1:]))


if __name__ == "__main__":
    sys.exit(main())
