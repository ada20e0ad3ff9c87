"""Test inputs for quantizers: blocks of 32 by kind, so that a difference can be named by the kind of
block it sits in (ordinary, ties, zero, subnormal, huge amax, NaN/Inf)."""

from __future__ import annotations

import functools

import numpy as np

import emulation as em

__all__ = ["BLOCK_KINDS", "quantizer_input", "given_input", "check_shape", "classify_blocks", "division_tie_values"]

BLOCK_KINDS = ("ordinary", "ties", "zero", "subnormal", "huge", "nan_inf")


def _grid_midpoints(fmt: str) -> np.ndarray:
    f = em.get_format(fmt)
    vals = em.decode(np.arange(f.num_codes), f).astype(np.float64)
    vals = np.unique(vals[np.isfinite(vals) & (vals >= 0)])
    return (vals[:-1] + vals[1:]) / 2


def _block(rng, kind: str, fmt: str) -> np.ndarray:
    f = em.get_format(fmt)
    k = int(rng.integers(-12, 12))
    if kind == "ordinary":
        return rng.standard_normal(32) * 2.0 ** rng.uniform(-20, 20)
    if kind == "ties":  # amax = max_finite * 2^k (the scale 2^k in every mode), elements on grid midpoints
        mids = _grid_midpoints(fmt)
        x = rng.choice(mids[mids < f.max_finite], 32) * np.where(rng.random(32) < 0.5, -1, 1)
        x[int(rng.integers(32))] = f.max_finite
        return x * 2.0**k
    if kind == "zero":
        return np.where(rng.random(32) < 0.5, -0.0, 0.0)
    if kind == "subnormal":  # fp32 subnormal amax
        return rng.standard_normal(32) * 2.0**-135
    if kind == "huge":
        return rng.standard_normal(32) * 2.0**125
    x = rng.standard_normal(32)
    x[rng.integers(32, size=2)] = rng.choice([np.nan, np.inf, -np.inf], 2)
    return x


def quantizer_input(rng: np.random.Generator, M: int = 32, K: int = 256, fmt: str = "e2m1",
                    per_row: bool = False) -> np.ndarray:
    """fp32 [M, K]: each 32-block of one kind, every kind present; ``fmt`` picks the tie grid. With
    ``per_row`` (per-token quantizers: a NaN anywhere poisons its row) zero and NaN/Inf blocks are
    confined to the first rows, so that most rows are ordinary, and the last row is +-0 (where it is
    none of those)."""
    check_shape(M, K)
    kinds = np.array(BLOCK_KINDS)[rng.integers(len(BLOCK_KINDS), size=(M, K // 32))]
    if per_row:
        kinds[np.isin(kinds, ["zero", "nan_inf"])] = "ordinary"
        kinds[0, :] = "zero"
        kinds[1:3, 0] = "nan_inf"
    kinds.reshape(-1)[: len(BLOCK_KINDS)] = BLOCK_KINDS
    with np.errstate(over="ignore", invalid="ignore"):
        x = np.stack([np.concatenate([_block(rng, kind, fmt) for kind in row]) for row in kinds])
    last_kinds_row = (len(BLOCK_KINDS) - 1) // (K // 32)  # the rows every kind was placed in
    first_tie_row = max(3, last_kinds_row + 1)  # after the NaN rows 1-2 and every kind's row
    ties = per_row and M > first_tie_row + 5
    if ties:  # rows where x / s and x * (1/s) round differently (bf16-exact values)
        for r in range(first_tie_row, first_tie_row + 5):
            x[r] = division_tie_values(rng, (K,), fmt)
    last_special_row = first_tie_row + 4 if ties else 2
    if per_row and M - 1 > max(last_kinds_row, last_special_row):
        x[M - 1] = np.where(rng.random(K) < 0.5, -0.0, 0.0)  # a zero row (+-0): its scale is the contract's 0
    return x.astype(np.float32)


def check_shape(M, K, *, blocks: bool = True) -> None:
    """``M`` and ``K`` positive integers; with ``blocks``, room for every block kind: K a multiple of 32 and
    six blocks or more."""
    for name, value in (("M", M), ("K", K)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise TypeError(f"{name}={value!r}: expected an int")
        if value < 1:
            raise ValueError(f"{name}={value}: expected a positive integer")
    if not blocks:
        return
    if K % 32:
        raise ValueError(f"K={K}: expected a multiple of 32 (one scale per 32 values along K)")
    if M * (K // 32) < len(BLOCK_KINDS):
        raise ValueError(f"M={M}, K={K}: {M * (K // 32)} blocks of 32, fewer than the {len(BLOCK_KINDS)} kinds "
                         f"every check draws ({', '.join(BLOCK_KINDS)}); expected M * K / 32 >= {len(BLOCK_KINDS)}")


def given_input(x, *, blocks: bool) -> np.ndarray:
    """A caller's ``x`` for a quantizer check: real values [M, K] (an array or a CPU/GPU tensor; K a multiple
    of 32 where ``blocks``: MX quantizers) -> fp32 [M, K]; anything else a TypeError/ValueError naming x."""
    if type(x).__module__.split(".")[0] == "torch":
        x = x.detach().cpu()
        x = x.float() if x.is_floating_point() else x
        x = x.numpy()
    arr = np.asarray(x)
    if arr.dtype.kind not in "iuf":
        raise TypeError(f"x: expected real values [M, K] (float or integer), got {type(x).__name__} of dtype {arr.dtype}")
    if arr.ndim != 2 or 0 in arr.shape:
        raise ValueError(f"x: expected a non-empty [M, K] array, got shape {tuple(arr.shape)}")
    if blocks and arr.shape[1] % 32:
        raise ValueError(f"x: K={arr.shape[1]} is not a multiple of 32 (one scale per 32 values along K)")
    return arr.astype(np.float32)


def division_tie_values(rng: np.random.Generator, shape: tuple[int, ...], fmt: str, zeros: bool = False) -> np.ndarray:
    """float64 ``shape`` of one per-token/per-tensor scale 2^k (k drawn from [-10, 10)): random signs of the
    values that round apart under x / s and x * (1/s) (:func:`_division_ties`; and +-0 with ``zeros``),
    the amax at one random position. Every value is exactly bf16."""
    amax, ties = _division_ties(fmt)
    k = int(rng.integers(-10, 10))
    pool = np.concatenate([ties, [0.0]]) if zeros else ties
    x = rng.choice(pool, shape) * np.where(rng.random(shape) < 0.5, -1, 1) * 2.0**k
    x[tuple(int(rng.integers(n)) for n in shape)] = amax * 2.0**k
    return x


@functools.cache
def _division_ties(fmt: str) -> tuple[float, np.ndarray]:
    """(amax, bf16 values v < amax) whose per-token codes differ between v / s and v * fl32(1/s) with
    s = fl32(amax / max): the first bf16 amax in [4, 8) (6.5 first, the worked example) that has any."""
    f = em.get_format(fmt if fmt in ("e4m3fn", "e4m3fnuz") else "e4m3fn")
    v = (np.arange(1 << 15, dtype=np.uint32) << 16).view(np.float32)
    v = v[np.isfinite(v) & (v > 0)]
    candidates = [np.float32(6.5)] + [a for a in v[(v >= 4) & (v < 8)] if a != np.float32(6.5)]
    for amax in candidates:
        below = v[v < amax]
        scale = amax / np.float32(f.max_finite)
        differ = em.encode(below / scale, f) != em.encode(below * (np.float32(1) / scale), f)
        if differ.any():
            return float(amax), below[differ]
    raise LookupError(f"no bf16 amax in [4, 8) separates x / s from x * (1/s) for {fmt}")
def classify_blocks(x: np.ndarray) -> np.ndarray:
    """The kind of every 32-block of fp32 ``x`` [M, K] from its values -> str [M, K/32]."""
    b = x.reshape(x.shape[0], -1, 32).astype(np.float64)
    with np.errstate(invalid="ignore"):
        amax = np.abs(b).max(-1)
    kinds = np.full(amax.shape, "ordinary", dtype=object)
    kinds[amax < 2.0**-126] = "subnormal"
    kinds[amax > 2.0**100] = "huge"
    kinds[amax == 0] = "zero"
    kinds[~np.isfinite(amax) | np.isnan(b).any(-1)] = "nan_inf"
    return kinds
