"""Input coercion shared by the emulation's public functions (NumPy only)."""

from __future__ import annotations

import numpy as np


def as_float32(x, *, arg: str = "x") -> np.ndarray:
    """Return ``x`` as a float32 array without ever rounding silently.

    Accepted: float32, float16 and bfloat16 (ml_dtypes) arrays, which convert exactly, and float64
    arrays whose every value is exactly representable in float32 (NaN allowed). Anything else
    raises TypeError or ValueError naming the argument.
    """
    arr = np.asarray(x)
    if arr.dtype == np.float32:
        return arr
    if arr.dtype == np.float16 or arr.dtype.name == "bfloat16":
        return arr.astype(np.float32)
    if arr.dtype == np.float64:
        arr32 = arr.astype(np.float32)
        same = (arr32.astype(np.float64) == arr) | (np.isnan(arr) & np.isnan(arr32))
        if not np.all(same):
            raise ValueError(
                f"{arg}: float64 input holds values that are not exactly float32; "
                "round them explicitly (x.astype(np.float32)) before quantizing"
            )
        return arr32
    raise TypeError(
        f"{arg}: expected a float32, float16 or bfloat16 array (or exact-float32 float64), "
        f"got dtype {arr.dtype}"
    )


def normalize_axis(axis: int, ndim: int, *, arg: str = "axis") -> int:
    if not isinstance(axis, (int, np.integer)) or not -ndim <= axis < ndim:
        raise ValueError(f"{arg}={axis!r} is out of range for an array of {ndim} dimension(s)")
    return int(axis) % ndim
