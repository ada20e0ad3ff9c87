"""Triton helpers for the formats, as integer arithmetic on fp32 bits (bit-exact on every backend).

The definitions are ``emulation``'s; these are their kernel forms. Nothing here uses a float8 or
bf16 cast, an exp2, a float->uint8 cast of a negative value, or ``not`` on tensors (NUMERICS.md
sections 4-5). The float operations are IEEE-exact everywhere (interpreter included): an exact
int->fp32 conversion (< 2^24), min/max of non-NaN values, a correctly rounded add and an exact
subtraction (the encoder's subnormal steps and its correction) and, for ROUND_UP and per-token
scales, correctly rounded fp32 division (``div_rn``) and multiplication.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from types import MappingProxyType

import numpy as np
import triton
import triton.language as tl

import emulation as em

SCALE_MODE_IDS = {em.ScaleMode.ROUND_UP: 0, em.ScaleMode.ROUND_DOWN: 1, em.ScaleMode.CEIL: 2, em.ScaleMode.EVEN: 3}


@dataclass(frozen=True)
class KernelFormat:
    """The constexpr parameters of one element format, derived from ``emulation.FORMATS``."""

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
                   f.max_finite, tiny)

    @cache  # noqa: B019  (a few formats x prefixes; the instances are cached too)
    def constexprs(self, prefix: str = "", *, decode: bool = False) -> MappingProxyType:
        """Kernel constexpr arguments, names prefixed (``F_MAN_BITS``...); ``decode`` adds BIAS (read-only,
        computed once: launches pass them on every call)."""
        d = dict(MAN_BITS=self.man_bits, EMIN=self.emin, EMAX=self.emax, MAX_CODE=self.max_code,
                 NAN_CODE=self.nan_code, SIGN_SHIFT=self.sign_shift, HAS_NEG_ZERO=self.has_neg_zero,
                 MAX_FINITE=self.max_finite, TINY_BITS=self.tiny_bits)
        if decode:
            d["BIAS"] = self.bias
        return MappingProxyType({prefix + k: v for k, v in d.items()})


@triton.jit
def bf16_bits_to_f32_bits(b16):
    """int16 bf16 patterns -> int32 fp32 patterns (exact)."""
    return b16.to(tl.int32) << 16  # the sign extension's high bits shift out


@triton.jit
def encode_scaled(bits, byte, MAN_BITS: tl.constexpr, EMIN: tl.constexpr, MAX_FINITE: tl.constexpr,
                  SIGN_SHIFT: tl.constexpr, HAS_NEG_ZERO: tl.constexpr):
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
    code = encode_magnitude(tl.minimum(v, MAX_FINITE), bits, MAN_BITS, EMIN, SIGN_SHIFT, HAS_NEG_ZERO)
    return tl.where(byte == 255, 0, code)


@triton.jit
def encode_magnitude(v, bits, MAN_BITS: tl.constexpr, EMIN: tl.constexpr, SIGN_SHIFT: tl.constexpr,
                     HAS_NEG_ZERO: tl.constexpr):
    """Code of the fp32 magnitude v (not NaN, rounding to at most MAX_FINITE) with the sign of the
    fp32 patterns ``bits``: ties to even (``encode_scaled``'s split at 2^EMIN)."""
    min_normal: tl.constexpr = 2.0**EMIN
    magic_bits: tl.constexpr = (127 + EMIN - MAN_BITS + 23) << 23  # 2^(EMIN - MAN_BITS + 23)
    sub = (tl.minimum(v, min_normal) + tl.full(v.shape, magic_bits, tl.int32).to(tl.float32, bitcast=True))
    nb = tl.maximum(v, min_normal).to(tl.int32, bitcast=True)
    drop: tl.constexpr = 23 - MAN_BITS
    nrm = (nb + ((1 << (drop - 1)) - 1) + ((nb >> drop) & 1)) >> drop
    code = sub.to(tl.int32, bitcast=True) + nrm - (magic_bits + ((127 + EMIN) << MAN_BITS))
    sign = (bits >> (31 - SIGN_SHIFT)) & (1 << SIGN_SHIFT)
    if HAS_NEG_ZERO:
        code = code | sign
    else:
        code = tl.where(code != 0, code | sign, code)
    return code


@triton.jit
def mx_scale_byte(amax_bits, MODE: tl.constexpr, MAN_BITS: tl.constexpr, EMAX: tl.constexpr,
                  MAX_FINITE: tl.constexpr, TINY_BITS: tl.constexpr):
    """e8m0 scale bytes (int32) from amax fp32 patterns (sign clear); non-finite -> 255."""
    ef = amax_bits >> 23
    if MODE == 0:  # ROUND_UP: ceil_pow2(fl32(amax / max)); a subnormal ratio gives 1, zero gives 0
        # fl32(amax * fl32(1/max)) has the same ceiling as fl32(amax / max) for every fp32 amax whose
        # ratio is normal (all 2^23 mantissas checked, tests/kernels/test_quant.py), without a division.
        ratio = amax_bits.to(tl.float32, bitcast=True) * (1.0 / MAX_FINITE)
        up = (ratio.to(tl.int32, bitcast=True) + 0x7FFFFF) >> 23
        up = tl.where(amax_bits < TINY_BITS, tl.where(amax_bits == 0, 0, 1), up)
        unbiased = up - 127
    elif MODE == 1:  # ROUND_DOWN: floor_pow2(amax) / 2^emax
        unbiased = ef - 127 - EMAX
    elif MODE == 2:  # CEIL: ceil_pow2(amax) / 2^emax
        unbiased = ef - 127 + ((amax_bits & 0x7FFFFF) != 0).to(tl.int32) - EMAX
    else:  # EVEN: amax rounded to 1 + mbits bits, then / 2^emax
        unbiased = ((amax_bits + (1 << (22 - MAN_BITS))) >> 23) - 127 - EMAX
    byte = tl.minimum(tl.maximum(unbiased, -127), 127) + 127
    return tl.where(amax_bits >= 0x7F800000, 255, byte)


@triton.jit
def decode_scaled_bits(code, byte, MAN_BITS: tl.constexpr, BIAS: tl.constexpr, SIGN_SHIFT: tl.constexpr):
    """fp32 patterns (int32) of decode(code) * 2^(byte - 127) for an MX element format.

    Exact whenever the result is a normal fp32; results below 2^-126 become +-0 (they never reach
    1 ulp of an fp32 accumulator of normal-sized terms). Scale byte 255 (NaN) gives NaN.
    """
    mag = code & ((1 << SIGN_SHIFT) - 1)
    ef = mag >> MAN_BITS
    m_full = tl.where(ef > 0, (mag & ((1 << MAN_BITS) - 1)) | (1 << MAN_BITS), mag)
    e_base = tl.maximum(ef, 1) - BIAS - MAN_BITS + byte - 127  # value = m_full * 2^e_base
    p = (m_full.to(tl.float32).to(tl.int32, bitcast=True) >> 23) - 127  # floor(log2 m_full), m_full < 16
    field = p + e_base + 127
    mantissa = (m_full - (1 << tl.maximum(p, 0))) << (23 - tl.maximum(p, 0))
    bits = tl.where((field > 0) & (m_full != 0), (tl.minimum(field, 255) << 23) | mantissa, 0)
    bits = bits | (((code >> SIGN_SHIFT) & 1) << 31)
    return tl.where(byte == 255, 0x7FC00000, bits)


@triton.jit
def f32_to_bf16_bits(x):
    """fp32 -> bf16 patterns (int32 holding 16 bits): ties to even, IEEE overflow to inf, NaN -> 0x7FFF|sign."""
    bits = x.to(tl.int32, bitcast=True)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
    nan = (bits & 0x7FFFFFFF) > 0x7F800000
    return tl.where(nan, ((bits >> 16) & 0x8000) | 0x7FFF, rounded) & 0xFFFF


@triton.jit
def mx_quantize_pairs(lo, hi, MODE: tl.constexpr, MAN_BITS: tl.constexpr, EMIN: tl.constexpr, EMAX: tl.constexpr,
                      SIGN_SHIFT: tl.constexpr, HAS_NEG_ZERO: tl.constexpr, MAX_FINITE: tl.constexpr, TINY_BITS: tl.constexpr):
    """MX quantization of fp32 patterns given as element pairs: ``lo`` [R, NB, 16] holds elements 2j of
    each 32-block and ``hi`` elements 2j+1 -> (codes lo, codes hi, scale bytes [R, NB]), int32.

    ``emulation.quantize_mx``: amax by an integer max of magnitude bits, the e8m0 byte of MODE,
    elements encoded at that scale (``encode_scaled``); a block holding NaN/Inf gets byte 255 and all
    codes 0. Pairs are what fp4x2 packs into a byte (and what a 32-bit load of bf16 holds), so no
    shuffle is needed.
    """
    amax = tl.maximum(tl.max(lo & 0x7FFFFFFF, axis=2), tl.max(hi & 0x7FFFFFFF, axis=2))
    byte = mx_scale_byte(amax, MODE, MAN_BITS, EMAX, MAX_FINITE, TINY_BITS)
    codes_lo = encode_scaled(lo, byte[:, :, None], MAN_BITS, EMIN, MAX_FINITE, SIGN_SHIFT, HAS_NEG_ZERO)
    codes_hi = encode_scaled(hi, byte[:, :, None], MAN_BITS, EMIN, MAX_FINITE, SIGN_SHIFT, HAS_NEG_ZERO)
    return codes_lo, codes_hi, byte
