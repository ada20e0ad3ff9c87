"""The MX decodes, side by side: one exact result, three ways to get it.

- ``decode_scaled_bits``: the NumPy-faithful decode (``emulation.decode`` times the e8m0 scale, as
  integer arithmetic on fp32 patterns) for any MX element format; the activations' decode
  (``moe_gemm._dequant_rows_kernel``) and the stage-2 input that stage 1 writes.
- ``e2m1x2_to_bf16_fp32``: the portable e2m1 weight decode (every backend, the interpreter): the
  code's bits placed in a float, two exact fp32 multiplications.
- ``e2m1x2_to_bf16_ptx``: the same values from NVIDIA PTX (sm_80+), both nibbles of a byte at once
  as a bf16x2 pair, ~3 instructions a weight instead of ~9.
- ``e2m1x8_words_to_bf16``: the prepared weights' decode (``moe_kernels.prepared``: eight codes of a
  block in one word, bits placed for a rotation and a mask per bf16 pair), PTX (~2 instructions a
  weight) or portable.

Why the weight decodes are exact (``load_mxfp4_rows_bf16`` in ``moe_gemm`` picks one of the last two):
the code's magnitude bits (e2m1: 3) are placed at the low exponent and high mantissa bits of a float,
its sign at the sign bit, which reads as value(code) * 2^(BIAS - 127) (fp32; bf16 alike: e2m1 code 1,
0.5, is the subnormal 2^-127); two multiplications, by 2^(127 - BIAS) and by the block's 2^(byte -
127) (the subnormal 2^-127 for byte 0; NaN for byte 255), are exact because subnormals are kept (fp32
on every target, ``moe_kernels.targets`` checks it; bf16 arithmetic has no flush mode) and every
product is a value times a power of two that bf16 holds: e2m1 values have 2 significant bits, so even
0.5 * 2^-127 is an exact bf16 subnormal. Only 6 * 2^127 overflows (to inf, as the fp32
dequantization does). ``tests/kernels/test_numerics.py`` holds all three to ``emulation`` at every
code and scale byte.
"""

from __future__ import annotations

import triton
import triton.language as tl

from ._numerics import KernelFormat
from .prepared import PAIR_PARTS

__all__ = ["decode_scaled_bits", "e2m1x2_to_bf16", "e2m1x2_to_bf16_fp32", "e2m1x2_to_bf16_ptx", "e2m1x8_words_to_bf16"]


@triton.jit
def decode_scaled_bits(code, byte, F: tl.constexpr):
    """fp32 patterns (int32) of decode(code) * 2^(byte - 127) for the MX element format F.

    Exact whenever the result is a normal fp32, +-inf above (as the fp32 dequantization overflows);
    results below 2^-126 become +-0 (they never reach 1 ulp of an fp32 accumulator of normal-sized
    terms). Scale byte 255 (NaN) gives NaN.
    """
    MAN_BITS: tl.constexpr = F.man_bits
    mag = code & ((1 << F.sign_shift) - 1)
    ef = mag >> MAN_BITS
    m_full = tl.where(ef > 0, (mag & ((1 << MAN_BITS) - 1)) | (1 << MAN_BITS), mag)
    e_base = tl.maximum(ef, 1) - F.bias - MAN_BITS + byte - 127  # value = m_full * 2^e_base
    p = (m_full.to(tl.float32).to(tl.int32, bitcast=True) >> 23) - 127  # floor(log2 m_full), m_full < 16
    field = p + e_base + 127
    mantissa = (m_full - (1 << tl.maximum(p, 0))) << (23 - tl.maximum(p, 0))
    bits = tl.minimum((tl.minimum(field, 255) << 23) | mantissa, 0x7F800000)  # overflow: inf, as in fp32
    bits = tl.where((field > 0) & (m_full != 0), bits, 0)
    bits = bits | (((code >> F.sign_shift) & 1) << 31)
    return tl.where(byte == 255, 0x7FC00000, bits)


@triton.jit
def e2m1x2_to_bf16(packed, byte, F: tl.constexpr, PTX: tl.constexpr):
    """fp4x2 bytes (uint8, [..., 16]) and their blocks' e8m0 bytes (int32, broadcasting) -> (lo, hi):
    int16 bf16 patterns of value(low nibble) * 2^(byte - 127) and value(high nibble) * 2^(byte - 127).
    PTX: the bf16x2 decode (NVIDIA); else the portable fp32 one. Equal results."""
    if PTX:
        lo, hi = e2m1x2_to_bf16_ptx(packed, byte, F)
    else:
        lo, hi = e2m1x2_to_bf16_fp32(packed, byte, F)
    return lo, hi


@triton.jit
def _fp32_scale(byte):
    """The portable decodes' fp32 factor 2^(byte - 127) of an e8m0 byte: the subnormal 2^-127 for byte 0,
    NaN for 255."""
    return tl.where(byte == 0, 0x00400000, tl.where(byte == 255, 0x7FC00000, byte << 23)).to(tl.float32,
                                                                                             bitcast=True)


@triton.jit
def e2m1x2_to_bf16_fp32(packed, byte, F: tl.constexpr):
    """The portable decode: the code's bits placed in an fp32, times 2^(127 - BIAS), times the
    block's scale (module docstring), then its top half (no float cast: NUMERICS 5)."""
    MAG: tl.constexpr = (1 << F.sign_shift) - 1
    SIGN: tl.constexpr = 1 << F.sign_shift
    MAN_BITS: tl.constexpr = F.man_bits
    SIGN_SHIFT: tl.constexpr = F.sign_shift
    packed = packed.to(tl.int32)
    scale = _fp32_scale(byte)
    lo = (((packed & MAG) << (23 - MAN_BITS)) | ((packed & SIGN) << (31 - SIGN_SHIFT))).to(tl.float32, bitcast=True)
    hi = (((packed & (MAG << 4)) << (19 - MAN_BITS)) | ((packed & (SIGN << 4)) << (27 - SIGN_SHIFT))).to(
        tl.float32, bitcast=True)
    unbias: tl.constexpr = 2.0**(127 - F.bias)
    lo = (((lo * unbias) * scale).to(tl.int32, bitcast=True) >> 16).to(tl.int16)
    hi = (((hi * unbias) * scale).to(tl.int32, bitcast=True) >> 16).to(tl.int16)
    return lo, hi


@triton.jit
def e2m1x2_to_bf16_ptx(packed, byte, F: tl.constexpr):
    """The NVIDIA decode (sm_80+): the block's factors (``_ptx_factor_pairs``), four bytes an asm call
    (``_e2m1x2_asm``). F must be e2m1 (the asm is built for it)."""
    scale_pair, unbias_pair = _ptx_factor_pairs(byte)
    pairs = tl.inline_asm_elementwise(asm=_E2M1X2_ASM, constraints=_E2M1X2_CONSTRAINTS,
                                      args=[packed, tl.broadcast_to(scale_pair, packed.shape),
                                            tl.broadcast_to(unbias_pair, packed.shape)],
                                      dtype=tl.int32, is_pure=True, pack=4)
    return pairs.to(tl.int16), (pairs >> 16).to(tl.int16)  # element 2j: the low half


@triton.jit
def _ptx_factor_pairs(byte):
    """The PTX decodes' two bf16x2 factors of a block: 2^(byte - 127) in both halves (byte << 7, or the
    subnormal 0x0040 for byte 0: the max; byte 255 gives inf there) and 2^(127 - BIAS), NaN for byte 255
    (``_UNBIAS_ASM``)."""
    scale_pair = tl.maximum(byte * 0x00800080, 0x00400040)
    unbias_pair = tl.inline_asm_elementwise(asm=_UNBIAS_ASM, constraints="=r,r", args=[scale_pair], dtype=tl.int32,
                                            is_pure=True, pack=1)
    return scale_pair, unbias_pair


def _e2m1x2_asm(f: KernelFormat) -> str:
    """PTX for four fp4x2 bytes ($4, one register) -> four bf16x2 pairs ($0-$3); $5-$8: each byte's
    bf16x2 scale 2^(byte - 127) in both halves, $9-$12: bf16x2 2^(127 - BIAS) (NaN for byte 255).

    prmt puts byte i of x << 4 (its low nibble on top) in bits 8-15 and byte i of x (high nibble on
    top) in bits 24-31: each half holds its code in bits 12-15, the sign already at bit 15; one shift
    moves the magnitude bits to bit 7 - MAN_BITS and up, one lop3 keeps them and the signs, both halves
    at once (4 instructions a byte); then two fma.rn.bf16x2 with -0 addends (exact: module docstring)."""
    mag = ((1 << f.sign_shift) - 1) << (7 - f.man_bits)
    shift = 16 - 1 - f.sign_shift - (7 - f.man_bits)  # code at bits 12-15 -> magnitude at 7 - MAN_BITS
    body = "".join(f"""
        prmt.b32 t, x4, $4, {0x4400 + 0x1111 * i};
        shr.b32 m, t, {shift};
        and.b32 s, t, {0x80008000};
        and.b32 m, m, {mag | (mag << 16)};
        or.b32 w, m, s;
        fma.rn.bf16x2 w, w, ${9 + i}, z;
        fma.rn.bf16x2 ${i}, w, ${5 + i}, z;""" for i in range(4))
    return f"""{{
        .reg .b32 x4, t, m, s, w, z;
        shl.b32 x4, $4, 4;
        mov.b32 z, {0x80008000};{body}
        }}"""


def _unbias_asm(f: KernelFormat) -> str:
    """bf16x2 2^(127 - BIAS) in both halves, NaN where $1 is inf (byte 255): scale * -0 + 2^(127 - BIAS)
    is -0 + 2^(127 - BIAS) for a finite scale and NaN for inf (one instruction, not a compare and a select)."""
    return f"""{{
        .reg .b32 z, u;
        mov.b32 z, {0x80008000};
        mov.b32 u, {((254 - f.bias) << 7) * 0x10001};
        fma.rn.bf16x2 $0, $1, z, u;
        }}"""


_E2M1X2_ASM: tl.constexpr = tl.constexpr(_e2m1x2_asm(KernelFormat.of("e2m1")))
_E2M1X2_CONSTRAINTS: tl.constexpr = tl.constexpr("=r,=r,=r,=r," + ",".join(["r"] * 9))  # 4 outputs; 1 + 4 + 4 inputs
_UNBIAS_ASM: tl.constexpr = tl.constexpr(_unbias_asm(KernelFormat.of("e2m1")))


@triton.jit
def _rotr_and(words, ROT: tl.constexpr, MASK: tl.constexpr):
    """rotr(words, ROT) & MASK on uint32."""
    if ROT == 0:
        out = words & MASK
    else:
        out = ((words >> ROT) | (words << (32 - ROT))) & MASK
    return out


@triton.jit
def _scaled_pair_fp32(placed, scale):
    """The portable multiplications of a placed bf16x2 pair (uint32): each half as an fp32, times
    2^126 and the block's scale (fp32), rounded back to its top half (exact: module docstring)."""
    unbias: tl.constexpr = 2.0**126
    lo = ((placed << 16).to(tl.float32, bitcast=True) * unbias) * scale
    hi = ((placed & 0xFFFF0000).to(tl.float32, bitcast=True) * unbias) * scale
    return (lo.to(tl.uint32, bitcast=True) >> 16) | (hi.to(tl.uint32, bitcast=True) & 0xFFFF0000)


@triton.jit
def e2m1x8_words_to_bf16(words, byte, PTX: tl.constexpr):
    """Prepared weight words (int32, ``moe_kernels.prepared``) and their blocks' e8m0 bytes (int32, same
    shape) -> the four bf16x2 pairs of each word (int32; pair j = 2t + u holds k = 2q + 8u + 16t and the
    next k in its high half). PTX: NVIDIA's bf16x2 multiplications (``_WORDS_ASM``), else fp32 ones;
    PTX == 2 (``FOLDED_PTX``): one multiplication a pair, by 2^126 * 2^(byte - 127) = 2^(byte - 1), a
    bf16 normal for bytes 0..128 only: the caller guarantees that every scale byte is <= 128."""
    if PTX == _FOLDED_PTX:
        folded_pair = (byte + 126) * 0x00800080  # bf16x2 2^(byte - 1): exponent field byte + 126
        p0, p1, p2, p3 = tl.inline_asm_elementwise(asm=_WORDS_FOLDED_ASM, constraints="=r,=r,=r,=r,r,r",
                                                   args=[words, folded_pair],
                                                   dtype=(tl.int32, tl.int32, tl.int32, tl.int32), is_pure=True,
                                                   pack=1)
    elif PTX:
        scale_pair, unbias_pair = _ptx_factor_pairs(byte)
        p0, p1, p2, p3 = tl.inline_asm_elementwise(asm=_WORDS_ASM, constraints="=r,=r,=r,=r,r,r,r",
                                                   args=[words, scale_pair, unbias_pair],
                                                   dtype=(tl.int32, tl.int32, tl.int32, tl.int32), is_pure=True,
                                                   pack=1)
    else:
        w = words.to(tl.uint32, bitcast=True)
        scale = _fp32_scale(byte)
        p0 = _scaled_pair_fp32(_rotr_and(w, _ROT0, _MASK0), scale).to(tl.int32, bitcast=True)
        p1 = _scaled_pair_fp32(_rotr_and(w, _ROT1, _MASK1), scale).to(tl.int32, bitcast=True)
        p2 = _scaled_pair_fp32(_rotr_and(w, _ROT2, _MASK2), scale).to(tl.int32, bitcast=True)
        p3 = _scaled_pair_fp32(_rotr_and(w, _ROT3, _MASK3) | _rotr_and(w, _ROT3B, _MASK3B), scale).to(tl.int32,
                                                                                                        bitcast=True)
    return p0, p1, p2, p3


def _words_asm(folded: bool = False) -> str:
    """PTX for one prepared word ($4) -> its four bf16x2 pairs ($0-$3); $5: the block's bf16x2 scale
    2^(byte - 127), $6: bf16x2 2^126 (NaN for byte 255). Per pair: each part's rotation (a funnel shift
    of the word with itself) and mask, OR-ed, then two fma.rn.bf16x2 with -0 addends, as
    ``_e2m1x2_asm``. ``folded``: one fma by $5 = 2^(byte - 1) (no $6)."""
    body = []
    for j, parts in enumerate(PAIR_PARTS):
        for n, (rot, mask) in enumerate(parts):
            src = "$4"
            if rot:
                body.append(f"shf.r.wrap.b32 r, $4, $4, {rot};")
                src = "r"
            body.append(f"and.b32 {'w' if n == 0 else 'v'}, {src}, {mask};")
            if n:
                body.append("or.b32 w, w, v;")
        body += [f"fma.rn.bf16x2 ${j}, w, $5, z;"] if folded else ["fma.rn.bf16x2 w, w, $6, z;",
                                                                    f"fma.rn.bf16x2 ${j}, w, $5, z;"]
    lines = "\n        ".join(body)
    return f"""{{
        .reg .b32 r, v, w, z;
        mov.b32 z, {0x80008000};
        {lines}
        }}"""


# PAIR_PARTS as scalar constexprs (compiled Triton does not index a constexpr tuple): pairs 0-2 one part each
assert [len(parts) for parts in PAIR_PARTS] == [1, 1, 1, 2]
((_ROT0, _MASK0),), ((_ROT1, _MASK1),), ((_ROT2, _MASK2),), ((_ROT3, _MASK3), (_ROT3B, _MASK3B)) = (
    tuple(tuple(tl.constexpr(x) for x in part) for part in parts) for parts in PAIR_PARTS)
_WORDS_ASM: tl.constexpr = tl.constexpr(_words_asm())
_WORDS_FOLDED_ASM: tl.constexpr = tl.constexpr(_words_asm(folded=True))
FOLDED_PTX = 2  # the weight decode's PTX constexpr for prepared weights whose scale bytes are all <= 128
_FOLDED_PTX: tl.constexpr = tl.constexpr(FOLDED_PTX)
