"""Comparison of an output with a reference under an elementwise bound: error, bound and margin."""

from __future__ import annotations

import numpy as np

from moe_ref.tolerance import bf16_ulp

from .rows import Comparison

__all__ = ["compare_output", "margin_of"]


def margin_of(err: np.ndarray, bound: np.ndarray) -> float:
    """max(err / bound): <= 1 passes. 0/0 counts 0; err > 0 where the bound is 0 counts inf; NaN: inf."""
    if not err.size:
        return 0.0
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(err == 0, 0.0, err / bound)
    ratio = np.where(np.isnan(ratio), np.inf, ratio)
    return float(ratio.max())


def compare_output(out: np.ndarray, ref: np.ndarray, ideal: np.ndarray, bound: np.ndarray) -> Comparison:
    """Errors of ``out`` (float64) against the emulated reference and the ideal, the bound and margin."""
    diff_ref, diff_ideal = np.abs(out - ref), np.abs(out - ideal)
    scale = max(float(np.abs(ideal).max()), 1e-30) if ideal.size else 1.0
    margin = margin_of(diff_ref, bound)
    worst = int(np.argmax(np.where(np.isnan(diff_ref), np.inf, diff_ref / np.maximum(bound, 1e-300)))) if out.size else 0
    mx = lambda a: float(np.nanmax(a)) if a.size and not np.all(np.isnan(a)) else 0.0  # noqa: E731
    return Comparison(
        max_err_ref=mx(diff_ref), rel_err_ref=mx(diff_ref) / scale,
        max_err_ideal=mx(diff_ideal), rel_err_ideal=mx(diff_ideal) / scale,
        quant_cost_rel=mx(np.abs(ref - ideal)) / scale,  # what the path's quantization alone costs
        bound_max=float(bound.max()) if bound.size else 0.0,
        bound_at_worst=float(bound.reshape(-1)[worst]) if out.size else 0.0,
        err_at_worst=float(diff_ref.reshape(-1)[worst]) if out.size else 0.0,  # the same element as the bound
        # margin exactly 1 with an error: the output took the other bf16 rounding of an fp32 interval that
        # holds a rounding boundary, the one step the bound grants there (NUMERICS.md section 11, step 5)
        at_rounding_step=bool(out.size and 0 < diff_ref.reshape(-1)[worst] == bound.reshape(-1)[worst]),
        margin=margin, within_tolerance=bool(margin <= 1.0),
        nan_out=int(np.isnan(out).sum()), inf_out=int(np.isinf(out).sum()),
        n_outside=int((~(diff_ref <= bound)).sum()),
        max_err_ulps=float(np.nanmax(diff_ref / bf16_ulp(ref))) if out.size and not np.all(np.isnan(diff_ref)) else 0.0,
    )
