"""Triton kernels for MXFP4 MoE, validated against ``emulation`` and ``moe_ref``.

Importing this package on a machine without a GPU turns the Triton interpreter on (see
``moe_kernels._runtime``); the kernels are bit-exact there by construction.
"""

from . import _runtime  # noqa: F401  (must run before any kernel is defined)
from .dispatch import PATHS, MoEPlan, MoERun, fused_moe, plan_moe
from .quant import quantize_fp8_per_token, quantize_mxfp4, quantize_mxfp8

__all__ = ["PATHS", "MoEPlan", "MoERun", "fused_moe", "plan_moe", "quantize_fp8_per_token", "quantize_mxfp4",
           "quantize_mxfp8"]
