"""Bit-exact NumPy emulation of the number formats of MXFP4 MoE kernels (NumPy only).

The emulation is the contract: kernels must produce exactly these bytes.
"""

from .convert import OVERFLOW_POLICIES, TIE_MODES, decode, encode, round_to_bf16
from .formats import BF16, E2M1, E4M3FN, E4M3FNUZ, E5M2, E8M0, FORMATS, FloatFormat, get_format
from .fp4x2 import pack_fp4x2, unpack_fp4x2
from .fp8 import dequantize_fp8, quantize_fp8_per_tensor, quantize_fp8_per_token
from .mx import (
    BLOCK_SIZE,
    ScaleMode,
    dequantize_mx,
    dequantize_mxfp4,
    dequantize_mxfp8,
    mx_scale_e8m0,
    quantize_mx,
    quantize_mxfp4,
    quantize_mxfp8,
    recover_mx,
)

__all__ = [
    "BF16", "BLOCK_SIZE", "E2M1", "E4M3FN", "E4M3FNUZ", "E5M2", "E8M0", "FORMATS", "FloatFormat",
    "OVERFLOW_POLICIES", "ScaleMode", "TIE_MODES", "decode", "dequantize_fp8", "dequantize_mx",
    "dequantize_mxfp4", "dequantize_mxfp8", "encode", "get_format", "mx_scale_e8m0", "pack_fp4x2",
    "quantize_fp8_per_tensor", "quantize_fp8_per_token", "quantize_mx", "quantize_mxfp4",
    "quantize_mxfp8", "recover_mx", "round_to_bf16", "unpack_fp4x2",
]
