"""The engine: every check an implementation's callables allow, over the configured matrix."""

from __future__ import annotations

import time
import traceback
import zlib
from pathlib import Path

from moe_ref import select_activation_dtype
from moe_ref.env import bound_points

from . import references as refs
from .cases import LayerCase, cases
from .contract import ContractError
from .implementation import Implementation, call_with
from .layer import check_layer_case, judged_act_dtype, layer_capabilities
from .progress import Progress
from .quantizers import check_quantizer
from .rows import ErrorRow

__all__ = ["layer_cases", "error_row", "run_layers", "run_quantizers", "run_stages", "run_selector", "layer_archs",
           "raised_at"]


def layer_archs(impl: Implementation, archs):
    """The arch profiles a layer can be run at: all asked for when it takes ``arch``, else its own."""
    if impl.archs is not None:
        return [a for a in archs if a in impl.archs] or list(impl.archs)
    return list(archs) if "arch" in layer_capabilities(impl.fused_moe) else None


def layer_cases(impl: Implementation, cfg, archs, shard: tuple[int, int] | None = None) -> list[tuple[int, LayerCase]]:
    """(index, case) of the layer's cases; ``shard=(k, n)``: the k-th of n shares, whole (shape, M)
    groups each (the cases that share a layer and its references stay together)."""
    gate_modes = cfg.gate_modes
    if "gate_mode" not in layer_capabilities(impl.fused_moe):
        gate_modes = (impl.declared.get("gate_mode", "separated"),)
    indexed = list(enumerate(cases(cfg, archs, gate_modes)))
    if shard is None:
        return indexed
    groups: dict = {}
    for _, c in indexed:
        groups.setdefault(c.group, len(groups))
    k, n = shard
    return [(i, c) for i, c in indexed if groups[c.group] % n == k]


def run_layers(impl: Implementation, cfg, *, device, archs, workers: int = 1, on_row=None,
               max_memory_gib: float | None = None, shard: tuple[int, int] | None = None,
               progress: bool = True) -> list[dict]:
    """One row per case (of ``shard``, see :func:`layer_cases`); a case that raises is a row with its
    error (the rest still run); ``on_row(row)`` sees each row as it is made (the CLI keeps them on
    disk: a run that dies keeps its rows)."""
    import torch

    device = torch.device(device)
    caps = layer_capabilities(impl.fused_moe)
    case_list = [c for _, c in layer_cases(impl, cfg, archs, shard)]
    cache: dict = {}
    mma_k = refs.mma_k_of(device.type)
    at = refs.reference_device(device)
    jobs = [(c, judged_act_dtype(impl, c, cfg), cfg.seed, mma_k, "bias1" in caps, at)
            for c in case_list]
    refs.prefetch(jobs, cache, workers, max_memory_gib, progress=progress)
    bar = Progress(len(case_list), "cases", enabled=progress)
    rows, t0 = [], time.perf_counter()
    for i, case in enumerate(case_list):
        try:
            rows.append(check_layer_case(impl, case, cfg, device, cfg.seed, cache))
        except ContractError as exc:
            rows.append(error_row(impl, case, str(exc)))
        except Exception as exc:  # noqa: BLE001 - a failing case is a row, never the end of the report
            rows.append(error_row(impl, case, f"raised {type(exc).__name__}: {exc}", raised_at(exc)))
        if on_row is not None:
            on_row(rows[-1])
        following = case_list[i + 1] if i + 1 < len(case_list) else None
        if following is None or following.group != case.group:
            refs.release(cache, case, keep_layer=following is not None and following.shape == case.shape)
        bar.step(f"{time.perf_counter() - t0:.0f}s")
    bar.close()
    return rows


_OWN = Path(__file__).resolve().parent


def raised_at(exc: BaseException, frames: int = 6) -> str:
    """Where a case raised: the traceback from the implementation's call inward (the oracle's frames that
    led to it dropped; all of them where the oracle itself raised), its innermost ``frames``, the error."""
    stack = traceback.extract_tb(exc.__traceback__)
    first = next((i for i, f in enumerate(stack) if not Path(f.filename).resolve().is_relative_to(_OWN)), 0)
    return "Traceback (most recent call last):\n" + "".join(traceback.format_list(stack[first:][-frames:])) + \
        "".join(traceback.format_exception_only(type(exc), exc))


def error_row(impl: Implementation, case: LayerCase, error: str, trace: str = "") -> ErrorRow:
    """The row of a case that could not be checked: a FAIL naming why."""
    return ErrorRow(impl=impl.name, **case.columns(), verdict="FAIL", error=error, traceback=trace)


def run_quantizers(impl: Implementation, cfg, *, device) -> list[dict]:
    """Each quantizer it provides, per scale mode it can be asked for and input dtype, on fresh data."""
    checks = []
    for qz in impl.quantizers():
        if qz.kind.startswith("quantize_fp8_per_") or qz.kind == "dequantize_mxfp4":
            modes = [None]
        elif qz.scale_modes == ():
            modes = [qz.fixed_mode]
        else:
            modes = [m for m in cfg.scale_modes if qz.scale_modes is None or m in qz.scale_modes]
        fmts = ("e2m1",) if qz.kind in ("quantize_mxfp4", "quantize_dequantize_mxfp4", "dequantize_mxfp4") else qz.fp8_formats
        dtypes = ("-",) if qz.kind == "dequantize_mxfp4" else qz.input_dtypes
        for mode, fmt, dtype in ((m, f, d) for m in modes for f in fmts for d in dtypes):
            seed = zlib.crc32(repr((cfg.seed, qz.label, mode, fmt, dtype)).encode())  # fresh per run, logged
            row = dict(impl=impl.name, kind=qz.label, fmt=fmt, input_dtype=dtype, requested=mode or "-", seed=seed)
            try:
                c = check_quantizer(qz.fn, qz.kind, scale_mode=mode or "round_up", fmt=None if fmt == "e2m1" else fmt,
                                    input_dtype="bfloat16" if dtype == "-" else dtype, device=device, seed=seed)
                notes = "; ".join(n for n in (c.diagnosis(), qz.note) if n)
                row.update(bytes_equal=c.bytes_equal, bytes_total=c.bytes_total, unit=c.unit, verdict=c.verdict,
                           follows=c.follows, closest=c.closest, differing=c.differing, policies=c.policies,
                           diagnosis=notes)
            except ContractError as exc:
                row.update(bytes_equal=0, bytes_total=0, verdict="FAIL", diagnosis=str(exc))
            except Exception as exc:  # noqa: BLE001
                row.update(bytes_equal=0, bytes_total=0, verdict="FAIL", diagnosis=f"raised {type(exc).__name__}: {exc}")
            checks.append(row)
    return checks


def run_stages(impl: Implementation, cfg, *, device) -> list[dict]:
    """Its MoE GEMM stage per shape (stage 1's: K = H, N = 2I) x M x routed weight applied or not."""
    from .stage import check_stage

    if impl.moe_gemm_stage is None:
        return []
    rows = []
    for shape in cfg.shapes:
        for M in sorted({m for m in cfg.M if m > 0} | {1}):
            for mul in (False, True):
                seed = zlib.crc32(repr((cfg.seed, "stage", M, mul, tuple(shape.items()))).encode())
                row = dict(impl=impl.name, M=M, E=shape["E"], K=shape["H"], N=2 * shape["I"], topk=shape["topk"],
                           mul_routed_weight=mul, seed=seed)
                try:
                    row.update(check_stage(impl.moe_gemm_stage, M=M, E=shape["E"], K=shape["H"], N=2 * shape["I"],
                                           topk=shape["topk"], mul_routed_weight=mul, seed=seed, device=device,
                                           guard_bands=cfg.guard_bands))
                except Exception as exc:  # noqa: BLE001
                    row.update(verdict="FAIL", margin=float("nan"), max_err=float("nan"),
                               diagnosis=f"raised {type(exc).__name__}: {exc}")
                rows.append(row)
    return rows


def run_selector(impl: Implementation, cfg, archs) -> list[dict]:
    """Its own dispatch against ``select_activation_dtype`` over M (both sides of every bound) x arch x
    gate mode x env."""
    if impl.select_act_dtype is None:
        return []
    Ms = sorted(set(cfg.M) | {0, 1, 8192} | set(bound_points()))
    rows = []
    for M in Ms:
        for arch in archs:
            for gate_mode in cfg.gate_modes:
                for env in cfg.envs:
                    ours = select_activation_dtype(M, arch=arch, gate_mode=gate_mode, env=env).dtype
                    try:
                        theirs = call_with(impl.select_act_dtype, M, arch=arch, gate_mode=gate_mode, env=env)
                    except Exception as exc:  # noqa: BLE001
                        theirs = f"raised {type(exc).__name__}: {exc}"
                    rows.append(dict(M=M, arch=arch, gate_mode=gate_mode, env=env, selector=ours, impl=theirs,
                                     agree=ours == theirs))
    return rows
