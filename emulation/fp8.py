"""fp8 quantization with one fp32 scale per token (row) or per tensor.

``scale = fl32(amax / max_finite)`` (448 for e4m3fn, 240 for e4m3fnuz). Elements are encoded with
``satfinite`` and ties to even from either

- ``reciprocal=True``: ``fl32(x * fl32(1 / scale))`` - what Triton and HIP kernels do (default), or
- ``reciprocal=False``: ``fl32(x / scale)`` - what torch references do.

The two differ at ties (NUMERICS.md section 9: amax 6.5, x = -4.875 -> 0xFA by division, 0xFB by
reciprocal). Policies: a row (tensor) of zeros gets scale 0.0 and all codes 0x00; a row (tensor)
holding NaN or +-Inf gets scale NaN and every code the format's canonical NaN.
"""

from __future__ import annotations

import numpy as np

from ._inputs import as_float32
from .convert import decode, encode
from .formats import get_format

__all__ = ["quantize_fp8_per_token", "quantize_fp8_per_tensor", "dequantize_fp8"]

_FP8_FORMATS = ("e4m3fn", "e4m3fnuz")


def _fp8_format(fmt):
    f = get_format(fmt)
    if f.name not in _FP8_FORMATS:
        raise ValueError(f"fmt={f.name!r} is not valid here; expected one of {list(_FP8_FORMATS)}")
    return f


def _quantize_with_amax(x: np.ndarray, amax: np.ndarray, fmt, reciprocal: bool):
    f = _fp8_format(fmt)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        scale = (amax / np.float32(f.max_finite)).astype(np.float32)
        if reciprocal:
            scaled = x * (np.float32(1.0) / scale)
        else:
            scaled = x / scale
    finite = np.isfinite(scale)
    scaled = np.where(scale == 0, np.float32(0.0), scaled).astype(np.float32)
    codes = encode(scaled, f)
    codes = np.where(finite, codes, f.canonical_nan).astype(np.uint8)
    return codes, np.where(finite, scale, np.float32(np.nan)).astype(np.float32)


def _amax(x: np.ndarray, axis) -> np.ndarray:
    if x.size == 0:
        return np.zeros(x.shape[:-1] + (1,), np.float32) if axis == -1 else np.float32(0.0)
    with np.errstate(invalid="ignore"):
        return np.max(np.abs(x), axis=axis, keepdims=axis is not None).astype(np.float32)


def quantize_fp8_per_token(x, *, fmt="e4m3fn", reciprocal: bool = True):
    """Per-row (last axis) fp8 -> (codes uint8 like x, scale_f32 with the last axis of size 1)."""
    x = as_float32(x)
    if x.ndim < 1:
        raise ValueError("x: expected at least one dimension (tokens along the last axis)")
    return _quantize_with_amax(x, _amax(x, -1), fmt, reciprocal)


def quantize_fp8_per_tensor(x, *, fmt="e4m3fn", reciprocal: bool = True):
    """One fp32 scale for the whole tensor -> (codes uint8, scale_f32 scalar array)."""
    x = as_float32(x)
    codes, scale = _quantize_with_amax(x, _amax(x, None), fmt, reciprocal)
    return codes, np.asarray(scale, dtype=np.float32)


def dequantize_fp8(codes, scale, *, fmt="e4m3fn") -> np.ndarray:
    """codes * scale in float32 (the scale broadcasts)."""
    f = _fp8_format(fmt)
    return (decode(codes, f) * np.asarray(scale, dtype=np.float32)).astype(np.float32)
