"""The one table of number formats used by MXFP4 MoE paths.

Every constant about a format (widths, bias, largest finite value, NaN/inf codes, negative zero)
lives here and nowhere else. Codes are unsigned integers holding the format's bit pattern.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["FloatFormat", "FORMATS", "get_format", "E2M1", "E8M0", "E4M3FN", "E4M3FNUZ", "E5M2", "BF16"]


@dataclass(frozen=True)
class FloatFormat:
    """A binary floating-point format of at most 16 bits.

    ``emin`` is the exponent of the smallest normal value. ``max_code`` is the magnitude code of the
    largest finite value (sign bit clear). ``canonical_nan`` is the code produced for NaN input
    under the ``satfinite`` policy (``None`` if the format has no NaN encoding).
    """

    name: str
    bits: int
    exp_bits: int
    man_bits: int
    bias: int
    signed: bool
    max_code: int
    max_finite: float
    inf_code: int | None  # magnitude code of +inf, if any
    nan_codes: frozenset[int]  # every code (sign included) that decodes to NaN
    canonical_nan: int | None
    negative_zero: int | None  # code of -0.0, if the format has one
    subnormals: bool = True

    @property
    def emin(self) -> int:
        return (1 - self.bias) if self.subnormals else -self.bias

    @property
    def emax(self) -> int:
        """floor(log2(max_finite)): the exponent used by the MX scale rules."""
        return int(self.max_finite).bit_length() - 1 if self.max_finite >= 1 else 0

    @property
    def sign_bit(self) -> int:
        return 1 << (self.bits - 1) if self.signed else 0

    @property
    def num_codes(self) -> int:
        return 1 << self.bits


E2M1 = FloatFormat(
    "e2m1", bits=4, exp_bits=2, man_bits=1, bias=1, signed=True, max_code=0x7, max_finite=6.0,
    inf_code=None, nan_codes=frozenset(), canonical_nan=None, negative_zero=0x8,
)
E8M0 = FloatFormat(
    "e8m0", bits=8, exp_bits=8, man_bits=0, bias=127, signed=False, max_code=0xFE,
    max_finite=2.0**127, inf_code=None, nan_codes=frozenset({0xFF}), canonical_nan=0xFF,
    negative_zero=None, subnormals=False,
)
E4M3FN = FloatFormat(
    "e4m3fn", bits=8, exp_bits=4, man_bits=3, bias=7, signed=True, max_code=0x7E, max_finite=448.0,
    inf_code=None, nan_codes=frozenset({0x7F, 0xFF}), canonical_nan=0x7F, negative_zero=0x80,
)
E4M3FNUZ = FloatFormat(
    "e4m3fnuz", bits=8, exp_bits=4, man_bits=3, bias=8, signed=True, max_code=0x7F,
    max_finite=240.0, inf_code=None, nan_codes=frozenset({0x80}), canonical_nan=0x80,
    negative_zero=None,
)
E5M2 = FloatFormat(
    "e5m2", bits=8, exp_bits=5, man_bits=2, bias=15, signed=True, max_code=0x7B,
    max_finite=57344.0, inf_code=0x7C, nan_codes=frozenset({0x7D, 0x7E, 0x7F, 0xFD, 0xFE, 0xFF}),
    canonical_nan=0x7E, negative_zero=0x80,
)
BF16 = FloatFormat(
    "bf16", bits=16, exp_bits=8, man_bits=7, bias=127, signed=True, max_code=0x7F7F,
    max_finite=float.fromhex("0x1.fep127"), inf_code=0x7F80,
    nan_codes=frozenset(c for c in range(1 << 16) if (c & 0x7FFF) > 0x7F80),
    canonical_nan=0x7FFF, negative_zero=0x8000,
)

FORMATS: dict[str, FloatFormat] = {f.name: f for f in (E2M1, E8M0, E4M3FN, E4M3FNUZ, E5M2, BF16)}


_ALIASES = {
    "fp4": "e2m1", "float4_e2m1fn": "e2m1", "fp4_e2m1": "e2m1",
    "float8_e8m0fnu": "e8m0", "e8m0fnu": "e8m0",
    "float8_e4m3fn": "e4m3fn", "fp8_e4m3fn": "e4m3fn",
    "float8_e4m3fnuz": "e4m3fnuz", "fp8_e4m3fnuz": "e4m3fnuz",
    "float8_e5m2": "e5m2", "fp8_e5m2": "e5m2",
    "bfloat16": "bf16",
}


def get_format(fmt: str | FloatFormat, *, arg: str = "fmt") -> FloatFormat:
    """Look a format up by name (or pass a FloatFormat through); ValueError names the valid ones."""
    if isinstance(fmt, FloatFormat):
        return fmt
    if isinstance(fmt, str):
        key = fmt.lower()
        key = _ALIASES.get(key, key)
        if key in FORMATS:
            return FORMATS[key]
    raise ValueError(f"{arg}={fmt!r} is not a known format; expected one of {sorted(FORMATS)}")
