"""Triton helpers for the formats, as integer arithmetic on fp32 bits (bit-exact on every backend).

The definitions are ``emulation``'s; these are their kernel forms. Nothing here uses a float8 or
bf16 cast, an exp2, a float->uint8 cast of a negative value, or ``not`` on tensors (NUMERICS.md
sections 4-5). The float operations are IEEE-exact everywhere (interpreter included): an exact
int->fp32 conversion (< 2^24), min/max of non-NaN values, a correctly rounded add and an exact
subtraction (the encoder's subnormal steps and its correction) and, for ROUND_UP and per-token
scales, correctly rounded fp32 division (``div_rn``) and multiplication.
"""

from __future__ import annotations

from functools import cache
from typing import NamedTuple

import numpy as np
import triton
import triton.language as tl

import emulation as em

SCALE_MODE_IDS = {mode: i for i, mode in enumerate(em.ScaleMode)}  # the kernels' MODE constexpr
# named for the kernels' branches (a Triton kernel reads a global only as a constexpr)
MODE_ROUND_UP, MODE_ROUND_DOWN, MODE_CEIL = (tl.constexpr(SCALE_MODE_IDS[m]) for m in
                                             (em.ScaleMode.ROUND_UP, em.ScaleMode.ROUND_DOWN, em.ScaleMode.CEIL))


class KernelFormat(NamedTuple):
    """One element format's constants, derived from ``emulation.FORMATS``, passed to kernels as ONE
    constexpr (a named tuple: Triton specializes on its values; the helpers read ``F.man_bits``...)."""

    man_bits: int
    bias: int
    emin: int
    emax: int
    max_code: int
    nan_code: int
    sign_shift: int
    has_neg_zero: bool
    max_finite: float
    tiny_bits: int  # fp32 pattern of max_finite * 2^-126: below it ROUND_UP's ratio is subnormal

    @classmethod
    @cache
    def of(cls, fmt) -> KernelFormat:
        f = em.get_format(fmt)
        nan = f.canonical_nan if f.canonical_nan is not None else f.max_code
        tiny = int(np.float32(f.max_finite * 2.0**-126).view(np.uint32))
        return cls(f.man_bits, f.bias, f.emin, f.emax, f.max_code, nan, f.bits - 1, f.negative_zero is not None,
                   float(f.max_finite), tiny)


@triton.jit
def bf16_bits_to_f32_bits(b16):
    """int16 bf16 patterns -> int32 fp32 patterns (exact)."""
    return b16.to(tl.int32) << 16  # the sign extension's high bits shift out


@triton.jit
def encode_scaled(bits, byte, F: tl.constexpr):
    """Codes (int32) of value(bits) * 2^(127 - byte) for finite fp32 patterns ``bits``: ties to even,
    satfinite; scale byte 255 (a NaN/Inf block) gives code 0 with no sign. ``byte`` broadcasts.

    v = |x| * 2^-s (s = byte - 127) as two fp32 multiplications by normal powers of two (2^-s alone
    may be subnormal): exact whenever v is normal, fp32-subnormal x included, because fp32
    arithmetic keeps subnormals on every target (``moe_kernels.targets`` checks: no .ftz on sm_90,
    denormal mode 3 on gfx9) and in the interpreter; a subnormal v (below 2^-126) may be rounded
    or flushed, and encodes to +-0 either way. Then v is clamped to MAX_FINITE (satfinite) and split
    at the smallest normal 2^EMIN: below it, the count of subnormal steps is an IEEE add of
    2^(EMIN - MAN_BITS + 23) (ties to even); from it, the fp32 mantissa rounded to MAN_BITS bits (ties
    to even) by integer arithmetic. The two parts add up to the code: each is exactly its share at
    the split point.
    """
    s = byte - 127
    half = s >> 1
    v = tl.abs(bits.to(tl.float32, bitcast=True)) * ((127 - half) << 23).to(tl.float32, bitcast=True)
    v = v * ((127 - (s - half)) << 23).to(tl.float32, bitcast=True)
    code = encode_magnitude(tl.minimum(v, F.max_finite), bits, F)
    return tl.where(byte == 255, 0, code)


@triton.jit
def encode_magnitude(v, bits, F: tl.constexpr):
    """Code of the fp32 magnitude v (not NaN, rounding to at most F.max_finite) with the sign of the
    fp32 patterns ``bits``: ties to even (``encode_scaled``'s split at 2^EMIN)."""
    MAN_BITS: tl.constexpr = F.man_bits
    EMIN: tl.constexpr = F.emin
    min_normal: tl.constexpr = 2.0**EMIN
    magic_bits: tl.constexpr = (127 + EMIN - MAN_BITS + 23) << 23  # 2^(EMIN - MAN_BITS + 23)
    sub = (tl.minimum(v, min_normal) + tl.full(v.shape, magic_bits, tl.int32).to(tl.float32, bitcast=True))
    nb = tl.maximum(v, min_normal).to(tl.int32, bitcast=True)
    drop: tl.constexpr = 23 - MAN_BITS
    nrm = (nb + ((1 << (drop - 1)) - 1) + ((nb >> drop) & 1)) >> drop
    code = sub.to(tl.int32, bitcast=True) + nrm - (magic_bits + ((127 + EMIN) << MAN_BITS))
    sign = (bits >> (31 - F.sign_shift)) & (1 << F.sign_shift)
    if F.has_neg_zero:
        code = code | sign
    else:
        code = tl.where(code != 0, code | sign, code)
    return code


@triton.jit
def mx_scale_byte(amax_bits, MODE: tl.constexpr, F: tl.constexpr):
    """e8m0 scale bytes (int32) from amax fp32 patterns (sign clear); non-finite -> 255."""
    MAN_BITS: tl.constexpr = F.man_bits
    EMAX: tl.constexpr = F.emax
    ef = amax_bits >> 23
    if MODE == MODE_ROUND_UP:  # ceil_pow2(fl32(amax / max)); a subnormal ratio gives 1, zero gives 0
        # fl32(amax * fl32(1/max)) has the same ceiling as fl32(amax / max) for every fp32 amax whose
        # ratio is normal (all 2^23 mantissas checked, tests/kernels/test_quant.py), without a division.
        ratio = amax_bits.to(tl.float32, bitcast=True) * (1.0 / F.max_finite)
        up = (ratio.to(tl.int32, bitcast=True) + 0x7FFFFF) >> 23
        up = tl.where(amax_bits < F.tiny_bits, tl.where(amax_bits == 0, 0, 1), up)
        unbiased = up - 127
    elif MODE == MODE_ROUND_DOWN:  # floor_pow2(amax) / 2^emax
        unbiased = ef - 127 - EMAX
    elif MODE == MODE_CEIL:  # ceil_pow2(amax) / 2^emax
        unbiased = ef - 127 + ((amax_bits & 0x7FFFFF) != 0).to(tl.int32) - EMAX
    else:  # EVEN: amax rounded to 1 + mbits bits, then / 2^emax
        unbiased = ((amax_bits + (1 << (22 - MAN_BITS))) >> 23) - 127 - EMAX
    byte = tl.minimum(tl.maximum(unbiased, -127), 127) + 127
    return tl.where(amax_bits >= 0x7F800000, 255, byte)


@triton.jit
def f32_to_bf16_bits(x):
    """fp32 -> bf16 patterns (int32 holding 16 bits): ties to even, IEEE overflow to inf, NaN -> 0x7FFF|sign."""
    bits = x.to(tl.int32, bitcast=True)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
    nan = (bits & 0x7FFFFFFF) > 0x7F800000
    return tl.where(nan, ((bits >> 16) & 0x8000) | 0x7FFF, rounded) & 0xFFFF


@triton.jit
def mx_quantize_pairs(lo, hi, MODE: tl.constexpr, F: tl.constexpr):
    """MX quantization of fp32 patterns given as element pairs: ``lo`` [R, NB, 16] holds elements 2j of
    each 32-block and ``hi`` elements 2j+1 -> (codes lo, codes hi, scale bytes [R, NB]), int32.

    ``emulation.quantize_mx``: amax by an integer max of magnitude bits, the e8m0 byte of MODE,
    elements encoded at that scale (``encode_scaled``); a block holding NaN/Inf gets byte 255 and all
    codes 0. Pairs are what fp4x2 packs into a byte (and what a 32-bit load of bf16 holds), so no
    shuffle is needed.
    """
    amax = tl.maximum(tl.max(lo & 0x7FFFFFFF, axis=2), tl.max(hi & 0x7FFFFFFF, axis=2))
    byte = mx_scale_byte(amax, MODE, F)
    codes_lo = encode_scaled(lo, byte[:, :, None], F)
    codes_hi = encode_scaled(hi, byte[:, :, None], F)
    return codes_lo, codes_hi, byte
