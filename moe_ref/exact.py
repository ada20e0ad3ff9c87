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

__all__ = ["exact_matmul_f32", "exact_round_f32", "round_parts_f32", "settle_f32", "split_rows", "round_scaled_int_to_f32",
           "accumulation_bits", "row_bits"]


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
    2. wider rows: split at per-row bits into up to ``MAX_PARTS`` parts that each fit, multiplied
       separately (``matmul(part)``: float64 ``part @ w.T``, exact by 1.), and the exact sum of the
       parts' products rounded once to fp32 (:func:`round_parts_f32`: error-free expansions);
    3. the other cells (weights too wide for any split, or more parts than that): summed with Python
       integers from ``w_row(j)`` (row j of w, float32).
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
    split = inexact & (span_x <= MAX_PARTS * room) if matmul is not None and room >= 1 else np.zeros_like(inexact)
    rows = np.flatnonzero(split)
    if rows.size:
        parts = split_rows(x[rows], lx[rows], room, -(-int(span_x[rows].max()) // room))
        out[rows] = round_parts_f32([matmul(part) for part in parts])
    rest = np.flatnonzero(inexact & ~split)
    slow = accumulation_bits(x[rest], None, w_bits) > F64_BITS
    for i, row in zip(np.flatnonzero(slow.any(axis=1)), rest[slow.any(axis=1)]):
        xi = [int(v) for v in np.ldexp(x[row].astype(np.float64), -int(lx[row]))]
        for j in np.flatnonzero(slow[i]):
            wj = [int(v) for v in np.ldexp(np.asarray(w_row(j), np.float64), -int(lw[j]))]
            out[row, j] = round_scaled_int_to_f32(sum(a * b for a, b in zip(xi, wj)), int(lx[row] + lw[j]))
    return out


MAX_PARTS = 8  # tier 2's limit: a row of fp32 values spans at most 277 bits; the bf16 rows seen span < 100


def split_rows(x: np.ndarray, low: np.ndarray, room: int, n: int) -> list[np.ndarray]:
    """``n`` float64 parts summing exactly to the rows of ``x`` (float32 [r, K]); part j holds the bits
    of each row from 2^(low + j * room) up to (not including) 2^(low + (j + 1) * room), the last one the
    rest: every part spans at most ``room`` bits where the row spans at most ``n * room``. Exact:
    scaling by powers of two, truncation, and differences of numbers sharing their high bits."""
    x64 = x.astype(np.float64)
    cut = [x64]
    for j in range(1, n):
        unit = np.ldexp(1.0, (low.astype(np.int64) + j * room))[:, None]
        cut.append(np.trunc(x64 / unit) * unit)  # the row without its bits below unit
    cut.append(np.zeros_like(x64))
    return [cut[j] - cut[j + 1] for j in range(n)]


def _two_sum(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """s = fl(a + b) and its error e: a + b = s + e exactly (Knuth's TwoSum, round to nearest)."""
    s = a + b
    bv = s - a
    return s, (a - (s - bv)) + (b - bv)


def _grow(expansion: list[np.ndarray], b: np.ndarray) -> list[np.ndarray]:
    """Shewchuk's Grow-Expansion, elementwise: a nonoverlapping expansion (components of increasing
    magnitude, zeros anywhere) of exactly sum(expansion) + b."""
    grown, q = [], b
    for component in expansion:
        q, err = _two_sum(q, component)
        grown.append(err)
    return [*grown, q]


def _sign(expansion: list[np.ndarray]) -> np.ndarray:
    """Sign of a nonoverlapping expansion's exact sum: its largest (last) nonzero component's."""
    sign = np.zeros(expansion[0].shape)
    for component in expansion:
        sign = np.where(component != 0, np.sign(component), sign)
    return sign


_F32_OVERFLOW = 2.0**128 - 2.0**103  # the midpoint between fp32's largest value and 2^128: ties go up (to inf)


def round_parts_f32(parts: list[np.ndarray]) -> np.ndarray:
    """fp32 (ties to even; inf past fp32's range) of the exact sum of float64 arrays ``parts``; an exact
    zero sum is +0 (an fp32 accumulator that starts at +0).

    The parts become one nonoverlapping expansion (exact); a first guess, the fp32 of its float64 sum,
    is then settled by :func:`settle_f32`."""
    expansion = [parts[0]]
    for part in parts[1:]:
        expansion = _grow(expansion, part)
    with np.errstate(over="ignore"):  # a float64 sum past fp32's range: an inf guess, settled below
        guess = sum(expansion[1:], expansion[0]).astype(np.float32)
    return np.where(_sign(expansion) == 0, np.float32(0), settle_f32(expansion, guess))


def settle_f32(expansion: list[np.ndarray], r: np.ndarray) -> np.ndarray:
    """The fp32 nearest (ties to even; inf past fp32's range) to the exact sum of a nonoverlapping
    ``expansion``, from fp32 guesses ``r`` a few ulps off: r moves to its neighbour while the sum lies
    beyond their midpoint (midpoints of fp32 values are float64 values: the test ``sign(sum - midpoint)``
    is exact), and from a sum exactly on the midpoint r moves only when it is odd."""
    r = np.asarray(r, np.float32)
    with np.errstate(over="ignore", invalid="ignore"):
        for _ in range(64):  # guesses from round_parts_f32 are within one ulp: one pass settles them
            moved = np.zeros(r.shape, bool)
            for toward in (np.float32(np.inf), np.float32(-np.inf)):
                other = np.nextafter(r, toward)
                mid = (r.astype(np.float64) + other.astype(np.float64)) / 2
                edge = np.where(np.isinf(r), r, other).astype(np.float64)  # a midpoint next to inf: the overflow threshold
                mid = np.where(np.isinf(edge), np.copysign(_F32_OVERFLOW, edge), mid)
                beyond = _sign(_grow(expansion, -mid)) * np.sign(other.astype(np.float64) - r)
                odd = (r.view(np.uint32) & 1) == 1
                step = ~np.isinf(r) | (np.sign(r) != np.sign(toward))  # inf moves back only
                step &= (beyond > 0) | ((beyond == 0) & odd)
                r, moved = np.where(step, other, r), moved | step
            if not moved.any():
                return r
    raise AssertionError("settle_f32 did not settle")  # unreachable: each step nears the sum
