"""Random fp32 data with the nasty values mixed in (shared by emulation and kernel tests)."""

from __future__ import annotations

import numpy as np

from emulation import FORMATS, decode


def midpoints(fmt: str) -> np.ndarray:
    """All finite values of ``fmt`` and the midpoints between neighbours (the tie cases), both signs."""
    f = FORMATS[fmt]
    vals = decode(np.arange(f.num_codes), f)
    vals = np.unique(vals[np.isfinite(vals)].astype(np.float64))
    mids = (vals[:-1] + vals[1:]) / 2
    out = np.concatenate([vals, mids, vals * 1.0000001, mids * 0.9999999])
    return out.astype(np.float32)


def nasty_values() -> np.ndarray:
    specials = [0.0, -0.0, np.inf, -np.inf, np.nan, 6.0, -6.0, 448.0, 464.0, 465.0, 240.0, 248.0,
                np.finfo(np.float32).max, -np.finfo(np.float32).max, np.finfo(np.float32).tiny,
                np.finfo(np.float32).smallest_subnormal, 2.0**-127, 1.5 * 2.0**-127]
    return np.array(specials, dtype=np.float32)


def random_fp32(rng: np.random.Generator, shape, *, nasty_fraction: float = 0.05, finite: bool = False) -> np.ndarray:
    """Log-uniform magnitudes over a wide range, random signs, with tie values and specials mixed in."""
    n = int(np.prod(shape))
    mag = np.exp2(rng.uniform(-20, 20, n)).astype(np.float32)
    x = np.where(rng.random(n) < 0.5, -mag, mag)
    pool = np.concatenate([midpoints("e2m1"), midpoints("e4m3fn"), nasty_values()])
    if finite:
        pool = pool[np.isfinite(pool)]
    pick = rng.random(n) < nasty_fraction
    with np.errstate(over="ignore", invalid="ignore"):
        x[pick] = rng.choice(pool, size=int(pick.sum())) * np.exp2(rng.integers(-8, 8, int(pick.sum())))
    if finite:
        x[~np.isfinite(x)] = np.float32(6.0)
    return x.reshape(shape).astype(np.float32)
