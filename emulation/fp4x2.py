"""fp4x2 packing: two e2m1 codes per byte, element 2i in the LOW nibble, 2i+1 in the HIGH nibble."""

from __future__ import annotations

import numpy as np

from ._inputs import normalize_axis

__all__ = ["pack_fp4x2", "unpack_fp4x2"]


def pack_fp4x2(codes, *, axis: int = -1) -> np.ndarray:
    """Pack 4-bit codes (uint8 values 0..15) pairwise along ``axis``; that axis is halved."""
    codes = np.asarray(codes)
    if codes.dtype.kind not in "ui":
        raise TypeError(f"codes: expected an integer array of e2m1 codes, got dtype {codes.dtype}")
    axis = normalize_axis(axis, codes.ndim)
    if codes.shape[axis] % 2:
        raise ValueError(f"codes: length {codes.shape[axis]} along axis {axis} is odd; fp4x2 needs pairs")
    if codes.size and (codes.min() < 0 or codes.max() > 0xF):
        raise ValueError("codes: e2m1 codes must lie in [0, 15]")
    moved = np.moveaxis(codes.astype(np.uint8), axis, -1)
    packed = moved[..., 0::2] | (moved[..., 1::2] << np.uint8(4))
    return np.moveaxis(packed, -1, axis)


def unpack_fp4x2(packed, *, axis: int = -1) -> np.ndarray:
    """Inverse of :func:`pack_fp4x2`: uint8 bytes -> codes (uint8 0..15), ``axis`` doubled."""
    packed = np.asarray(packed)
    if packed.dtype != np.uint8:
        raise TypeError(f"packed: expected a uint8 array of fp4x2 bytes, got dtype {packed.dtype}")
    axis = normalize_axis(axis, packed.ndim)
    moved = np.moveaxis(packed, axis, -1)
    out = np.empty(moved.shape[:-1] + (2 * moved.shape[-1],), dtype=np.uint8)
    out[..., 0::2] = moved & np.uint8(0xF)
    out[..., 1::2] = moved >> np.uint8(4)
    return np.moveaxis(out, -1, axis)
