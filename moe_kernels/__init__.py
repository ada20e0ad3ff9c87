"""Triton kernels for MXFP4 MoE, validated against ``emulation`` and ``moe_ref``.

Importing this package on a machine without a GPU turns the Triton interpreter on (see
``moe_kernels._runtime``); the kernels are bit-exact there by construction. It also registers
``fused_moe`` and the quantizers as torch custom operators (``torch.ops.moe_kernels.*``, see
``moe_kernels.ops``) for ``torch.compile`` and CUDA graphs.
"""

from . import (
           _runtime,  # noqa: F401  (must run before any kernel is defined)
           ops,  # noqa: E402,F401  (torch.ops.moe_kernels.*: the custom operators)
)
from .dispatch import MoEPlan, MoERun, fused_moe, plan_moe
from .prepared import PreparedWeights, prepare_weights
from .quant import quantize_fp8_per_token, quantize_mxfp4, quantize_mxfp8

__all__ = ["MoEPlan", "MoERun", "PreparedWeights", "fused_moe", "plan_moe", "prepare_weights", "quantize_fp8_per_token",
           "quantize_mxfp4", "quantize_mxfp8"]
