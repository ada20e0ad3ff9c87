"""fp32 <-> small-float conversion, bit-exact.

Definition (``_encode_exact``): the input's magnitude is placed on the target format's grid
(exponent clamped at ``emin`` so subnormals come out naturally), rounded once to nearest with the
chosen tie rule (``"even"``: the even *code* wins, IEEE round-to-nearest-even; ``"away"``: the larger
magnitude wins; ``"zero"``: the smaller magnitude wins), then the overflow policy applies:

``satfinite`` (default; the contract our kernels implement, = NVIDIA ``cvt.rn.satfinite``,
gfx950 with saturation on): finite overflow and +-inf give +-max; NaN gives the format's canonical
NaN (positive). e2m1 has no NaN: NaN gives +6.0 (code 0x7), as PTX's ``satfinite`` does for
formats without NaN.

``ocp`` (non-saturating, = ml_dtypes): rounding past max gives inf where the format has one (e5m2,
bf16), else NaN (e4m3fn, e4m3fnuz); e2m1 has neither and saturates, as ml_dtypes does. NaN keeps its
sign where the format has a signed NaN (e4m3fn 0xFF, e5m2, bf16).

Formats without negative zero (e4m3fnuz) map -0 and negative underflow to 0x00. e8m0 is unsigned
with no zero: values <= 0 (-0 and +0 included) and NaN give 0xFF; positive values below 2^-127
give 0x00 (2^-127); above 2^127 saturate to 0xFE (satfinite) or give 0xFF (ocp).

The hot path is a lookup: the result depends only on the fp32 sign, exponent, the kept mantissa
bits, the round bit and a sticky bit (every rounding boundary of these formats has zero fp32 bits
below the round bit), so ``encode`` indexes a table built once from ``_encode_exact``.
"""

from __future__ import annotations

import functools

import numpy as np

from ._inputs import as_float32
from .formats import BF16, FloatFormat, get_format

__all__ = ["encode", "decode", "round_to_bf16", "OVERFLOW_POLICIES", "TIE_MODES"]

OVERFLOW_POLICIES = ("satfinite", "ocp")
TIE_MODES = ("even", "away", "zero")


def _check_choice(value, choices, arg):
    if value not in choices:
        raise ValueError(f"{arg}={value!r} is not valid; expected one of {list(choices)}")


def _round_magnitude(mag: np.ndarray, fmt: FloatFormat, ties: str) -> np.ndarray:
    """Finite float64 magnitudes -> magnitude codes (may exceed ``fmt.max_code``: overflow)."""
    m, emin = fmt.man_bits, fmt.emin
    _, ex = np.frexp(mag)
    e_t = np.maximum(np.where(mag > 0, ex - 1, emin), emin).astype(np.int64)
    scaled = np.ldexp(mag, m - e_t)  # exact: a power-of-two rescale of an fp32 value
    lo = np.floor(scaled)
    frac = scaled - lo
    lo = lo.astype(np.int64)
    if fmt.subnormals:
        code_lo = ((e_t - emin) << m) + lo  # lo carries the implicit bit for normals
    else:  # e8m0: no subnormals, the implicit bit is not part of the code
        code_lo = (e_t - emin) + lo - 1
    if ties == "even":
        tie_up = (code_lo & 1) == 1
    else:
        tie_up = np.full(code_lo.shape, ties == "away")
    up = (frac > 0.5) | ((frac == 0.5) & tie_up)
    return np.maximum(code_lo + up, 0)


def _encode_exact(x: np.ndarray, fmt: FloatFormat, overflow: str, ties: str) -> np.ndarray:
    """Readable definition of ``encode`` on a float32 array (used to build the lookup tables)."""
    x = np.asarray(x, dtype=np.float32)
    negative = np.signbit(x)
    is_nan, is_inf = np.isnan(x), np.isinf(x)
    finite = ~(is_nan | is_inf)
    with np.errstate(invalid="ignore"):  # signalling-NaN bit patterns in the table builder
        mag = np.where(finite, np.abs(x.astype(np.float64)), 0.0)
    code = _round_magnitude(mag, fmt, ties)
    too_big = (finite & (code > fmt.max_code)) | is_inf

    if not fmt.signed:  # e8m0
        nan = fmt.canonical_nan
        code = np.where(too_big, fmt.max_code if overflow == "satfinite" else nan, code)
        bad = is_nan | negative | (finite & (x == 0))
        return np.where(bad, nan, code).astype(np.uint8)

    sign = np.where(negative, fmt.sign_bit, 0)
    if fmt.canonical_nan is None:  # e2m1: no NaN; NaN input saturates to +max
        nan_out = fmt.max_code
    elif overflow == "ocp" and (fmt.canonical_nan | fmt.sign_bit) in fmt.nan_codes:
        nan_out = fmt.canonical_nan | sign
    else:
        nan_out = fmt.canonical_nan
    if overflow == "satfinite" or (fmt.inf_code is None and fmt.canonical_nan is None):
        over_out = fmt.max_code | sign
    elif fmt.inf_code is not None:
        over_out = fmt.inf_code | sign
    else:
        over_out = nan_out
    out = np.where(too_big, over_out, code | sign)
    if fmt.negative_zero is None:  # fnuz: -0 and negative underflow give +0 (0x80 is NaN)
        out = np.where(~too_big & (code == 0), 0, out)
    out = np.where(is_nan, nan_out, out)
    return out.astype(np.uint16 if fmt.bits > 8 else np.uint8)


def _round_shift(fmt: FloatFormat) -> int:
    """Lowest fp32 bit a rounding boundary of ``fmt`` can have set (the round bit of normals).

    e8m0 reaches below fp32's normal range: its boundary 1.5 * 2^-127 is the fp32 subnormal
    0x00600000, so its tables keep one more bit.
    """
    return 22 - fmt.man_bits if fmt.subnormals else 21


@functools.cache
def _encode_table(name: str, overflow: str, ties: str) -> np.ndarray:
    fmt = get_format(name)
    shift = _round_shift(fmt)
    idx = np.arange(1 << (33 - shift), dtype=np.uint64)
    rep_bits = (((idx >> 1) << shift) | (idx & 1)).astype(np.uint32)
    table = _encode_exact(rep_bits.view(np.float32), fmt, overflow, ties)
    table.setflags(write=False)
    return table


def encode(x, fmt, *, overflow: str = "satfinite", ties: str = "even") -> np.ndarray:
    """Convert fp32 values to ``fmt`` codes (uint8, or uint16 for bf16). See the module docstring."""
    f = get_format(fmt)
    _check_choice(overflow, OVERFLOW_POLICIES, "overflow")
    _check_choice(ties, TIE_MODES, "ties")
    x = as_float32(x)
    bits = np.ascontiguousarray(x).view(np.uint32).reshape(x.shape)
    shift = np.uint32(_round_shift(f))
    sticky = (bits & np.uint32((1 << int(shift)) - 1)) != 0
    idx = ((bits >> shift) << np.uint32(1)) | sticky
    return _encode_table(f.name, overflow, ties)[idx]


@functools.cache
def _decode_table(name: str) -> np.ndarray:
    fmt = get_format(name)
    codes = np.arange(fmt.num_codes, dtype=np.int64)
    mag_code = codes & ~fmt.sign_bit if fmt.signed else codes
    m = fmt.man_bits
    exp_field, man = mag_code >> m, mag_code & ((1 << m) - 1)
    if fmt.subnormals:
        value = np.where(
            exp_field == 0,
            np.ldexp(man.astype(np.float64), fmt.emin - m),
            np.ldexp((man + (1 << m)).astype(np.float64), exp_field - 1 + fmt.emin - m),
        )
    else:
        value = np.ldexp(1.0, exp_field + fmt.emin)
    negative = fmt.signed & ((codes & fmt.sign_bit) != 0)
    value = np.where(negative, -value, value)
    if fmt.inf_code is not None:
        value = np.where(mag_code == fmt.inf_code, np.where(negative, -np.inf, np.inf), value)
    value = np.where(np.isin(codes, sorted(fmt.nan_codes)), np.nan, value)
    table = value.astype(np.float32)
    table.setflags(write=False)
    return table


def decode(codes, fmt) -> np.ndarray:
    """Codes of ``fmt`` -> their exact float32 values (NaN codes -> NaN, e8m0 0x00 -> 2^-127)."""
    f = get_format(fmt)
    arr = np.asarray(codes)
    if arr.dtype.kind not in "ui":
        raise TypeError(f"codes: expected an integer array of {f.name} codes, got dtype {arr.dtype}")
    if arr.size and (arr.min() < 0 or arr.max() >= f.num_codes):
        raise ValueError(f"codes: {f.name} codes must lie in [0, {f.num_codes - 1}]")
    if f is BF16:
        return (arr.astype(np.uint32) << np.uint32(16)).view(np.float32)
    return _decode_table(f.name)[arr.astype(np.intp)]


def round_to_bf16(x) -> np.ndarray:
    """fp32 -> nearest bf16 (ties to even, IEEE overflow to inf), returned as float32 values."""
    return decode(encode(x, BF16, overflow="ocp"), BF16)
