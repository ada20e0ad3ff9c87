"""MX block quantization (OCP Microscaling): one e8m0 scale per 32 consecutive values.

A block's scale byte is computed from its amax (max |x| over the block, fp32) by one of four rules,
with ``emax = floor(log2(max_finite))`` of the element format (2 for e2m1, 8 for e4m3fn, 7 for
e4m3fnuz) and the unbiased exponent clamped to [-127, 127] (byte 0..254):

==========  ==========================================  =========================================
mode        scale                                       reproduces
==========  ==========================================  =========================================
ROUND_UP    ceil_pow2(fl32(amax / max_finite))          the scale of ``downcast_to_mxfp`` ROUND_UP
            (fp32 bit trick: (bits + 0x7FFFFF) >> 23)   (AITER, triton_kernels; NUMERICS.md section 10)
ROUND_DOWN  floor_pow2(amax) / 2^emax                   OCP MX spec v1.0, torchao FLOOR, microxcaling
CEIL        ceil_pow2(amax) / 2^emax                    torchao CEIL
EVEN        round amax's bits to 1+mbits:               AMD Quark; AITER Triton ``dynamic_mxfp4_quant``
            (bits + (1 << (22 - mbits))) & 0xFF800000,
            then / 2^emax
==========  ==========================================  =========================================

Elements: ``x / scale`` (exact: scale is a power of two) encoded with ``satfinite`` and the chosen
tie rule (``"even"``: the contract and the hardware converts; ``"away"``: what AITER's Triton MXFP4
quantizers and ``downcast_to_mxfp`` do, measured: NUMERICS.md section 10; ``"zero"``: the smaller
magnitude, what a ``|x| > midpoint`` count gives, as in SGLang's ``MXFP4QuantizeUtil``).

Policies:
- All-zero block: scale byte 0 (2^-127) in every mode; element codes are +-0 (sign kept).
- ROUND_UP with 0 < fl32(amax / max) < 2^-126 (an fp32 subnormal): byte 1, as the bit trick gives.
- A block holding any NaN or +-Inf: scale byte 0xFF (NaN) and every element code 0; the whole
  block dequantizes to NaN. (Peers disagree here; this is our documented contract.)
"""

from __future__ import annotations

import enum

import numpy as np

from ._inputs import as_float32, normalize_axis
from .convert import TIE_MODES, _check_choice, decode, encode
from .formats import E2M1, E4M3FN, E4M3FNUZ, FloatFormat, get_format
from .fp4x2 import pack_fp4x2, unpack_fp4x2
from .validate import check_byte_range

__all__ = [
    "ScaleMode", "BLOCK_SIZE", "MX_ELEMENT_FORMATS", "mx_scale_e8m0", "quantize_mx", "dequantize_mx",
    "quantize_mxfp4", "dequantize_mxfp4", "quantize_mxfp8", "dequantize_mxfp8", "recover_mx",
]

BLOCK_SIZE = 32
SCALE_NAN = 0xFF
MX_ELEMENT_FORMATS = (E2M1.name, E4M3FN.name, E4M3FNUZ.name)


class ScaleMode(str, enum.Enum):
    """How a block's e8m0 scale is derived from its amax (see the module docstring)."""

    ROUND_UP = "round_up"
    ROUND_DOWN = "round_down"
    CEIL = "ceil"
    EVEN = "even"

    @classmethod
    def parse(cls, mode, *, arg: str = "scale_mode") -> ScaleMode:
        try:
            return cls(mode.value if isinstance(mode, cls) else str(mode).lower())
        except ValueError:
            raise ValueError(f"{arg}={mode!r} is not valid; expected one of {[m.value for m in cls]}") from None


def _mx_element_format(fmt) -> FloatFormat:
    f = get_format(fmt)
    if f.name not in MX_ELEMENT_FORMATS:
        raise ValueError(f"fmt={f.name!r} is not an MX element format; expected one of {list(MX_ELEMENT_FORMATS)}")
    return f


def mx_scale_e8m0(amax, fmt, scale_mode=ScaleMode.ROUND_UP) -> np.ndarray:
    """Scale bytes (uint8) for blocks whose fp32 amax is given (NaN/inf amax -> 0xFF)."""
    f = _mx_element_format(fmt)
    mode = ScaleMode.parse(scale_mode)
    amax = as_float32(amax, arg="amax")
    bits = np.ascontiguousarray(amax).view(np.uint32).reshape(amax.shape).astype(np.int64) & 0x7FFFFFFF
    exp_field = bits >> 23
    if mode is ScaleMode.ROUND_UP:
        ratio = (amax / np.float32(f.max_finite)).astype(np.float32)  # one correctly rounded division
        rbits = ratio.view(np.uint32).astype(np.int64) & 0x7FFFFFFF
        unbiased = ((rbits + 0x7FFFFF) >> 23) - 127
    elif mode is ScaleMode.ROUND_DOWN:
        unbiased = exp_field - 127 - f.emax
    elif mode is ScaleMode.CEIL:
        unbiased = exp_field - 127 + ((bits & 0x7FFFFF) != 0) - f.emax
    else:  # EVEN
        rounded = (bits + (1 << (22 - f.man_bits))) & 0x7F800000
        unbiased = (rounded >> 23) - 127 - f.emax
    byte = np.clip(unbiased, -127, 127) + 127
    return np.where(np.isfinite(amax), byte, SCALE_NAN).astype(np.uint8)


def _blocks_last(x: np.ndarray, axis: int, arg: str = "x") -> np.ndarray:
    """Move ``axis`` last and split it into (n_blocks, 32); ValueError if not a multiple of 32."""
    n = x.shape[axis]
    if n % BLOCK_SIZE:
        raise ValueError(f"{arg}: length {n} along axis {axis} is not a multiple of {BLOCK_SIZE}")
    moved = np.moveaxis(x, axis, -1)
    return moved.reshape(moved.shape[:-1] + (n // BLOCK_SIZE, BLOCK_SIZE))


def _unblock(blocks: np.ndarray, axis: int) -> np.ndarray:
    flat = blocks.reshape(blocks.shape[:-2] + (blocks.shape[-2] * blocks.shape[-1],))
    return np.moveaxis(flat, -1, axis)


def quantize_mx(x, fmt, *, axis: int = -1, scale_mode=ScaleMode.ROUND_UP, ties: str = "even"):
    """MX-quantize ``x`` along ``axis`` -> (element codes uint8, unpacked; scale_e8m0 uint8).

    The scale array has the shape of ``x`` with ``axis`` divided by 32.
    """
    f = _mx_element_format(fmt)
    _check_choice(ties, TIE_MODES, "ties")
    x = as_float32(x)
    axis = normalize_axis(axis, x.ndim)
    blocks = _blocks_last(x, axis)
    with np.errstate(invalid="ignore"):
        amax = np.max(np.abs(blocks), axis=-1) if blocks.size else np.zeros(blocks.shape[:-1], np.float32)
    scale_e8m0 = mx_scale_e8m0(amax, f, scale_mode)
    finite = scale_e8m0 != SCALE_NAN
    # 2^(127 - byte) as an fp32 multiplier: exact for bytes 0..253 (byte 254 never follows from a finite amax)
    inv_scale = np.where(finite, (254 - scale_e8m0.astype(np.int32)) << 23, 127 << 23).astype(np.uint32)
    scaled = blocks * inv_scale.view(np.float32)[..., None]
    codes = encode(scaled, f, overflow="satfinite", ties=ties)
    codes = np.where(finite[..., None], codes, 0).astype(np.uint8)
    return _unblock(codes, axis), np.moveaxis(scale_e8m0, -1, axis)


def dequantize_mx(codes, scale_e8m0, fmt, *, axis: int = -1) -> np.ndarray:
    """Inverse of :func:`quantize_mx` on unpacked codes -> float32 (scale 0xFF -> NaN block)."""
    f = _mx_element_format(fmt)
    codes = np.asarray(codes)
    scale_e8m0 = check_byte_range(scale_e8m0, "scale_e8m0")
    axis = normalize_axis(axis, codes.ndim)
    blocks = _blocks_last(codes, axis, arg="codes")
    expected = blocks.shape[:-1]
    scale_last = np.moveaxis(scale_e8m0, axis, -1) if scale_e8m0.ndim == codes.ndim else None
    if scale_last is None or scale_last.shape != expected:
        raise ValueError(
            f"scale_e8m0: shape {scale_e8m0.shape} does not match codes {codes.shape} "
            f"(expected the codes' shape with axis {axis} divided by {BLOCK_SIZE})"
        )
    exponent = scale_last.astype(np.int32) - 127
    with np.errstate(over="ignore", invalid="ignore"):  # EVEN/CEIL scales can exceed fp32: inf, by design
        values = np.ldexp(decode(blocks, f), exponent[..., None])  # exact: a power-of-two scaling
        values = np.where((scale_last == SCALE_NAN)[..., None], np.float32(np.nan), values)
    return _unblock(values.astype(np.float32, copy=False), axis)


def quantize_mxfp4(x, *, axis: int = -1, scale_mode=ScaleMode.ROUND_UP, ties: str = "even"):
    """MXFP4: e2m1 elements packed two per byte along ``axis`` (fp4x2) + e8m0 scales.

    Returns ``(packed_uint8, scale_e8m0_uint8)``; ``packed`` has ``axis`` halved.
    """
    codes, scale_e8m0 = quantize_mx(x, E2M1, axis=axis, scale_mode=scale_mode, ties=ties)
    return pack_fp4x2(codes, axis=axis), scale_e8m0


def dequantize_mxfp4(packed, scale_e8m0, *, axis: int = -1) -> np.ndarray:
    """MXFP4 (fp4x2 + e8m0) -> float32."""
    return dequantize_mx(unpack_fp4x2(packed, axis=axis), scale_e8m0, E2M1, axis=axis)


def quantize_mxfp8(x, *, fmt="e4m3fn", axis: int = -1, scale_mode=ScaleMode.ROUND_UP, ties: str = "even"):
    """MXFP8: e4m3fn (gfx950, NVIDIA) or e4m3fnuz (gfx942) codes + e8m0 scales along ``axis``."""
    return quantize_mx(x, fmt, axis=axis, scale_mode=scale_mode, ties=ties)


def dequantize_mxfp8(codes, scale_e8m0, *, fmt="e4m3fn", axis: int = -1) -> np.ndarray:
    """MXFP8 -> float32."""
    return dequantize_mx(codes, scale_e8m0, fmt, axis=axis)



def recover_mx(values, fmt, *, axis: int = -1):
    """What a quantize-dequantize ("fake quantization") wrote, as MX bytes where the decode makes that
    unique: ``values`` (floats) -> ``(codes, scale_e8m0, status)``, codes unpacked.

    A block's candidate scales are the bytes 0..254 under which every value of the block is exactly a
    ``fmt`` value (``decode(encode(v / scale)) == v``, the sign of zero included). ``status`` per block:
    1 recovered (one candidate; or every value NaN: scale 0xFF, codes 0, as the contract writes),
    2 ambiguous (several candidates: zero blocks, values that also fit a coarser scale; the coarsest
    candidate is returned), 0 not an MX decode (NaN beside numbers, +-inf, values off every grid;
    codes and scale 0).
    """
    f = _mx_element_format(fmt)
    x = np.asarray(values, np.float64)
    axis = normalize_axis(axis, x.ndim)
    blocks = _blocks_last(x, axis, arg="values")
    with np.errstate(invalid="ignore"):
        amax = np.max(np.abs(blocks), axis=-1)
    live = np.isfinite(amax) & (amax > 0)
    top = np.floor(np.log2(np.where(live, amax, 1.0))).astype(np.int64)
    smallest = f.emin - f.man_bits  # log2 of the format's smallest nonzero magnitude
    best = np.full(amax.shape, -1, np.int64)
    count = np.zeros(amax.shape, np.int64)
    for d in range(-f.emax, -smallest + 1):  # amax / 2^(top + d) spans every magnitude of the grid
        byte = top + d + 127
        scaled = np.ldexp(blocks, -(top + d)[..., None])
        with np.errstate(over="ignore", invalid="ignore"):
            back = decode(encode(scaled.astype(np.float32), f), f).astype(np.float64)
        exact = ((back == scaled) & (np.signbit(back) == np.signbit(scaled))).all(-1)
        ok = live & exact & (byte >= 0) & (byte <= 254)
        count += ok
        best = np.where(ok, np.maximum(best, byte), best)
    zero = np.isfinite(amax) & (amax == 0)
    all_nan = np.isnan(blocks).all(-1)
    status = np.select([all_nan | (count == 1), zero | (count > 1)], [1, 2], 0).astype(np.uint8)
    scale = np.select([all_nan, zero, count > 0], [SCALE_NAN, 0, best], 0).astype(np.uint8)
    with np.errstate(over="ignore", invalid="ignore"):
        scaled = np.ldexp(np.where(np.isnan(blocks), 0.0, blocks), 127 - scale.astype(np.int64)[..., None])
        codes = encode(scaled.astype(np.float32), f)
    codes = np.where(((status > 0) & ~all_nan)[..., None], codes, 0).astype(np.uint8)
    return _unblock(codes, axis), np.moveaxis(scale, -1, axis), np.moveaxis(status, -1, axis)
