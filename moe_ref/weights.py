"""A layer's MXFP4 weights, validated once: the packed codes and scales of both stages, per-expert
dequantization on demand (a bounded cache: a real model's layer dequantized whole is tens of GB) and
the bit ranges that make the reference's exact GEMM cheap."""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np

import emulation as em

from ._arrays import to_numpy

__all__ = ["MoEWeights", "DEQUANT_CACHE_BYTES"]

DEQUANT_CACHE_BYTES = 1 << 30  # per layer: dequantized experts kept for the next reference on it (LRU)

_WHICH = ("w1", "w2")


@dataclass(frozen=True)
class MoEWeights:
    """Validated weights: packed fp4x2 + e8m0 for both stages, and the sizes they imply.

    ``dequant(which, e)`` returns expert e's float32 matrix (read-only), the most recent ones kept up to
    ``DEQUANT_CACHE_BYTES``; bit ranges (a few integers a row) are kept for every expert touched.
    ``from_arrays`` returns the same instance for weights of the same content (the last ``_CACHE_SIZE``
    sets, keyed by a digest of their bytes, or by identity for arrays frozen by their owner: read-only
    arrays that own their memory are used as they are, neither copied nor hashed).
    """

    w1: np.ndarray
    w1_scale: np.ndarray
    w2: np.ndarray
    w2_scale: np.ndarray
    E: int
    H: int
    I: int  # noqa: E741 - the intermediate size, as in every MoE paper
    _memo: OrderedDict = field(default_factory=OrderedDict, compare=False, repr=False)
    _bits: dict = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_arrays(cls, w1, w1_scale, w2, w2_scale) -> MoEWeights:
        arrays = [to_numpy(a, arg=n) for a, n in ((w1, "w1"), (w1_scale, "w1_scale"), (w2, "w2"), (w2_scale, "w2_scale"))]
        for name, arr in zip(("w1", "w1_scale", "w2", "w2_scale"), arrays):
            if arr.dtype != np.uint8 or arr.ndim != 3:
                raise ValueError(f"{name}: expected a 3-D uint8 array, got {arr.dtype} with shape {arr.shape}")
        w1, w1_scale, w2, w2_scale = arrays
        E, two_i, h_half = w1.shape
        H, I = 2 * h_half, two_i // 2  # noqa: E741
        if two_i % 2 or H % 32 or I % 32:
            raise ValueError(f"w1: shape {w1.shape} must be [E, 2*I, H/2] with H and I multiples of 32")
        expect = {"w1_scale": (E, 2 * I, H // 32), "w2": (E, H, I // 2), "w2_scale": (E, H, I // 32)}
        for name, arr in (("w1_scale", w1_scale), ("w2", w2), ("w2_scale", w2_scale)):
            if arr.shape != expect[name]:
                raise ValueError(f"{name}: expected shape {list(expect[name])} (from w1 {list(w1.shape)}), got {list(arr.shape)}")
        frozen = all(_frozen(a) for a in arrays)
        key = tuple(map(id, arrays)) if frozen else _digest(arrays)
        hit = _WEIGHTS_CACHE.get(key)
        if hit is not None and (not frozen or all(a is b for a, b in zip(arrays, (hit.w1, hit.w1_scale, hit.w2, hit.w2_scale)))):
            _WEIGHTS_CACHE.move_to_end(key)
            return hit
        weights = cls(*(a if frozen else a.copy() for a in arrays), E, H, I)
        _WEIGHTS_CACHE[key] = weights
        while len(_WEIGHTS_CACHE) > _CACHE_SIZE:
            _WEIGHTS_CACHE.popitem(last=False)
        return weights

    def packed(self, which: str, e: int) -> tuple[np.ndarray, np.ndarray]:
        """(fp4x2 bytes, e8m0 scales) of expert e's ``which`` ("w1" [2I, H/2] or "w2" [H, I/2])."""
        if which not in _WHICH:
            raise ValueError(f"which={which!r} is not valid; expected 'w1' or 'w2'")
        return (self.w1[e], self.w1_scale[e]) if which == "w1" else (self.w2[e], self.w2_scale[e])

    def dequant(self, which: str, e: int) -> np.ndarray:
        key = (which, int(e))
        if key in self._memo:
            self._memo.move_to_end(key)
            return self._memo[key]
        value = em.dequantize_mxfp4(*self.packed(which, e))
        value.setflags(write=False)
        self._memo[key] = value
        while sum(v.nbytes for v in self._memo.values()) > DEQUANT_CACHE_BYTES and len(self._memo) > 1:
            self._memo.popitem(last=False)
        return value

    def dequant_row(self, which: str, e: int, j: int) -> np.ndarray:
        packed, scale = self.packed(which, e)
        return em.dequantize_mxfp4(packed[j], scale[j])

    def bits(self, which: str, e: int, compute=None):
        """Per row: (lowest set bit, highest exponent + 1) of its nonzero values, and whether all are
        finite; kept per expert. ``compute(which, e)``: another way to the same answer (a device's,
        ``moe_ref.products``), used on a miss."""
        key = (which, int(e))
        if key not in self._bits:
            self._bits[key] = (compute or self._host_bits)(which, int(e))
        return self._bits[key]

    def _host_bits(self, which: str, e: int):
        packed, scale = self.packed(which, e)
        low, high = _mxfp4_bit_range(packed, scale)
        finite = not (scale == 255).any() and int(high.max()) <= 128  # 2^128 and above: inf in fp32
        return (low, high), finite

    def dequant_w1(self, e: int) -> np.ndarray:
        return self.dequant("w1", e)

    def dequant_w2(self, e: int) -> np.ndarray:
        return self.dequant("w2", e)

    def bits_w1(self, e: int):
        return self.bits("w1", e)[0]

    def bits_w2(self, e: int):
        return self.bits("w2", e)[0]


def _frozen(arr: np.ndarray) -> bool:
    """Read-only and owning its memory: nothing can change it behind the cache's back."""
    return not arr.flags.writeable and arr.base is None


def _digest(arrays) -> bytes:
    digest = hashlib.blake2b(digest_size=16)
    for arr in arrays:
        digest.update(repr(arr.shape).encode())
        digest.update(np.ascontiguousarray(arr).data)
    return digest.digest()


_WEIGHTS_CACHE: OrderedDict = OrderedDict()
_CACHE_SIZE = 1


# Per e2m1 magnitude code: exponent of the lowest set bit and highest exponent + 1 (0 has none);
# per fp4x2 byte: the smaller low and the larger high of its two codes (int8: the gathers stay small).
_E2M1_LOW = np.array([127, -1, 0, -1, 1, 0, 2, 1] * 2, np.int32)
_E2M1_HIGH = np.array([-128, 0, 1, 1, 2, 2, 3, 3] * 2, np.int32)
_BYTE_LOW = np.minimum(_E2M1_LOW[np.arange(256) & 15], _E2M1_LOW[np.arange(256) >> 4]).astype(np.int8)
_BYTE_HIGH = np.maximum(_E2M1_HIGH[np.arange(256) & 15], _E2M1_HIGH[np.arange(256) >> 4]).astype(np.int8)


def _mxfp4_bit_range(packed: np.ndarray, scale_e8m0: np.ndarray):
    """Per row of an MXFP4 matrix: (lowest set bit, highest exponent + 1) of its nonzero values, from
    the bytes and scales (``moe_ref.exact``'s bit range without dequantizing; a block of zeros counts
    as low 127 + its scale exponent, which can only make the range wider: the test stays sound)."""
    n, half = packed.shape
    s = scale_e8m0.astype(np.int32) - 127
    low = (_BYTE_LOW[packed].reshape(n, half // 16, 16).min(-1) + s).min(-1)
    high = (_BYTE_HIGH[packed].reshape(n, half // 16, 16).max(-1) + s).max(-1)
    big, small = np.iinfo(np.int32).max, np.iinfo(np.int32).min
    nonzero_row = (packed & np.uint8(0x77)).any(-1)
    return np.where(nonzero_row, low, big), np.where(nonzero_row, high, small)
