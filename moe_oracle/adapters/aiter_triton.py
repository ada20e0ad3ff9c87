"""AMD AITER's Triton kernels (the ``amd-aiter`` wheel's ``aiter/ops/triton/``), loaded without its
ROCm-only top level, in the contract's signatures and layouts.

Where to find it: ``MOE_ORACLE_AITER_PATH`` (a folder holding ``aiter/``, or the .whl itself), else an
installed ``aiter`` distribution (located, not imported). Tested with amd-aiter 0.1.7.post2.dev18.
"""

from __future__ import annotations

import contextlib
import functools

from ..implementation import Implementation, Quantizer
from ..interpreter import interpreter_active
from ._loader import import_file_module, locate, stub_packages

__all__ = ["implementation", "TESTED_VERSION"]

TESTED_VERSION = "amd-aiter 0.1.7.post2.dev18"
BF16_ONLY = ("bfloat16",)


@functools.cache
def _root():
    return locate("aiter", "MOE_ORACLE_AITER_PATH")


@functools.cache
def _modules():
    root = _root()
    stub_packages(root, "aiter.ops.triton")
    return import_file_module("aiter.ops.triton.quant"), import_file_module("aiter.ops.triton.quant_moe")


ARCH_NOTE = ("AITER's get_arch() asked of a non-AMD driver (the interpreter: RuntimeError, then an import of jax; "
             "NVIDIA: an int that its `in (\"gfx950\")` test rejects) is answered 'gfx950' by the adapter")


@functools.cache
def _moe_module():
    """moe_op_mxfp4, with AITER's arch query answered as gfx950 where the driver is not AMD's."""
    _modules()
    arch_info = import_file_module("aiter.ops.triton.utils._triton.arch_info")
    real = arch_info.get_arch

    def get_arch():
        try:
            arch = real()
        except (RuntimeError, ImportError):
            return "gfx950"
        return arch if isinstance(arch, str) and arch.startswith("gfx") else "gfx950"

    arch_info.get_arch = get_arch
    return import_file_module("aiter.ops.triton.moe_op_mxfp4")


def _stage(hidden, w, w_scale, topk_weights, topk_ids, *, mul_routed_weight, out=None):
    """``fused_moe_mxfp4`` (a16w4: bf16 activations, MXFP4 weights) as one MoE GEMM stage, with the
    sorted-id layout it expects (``moe_ref.moe_align_block_size``: padding = topk_ids.numel())."""
    import torch
    import triton.language as tl

    from moe_ref import moe_align_block_size

    moe = _moe_module()
    M, topk = topk_ids.shape
    E, N, _ = w.shape
    config = {"BLOCK_SIZE_M": 16, "BLOCK_SIZE_N": 64, "BLOCK_SIZE_K": 128, "GROUP_SIZE_M": 1}
    sorted_ids, expert_ids, total = moe_align_block_size(topk_ids.cpu(), config["BLOCK_SIZE_M"], E)
    dev = hidden.device
    out = torch.empty((M, topk, N), dtype=torch.bfloat16, device=dev) if out is None else out
    a_scale = torch.ones((1,), dtype=torch.float32, device=dev)  # per-tensor scales: 1 (MX scales carry it all)
    b_scale = torch.ones((E,), dtype=torch.float32, device=dev)  # one per expert: it reads B_scale[e]
    moe.fused_moe_mxfp4(hidden, w, out, a_scale, b_scale, None, w_scale, topk_weights.contiguous(), topk_ids,
                        sorted_ids.to(dev), expert_ids.to(dev), torch.tensor([total], dtype=torch.int32, device=dev),
                        mul_routed_weight, topk, False, False, config, tl.bfloat16)
    return out


@contextlib.contextmanager
def _assume_unchecked():
    """AITER's fp8 quantizers state ``tl.assume(pid > 0)``, false for program 0: on a GPU a compiler
    hint (undefined behaviour when false), under the interpreter an assertion. To measure their
    numerics under the interpreter, the assumption is not checked for the call (the report says so)."""
    if not interpreter_active():
        yield
        return
    from triton.runtime import interpreter

    builder = interpreter.InterpreterBuilder
    saved = builder.create_assume
    builder.create_assume = lambda self, condition: None
    try:
        yield
    finally:
        builder.create_assume = saved


def _fp8_dtype(fmt):
    import torch

    return {"e4m3fn": torch.float8_e4m3fn, "e4m3fnuz": torch.float8_e4m3fnuz}[fmt]


def implementation() -> Implementation:
    quant, quant_moe = _modules()
    import torch

    def dynamic_mxfp4_quant(x):
        return quant.dynamic_mxfp4_quant(x)  # its one mode: scaling_mode="even" (SCALING_MODE=0)

    def downcast_mxfp4(x, scale_mode="round_up"):
        mode = {"round_up": quant_moe.DequantScaleRoundingMode.ROUND_UP,
                "round_down": quant_moe.DequantScaleRoundingMode.ROUND_DOWN}[scale_mode]
        return quant_moe.downcast_to_mxfp(x, torch.uint8, axis=1, DEQUANT_SCALE_ROUNDING_MODE=mode)

    def downcast_mxfp8(x, scale_mode="round_up", fmt="e4m3fn"):
        mode = {"round_up": quant_moe.DequantScaleRoundingMode.ROUND_UP,
                "round_down": quant_moe.DequantScaleRoundingMode.ROUND_DOWN}[scale_mode]
        return quant_moe.downcast_to_mxfp(x, _fp8_dtype(fmt), axis=1, DEQUANT_SCALE_ROUNDING_MODE=mode)

    def per_token_fp8(x, fmt="e4m3fn"):
        qx = torch.empty(x.shape, dtype=_fp8_dtype(fmt), device=x.device)
        scale = torch.empty((x.shape[0], 1), dtype=torch.float32, device=x.device)
        with _assume_unchecked():
            return quant.dynamic_per_token_quant_fp8_i8(qx, x, scale)

    def per_tensor_fp8(x, fmt="e4m3fn"):
        qx = torch.empty(x.shape, dtype=_fp8_dtype(fmt), device=x.device)
        scale = torch.zeros((1,), dtype=torch.float32, device=x.device)  # its amax kernel accumulates into it
        with _assume_unchecked():
            return quant.dynamic_per_tensor_quant_fp8_i8(qx, x, scale)

    assume_note = ("under the interpreter its tl.assume(pid > 0), false for program 0, is not checked" if
                   interpreter_active() else "")
    from .aiter_dispatch import load_dispatch

    return Implementation(
        "aiter-triton", moe_gemm_stage=_stage, select_act_dtype=load_dispatch(_root()), version=TESTED_VERSION, note=f"AITER's Triton quantizers ({TESTED_VERSION}, loaded from its files)",
        extra_quantizers=(
            Quantizer("dynamic_mxfp4_quant", "quantize_mxfp4", dynamic_mxfp4_quant, (), "even",
                      note="its docstring: scaling_mode 'even' (Quark's even_round)"),
            Quantizer("downcast_to_mxfp[fp4]", "quantize_mxfp4", downcast_mxfp4, ("round_up", "round_down"),
                      input_dtypes=BF16_ONLY, note="bf16/fp16 inputs only (its assertion)"),
            Quantizer("downcast_to_mxfp[fp8]", "quantize_mxfp8", downcast_mxfp8, ("round_up", "round_down"),
                      input_dtypes=BF16_ONLY, note="bf16/fp16 inputs only (its assertion)"),
            Quantizer("dynamic_per_token_quant_fp8_i8", "quantize_fp8_per_token", per_token_fp8, (),
                      fp8_formats=("e4m3fn", "e4m3fnuz"), note=assume_note),
            Quantizer("dynamic_per_tensor_quant_fp8_i8", "quantize_fp8_per_tensor", per_tensor_fp8, (),
                      fp8_formats=("e4m3fn", "e4m3fnuz"), note=assume_note),
        ),
    )
