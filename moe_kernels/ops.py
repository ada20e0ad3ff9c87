"""``fused_moe`` and the quantizers as torch custom operators (``torch.ops.moe_kernels.*``), with fake
(meta) implementations, so that a serving engine's ``torch.compile(fullgraph=True)`` traces through
them and a CUDA graph captures them, as vLLM and SGLang register their MoE operators.

    out = torch.ops.moe_kernels.fused_moe(hidden, w1, w1_scale, w2, w2_scale, topk_weights, topk_ids,
                                          "separated", "round_up", None, None, None)

The activation path is chosen inside, at run time, by ``moe_ref.select_activation_dtype`` from the
process environment (``os.environ``), as in an eager call; ``arch`` None means the device's.

A serving engine that holds its weights prepared (``held = moe_kernels.prepare_weights(w1, w1_scale, w2,
w2_scale)``, once per layer) passes them on, so that a CUDA graph captures the left-operand GEMMs (without
them a capture reads the public layout, which is slower on Hopper):

    out = torch.ops.moe_kernels.fused_moe_prepared(hidden, w1, w1_scale, w2, w2_scale, topk_weights, topk_ids,
                                                   "separated", "round_up", None, None, None, *held.op_args())

The prepared tensors' shapes are checked; that they were made from these weights is the caller's word
(``prepared.held_from_tensors``).
"""

from __future__ import annotations

import torch

from .dispatch import fused_moe
from .prepared import held_from_tensors
from .quant import quantize_fp8_per_token, quantize_mxfp4, quantize_mxfp8

__all__ = ["fused_moe_op", "fused_moe_prepared_op", "quantize_mxfp4_op", "quantize_mxfp8_op", "quantize_fp8_per_token_op"]

_NS = "moe_kernels"


@torch.library.custom_op(f"{_NS}::fused_moe", mutates_args=())
def fused_moe_op(hidden: torch.Tensor, w1: torch.Tensor, w1_scale: torch.Tensor, w2: torch.Tensor,
                 w2_scale: torch.Tensor, topk_weights: torch.Tensor, topk_ids: torch.Tensor, gate_mode: str,
                 scale_mode: str, bias1: torch.Tensor | None, bias2: torch.Tensor | None,
                 arch: str | None) -> torch.Tensor:
    return fused_moe(hidden, w1, w1_scale, w2, w2_scale, topk_weights, topk_ids, gate_mode=gate_mode,
                     scale_mode=scale_mode, bias1=bias1, bias2=bias2, arch=arch)


def _fused_moe_fake(hidden, w1, w1_scale, w2, *rest):
    """The output both MoE operators return: [M, H] bf16 (their fake implementation)."""
    return hidden.new_empty((hidden.shape[0], w2.shape[1]), dtype=torch.bfloat16)


fused_moe_op.register_fake(_fused_moe_fake)


@torch.library.custom_op(f"{_NS}::fused_moe_prepared", mutates_args=())
def fused_moe_prepared_op(hidden: torch.Tensor, w1: torch.Tensor, w1_scale: torch.Tensor, w2: torch.Tensor,
                          w2_scale: torch.Tensor, topk_weights: torch.Tensor, topk_ids: torch.Tensor, gate_mode: str,
                          scale_mode: str, bias1: torch.Tensor | None, bias2: torch.Tensor | None, arch: str | None,
                          w1_prepared: torch.Tensor, w1_scale_prepared: torch.Tensor, w2_prepared: torch.Tensor,
                          w2_scale_prepared: torch.Tensor, small_scales: bool) -> torch.Tensor:
    held = held_from_tensors(w1, w1_scale, w2, w2_scale, w1_prepared, w1_scale_prepared, w2_prepared,
                             w2_scale_prepared, small_scales)
    return fused_moe(hidden, w1, w1_scale, w2, w2_scale, topk_weights, topk_ids, gate_mode=gate_mode,
                     scale_mode=scale_mode, bias1=bias1, bias2=bias2, arch=arch, prepared=held)


fused_moe_prepared_op.register_fake(_fused_moe_fake)


@torch.library.custom_op(f"{_NS}::quantize_mxfp4", mutates_args=())
def quantize_mxfp4_op(x: torch.Tensor, scale_mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    return quantize_mxfp4(x, scale_mode=scale_mode)


@quantize_mxfp4_op.register_fake
def _(x, scale_mode):
    M, K = x.shape
    return x.new_empty((M, K // 2), dtype=torch.uint8), x.new_empty((M, K // 32), dtype=torch.uint8)


@torch.library.custom_op(f"{_NS}::quantize_mxfp8", mutates_args=())
def quantize_mxfp8_op(x: torch.Tensor, fmt: str, scale_mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    return quantize_mxfp8(x, fmt=fmt, scale_mode=scale_mode)


@quantize_mxfp8_op.register_fake
def _(x, fmt, scale_mode):
    M, K = x.shape
    return x.new_empty((M, K), dtype=torch.uint8), x.new_empty((M, K // 32), dtype=torch.uint8)


@torch.library.custom_op(f"{_NS}::quantize_fp8_per_token", mutates_args=())
def quantize_fp8_per_token_op(x: torch.Tensor, fmt: str) -> tuple[torch.Tensor, torch.Tensor]:
    return quantize_fp8_per_token(x, fmt=fmt)


@quantize_fp8_per_token_op.register_fake
def _(x, fmt):
    M, K = x.shape
    return x.new_empty((M, K), dtype=torch.uint8), x.new_empty((M, 1), dtype=torch.float32)
