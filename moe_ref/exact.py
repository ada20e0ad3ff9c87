"""Dot products computed exactly and rounded once to fp32 (the reference's GEMM semantic).

Fast path: float64 matmul, used only where it is provably exact: every product of two fp32 values
is a multiple of 2^(low_a + low_w) (their lowest set bits) and below 2^(high_a + high_w), so any
partial sum of K of them fits float64's 53 bits when high_a + high_w + ceil(log2 K) - low_a - low_w
<= 53, whatever the summation order. Other (row, column) cells are summed with Python integers
and rounded to fp32 by hand (ties to even). Exact inputs of quantized MoE paths (bf16, e2m1, e4m3 with
power-of-two scales) nearly always take the fast path.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["exact_matmul_f32", "exact_round_f32", "round_scaled_int_to_f32", "accumulation_bits", "row_bits"]


F64_BITS = 53  # float64's significand: sums needing at most this many bits are exact in any order


def _exponent_of(v: np.ndarray) -> np.ndarray:
    """floor(log2(v)) for positive integers v < 2^24 (exact through an fp32 conversion)."""
    return (v.astype(np.float32).view(np.uint32) >> np.uint32(23)).astype(np.int32) - 127


def _bit_range(a: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Per slice along ``axis``: lowest set bit exponent and (highest exponent + 1) of nonzero values."""
    bits = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32) & np.uint32(0x7FFFFFFF)
    exp_field = (bits >> np.uint32(23)).astype(np.int32)
    mant = bits & np.uint32(0x7FFFFF)
    m24 = np.where(exp_field > 0, mant | np.uint32(0x800000), mant)
    e0 = np.maximum(exp_field, 1) - 150  # value = m24 * 2^e0
    nonzero = m24 != 0
    lowest = m24 & (~m24 + np.uint32(1))
    big, small = np.iinfo(np.int32).max, np.iinfo(np.int32).min
    low = np.where(nonzero, e0 + _exponent_of(np.where(nonzero, lowest, 1)), big).min(axis=axis)
    high = np.where(nonzero, e0 + _exponent_of(np.where(nonzero, m24, 1)) + 1, small).max(axis=axis)
    return low, high


def row_bits(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row of a float32 matrix: (lowest set bit, highest exponent + 1) of its nonzero values."""
    return _bit_range(np.ascontiguousarray(x, dtype=np.float32), 1)


def round_scaled_int_to_f32(n: int, q: int) -> np.float32:
    """The fp32 nearest (ties to even) to ``n * 2**q`` for a Python int ``n``; inf past fp32's range."""
    if n == 0:
        return np.float32(0.0)
    sign, n = (-1.0 if n < 0 else 1.0), abs(n)
    e = n.bit_length() - 1 + q
    quantum = max(e, -126) - 23
    shift = quantum - q
    if shift > 0:
        r = n >> shift
        rem, half = n - (r << shift), 1 << (shift - 1)
        if rem > half or (rem == half and r & 1):
            r += 1
    else:
        r = n << -shift
    value = math.ldexp(float(r), quantum) if quantum < 1000 else math.inf
    with np.errstate(over="ignore"):
        return np.float32(sign * value)


def accumulation_bits(x: np.ndarray, w: np.ndarray, w_bits=None) -> np.ndarray:
    """[n, N]: significant bits any partial sum of x[i] . w[j] can need (any order).

    At most 24: the dot product is exact in fp32 whatever the accumulation order; at most 53: in
    float64. Rows or columns of zeros need 0 bits.
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    lx, hx = _bit_range(x, 1)
    lw, hw = _bit_range(np.ascontiguousarray(w, dtype=np.float32), 1) if w_bits is None else w_bits
    k = max(x.shape[1], 1)
    need = (hx[:, None] + hw[None, :]) + math.ceil(math.log2(k)) - (lx[:, None] + lw[None, :])
    live = (lx[:, None] < np.iinfo(np.int32).max) & (lw[None, :] < np.iinfo(np.int32).max)
    return np.where(live, need, 0)


def exact_matmul_f32(x: np.ndarray, w: np.ndarray, w_bits=None) -> np.ndarray:
    """``x @ w.T`` with every dot product exact, rounded once to fp32. x [n, K], w [N, K] float32.

    ``w_bits``: w's per-row (lowest set bit, highest exponent + 1), if already known (MXFP4 weights
    give them cheaply from codes and scales: ``moe_ref.weights.MoEWeights``).
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    w = np.ascontiguousarray(w, dtype=np.float32)
    w64 = w.astype(np.float64)

    def matmul(a):
        with np.errstate(invalid="ignore", over="ignore"):
            return np.asarray(a, np.float64) @ w64.T

    return exact_round_f32(x, matmul(x), _bit_range(w, 1) if w_bits is None else w_bits, w.__getitem__,
                           bool(np.isfinite(w).all()), matmul)


def exact_round_f32(x: np.ndarray, product: np.ndarray, w_bits, w_row, w_finite: bool = True,
                    matmul=None, x_bits=None) -> np.ndarray:
    """fp32 of the exact ``x @ w.T`` from its float64 ``product`` computed in any order (on any device).

    Three tiers, each exact under the condition it checks:
    1. every partial sum fits 53 bits (:func:`accumulation_bits`): ``product`` is exact whatever the
       order; a per-row test settles whole matrices at once (the common case, no [n, N] work);
    2. rows spanning up to twice what fits: split at a per-row bit into high and low parts that each
       fit, multiplied separately (``matmul(part)``: float64 ``part @ w.T``, exact by 1.), and their
       sum rounded once to fp32 through an error-free sum (:func:`_round_sum_f32`);
    3. the other cells: summed with Python integers from ``w_row(j)`` (row j of w, float32).
    (NUMERICS.md section 12: why each tier, and what needs the second.)
    Non-finite inputs: the float64 product's own result. ``x_bits``: x's per-row bit range, if known."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    with np.errstate(invalid="ignore", over="ignore"):
        out = product.astype(np.float32)
    k = x.shape[1]
    if k == 0 or out.size == 0 or not (w_finite and np.isfinite(x).all()):
        return out
    lx, hx = _bit_range(x, 1) if x_bits is None else x_bits
    lw, hw = w_bits
    big = np.iinfo(np.int32).max
    span_x = np.where(lx < big, hx - lx, 0)
    span_w = np.where(lw < big, hw - lw, 0)
    room = F64_BITS - int(span_w.max()) - math.ceil(math.log2(k))  # bits a row (or a part of it) may span
    if int(span_x.max()) <= room:
        return out
    inexact = span_x > room
    split = inexact & (span_x <= 2 * room) if matmul is not None and room >= 1 else np.zeros_like(inexact)
    rows = np.flatnonzero(split)
    if rows.size:
        xr = x[rows].astype(np.float64)
        unit = np.ldexp(1.0, (lx[rows] + room).astype(np.int64))[:, None]  # parts: multiples of it, and below it
        high = np.trunc(xr / unit) * unit  # exact: power-of-two scaling, truncation, difference
        out[rows] = _round_sum_f32(matmul(high), matmul(xr - high))
    rest = np.flatnonzero(inexact & ~split)
    slow = accumulation_bits(x[rest], None, w_bits) > F64_BITS
    for i, row in zip(np.flatnonzero(slow.any(axis=1)), rest[slow.any(axis=1)]):
        xi = [int(v) for v in np.ldexp(x[row].astype(np.float64), -int(lx[row]))]
        for j in np.flatnonzero(slow[i]):
            wj = [int(v) for v in np.ldexp(np.asarray(w_row(j), np.float64), -int(lw[j]))]
            out[row, j] = round_scaled_int_to_f32(sum(a * b for a, b in zip(xi, wj)), int(lx[row] + lw[j]))
    return out


def _round_sum_f32(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """fp32 (ties to even) of the exact a + b of float64 arrays: s = fl(a + b) and its error e (TwoSum,
    a + b = s + e exactly, |e| <= ulp(s) / 2). fp32(s) is the answer unless s is exactly halfway between
    two fp32 values (fp32 midpoints have 25 bits: any other s lies further than |e| from them); there
    e != 0 decides the side."""
    with np.errstate(invalid="ignore", over="ignore"):
        s = a + b
        bv = s - a
        err = (a - (s - bv)) + (b - bv)
        r = s.astype(np.float32)
        r64 = r.astype(np.float64)
        toward = np.nextafter(r, np.where(s > r64, np.float32(np.inf), np.float32(-np.inf)))
        t64 = toward.astype(np.float64)
        tie = (s != r64) & (s == (r64 + t64) / 2) & (err != 0) & np.isfinite(s)
        other = tie & (np.sign(err) == np.sign(t64 - r64))
    return np.where(other, toward, r)
