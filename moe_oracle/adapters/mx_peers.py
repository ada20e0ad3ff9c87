"""The ecosystem's MXFP4 quantizers and dequantizers, each in the contract's signatures, loaded without
its library's heavy top level where that needs ROCm, CUDA or dozens of packages (``_loader``).

One function per library returns an :class:`Implementation` whose ``extra_quantizers`` are its
functions; a function that cannot run here raises :class:`PeerUnavailable` with the measured reason
when called (one line in the table), and a library that cannot be loaded at all is one such line.
What each adapter does to call a function (argument order, a dtype, a slice of a padded output) is
said in its ``note``; nothing is converted that the library itself would not hand its caller.

Libraries: torchao ``mx_formats``; SGLang ``mxfp4_tensor``; triton_kernels' torch references and its
Triton upcast (the copy vendored in vLLM); AITER's torch-side ``fp4_utils`` and its Triton
``dynamic_mxfp4_quant`` there. amd-quark and vLLM are in ``quark_vllm.py``.
"""

from __future__ import annotations

import functools
import importlib.metadata
import sys
import types

from ..implementation import Implementation, Quantizer
from ._loader import PeerUnavailable, import_file_module, locate, stub_packages

__all__ = ["torchao", "sglang", "triton_kernels_refs", "aiter_torch", "unavailable", "version_of", "PeerUnavailable"]


def version_of(dist: str) -> str:
    try:
        return f"{dist} {importlib.metadata.version(dist)}"
    except importlib.metadata.PackageNotFoundError:
        return f"{dist} (version unknown: not installed as a distribution)"


def unavailable(label: str, kind: str, reason: str) -> Quantizer:
    """A function that does not run here: calling it raises the reason (the table's one line)."""

    def fn(*args, **kwargs):
        raise PeerUnavailable(reason)

    return Quantizer(label, kind, fn, (), note=reason)


def library_unavailable(name: str, reason: str) -> Implementation:
    return Implementation(name, version=name, note=reason,
                          extra_quantizers=(unavailable("(the library)", "quantize_mxfp4", reason),))


# --- torchao -----------------------------------------------------------------------------------------------------

TORCHAO_MODES = {"FLOOR": "round_down", "CEIL": "ceil", "EVEN": "even", "RCEIL": "round_up"}  # what each claims


def torchao() -> Implementation:
    try:
        import torch
        from torchao.prototype.mx_formats.config import ScaleCalculationMode
        from torchao.prototype.mx_formats.mx_tensor import to_dtype, to_mx
    except Exception as exc:  # noqa: BLE001 - a peer that does not load is one line
        return library_unavailable("torchao", f"cannot import torchao.prototype.mx_formats: {type(exc).__name__}: {exc}")

    def quantizer(elem, mode_name, kind):
        def fn(x):  # to_mx returns (scale, data): the contract's order is (data, scale)
            scale, data = to_mx(x.contiguous(), elem, 32, ScaleCalculationMode[mode_name])
            return data, scale

        fn.__name__ = f"to_mx[{'fp4' if kind == 'quantize_mxfp4' else 'fp8'}, {mode_name}]"
        return Quantizer(fn.__name__, kind, fn, (), TORCHAO_MODES[mode_name],
                         note="returns (scale, data); the adapter swaps them")

    def dequant(codes, scale):
        return to_dtype(codes, scale.view(torch.float8_e8m0fnu), torch.float4_e2m1fn_x2, 32, torch.float32)

    return Implementation("torchao", version=version_of("torchao"), note="torchao.prototype.mx_formats.mx_tensor",
                          extra_quantizers=(
                              *(quantizer(torch.float4_e2m1fn_x2, m, "quantize_mxfp4") for m in TORCHAO_MODES),
                              *(quantizer(torch.float8_e4m3fn, m, "quantize_mxfp8") for m in TORCHAO_MODES),
                              Quantizer("to_dtype[fp4]", "dequantize_mxfp4", dequant, ()),
                          ))


# --- SGLang ------------------------------------------------------------------------------------------------------


def sglang() -> Implementation:
    try:
        root = locate("sglang", "MOE_ORACLE_SGLANG_PATH")
        stub_packages(root, "sglang.srt.layers.quantization")
        util = import_file_module("sglang.srt.layers.quantization.mxfp4_tensor").MXFP4QuantizeUtil
    except PeerUnavailable as exc:
        return library_unavailable("sglang", str(exc))

    def quantize(x):  # as shipped: returns (cls(shape, dtype, packed), scale)
        obj, scale = util.quantize(x, 32)
        return obj, scale

    class _Holder(util):  # the same body, its result object given the constructor it calls
        def __init__(self, shape, dtype, data):
            self.data = data

    def quantize_numerics(x):
        obj, scale = util.quantize.__func__(_Holder, x, 32)
        return obj.data.reshape(x.shape[0], -1), scale.reshape(x.shape[0], -1)

    def dequantize(codes, scale):
        import torch

        return util.dequantize(codes, torch.float32, scale, [32])

    return Implementation("sglang", version=version_of("sglang"),
                          note="sglang.srt.layers.quantization.mxfp4_tensor (from TensorRT-Model-Optimizer)",
                          extra_quantizers=(
                              Quantizer("MXFP4QuantizeUtil.quantize", "quantize_mxfp4", quantize, (), "ceil"),
                              Quantizer("MXFP4QuantizeUtil.quantize (its body)", "quantize_mxfp4", quantize_numerics,
                                        (), "ceil", note="the body's codes and scales, its result class given a "
                                                         "constructor (as shipped it has none: see the row above)"),
                              Quantizer("MXFP4QuantizeUtil.dequantize", "dequantize_mxfp4", dequantize, ()),
                          ))


# --- triton_kernels (vendored in vLLM) ------------------------------------------------------------------------


@functools.cache
def _triton_kernels_mxfp():
    from .triton_kernels import package_root

    package_root()
    return import_file_module("triton_kernels.numerics_details.mxfp")


def triton_kernels_refs() -> Implementation:
    try:
        mxfp = _triton_kernels_mxfp()
    except PeerUnavailable as exc:
        return library_unavailable("triton_kernels", str(exc))
    import torch

    modes = {"round_up": mxfp.DequantScaleRoundingMode.ROUND_UP, "round_down": mxfp.DequantScaleRoundingMode.ROUND_DOWN}

    def downcast_torch(x, scale_mode="round_up"):
        return mxfp.downcast_to_mxfp_torch(x, torch.uint8, axis=1, DEQUANT_SCALE_ROUNDING_MODE=modes[scale_mode])

    def upcast_torch(codes, scale):
        return mxfp.upcast_from_mxfp_torch(codes, scale, torch.float32, axis=1)

    def upcast(codes, scale):
        return mxfp.upcast_from_mxfp(codes, scale, torch.bfloat16, axis=1)  # as for its matmul: bf16 out

    return Implementation("triton_kernels", version=triton_kernels_version(),
                          note="triton_kernels.numerics_details.mxfp: the torch references beside its Triton kernels",
                          extra_quantizers=(
                              Quantizer("downcast_to_mxfp_torch[fp4]", "quantize_mxfp4", downcast_torch,
                                        ("round_up", "round_down"), input_dtypes=("bfloat16",),
                                        note="bf16/fp16 inputs only (its assertion)"),
                              Quantizer("upcast_from_mxfp_torch[fp4]", "dequantize_mxfp4", upcast_torch, ()),
                              Quantizer("upcast_from_mxfp[fp4]", "dequantize_mxfp4", upcast, (),
                                        note="Triton with bf16 output (not hardware-faithful under the interpreter)"),
                          ))


def triton_kernels_version() -> str:
    from .triton_kernels import package_root

    vendored = "vllm" in str(package_root())
    return version_of("vllm").replace("vllm", "triton_kernels vendored in vllm") if vendored else version_of(
        "triton_kernels")


# --- AITER's torch-side helpers ------------------------------------------------------------------------------


@functools.cache
def _aiter_fp4_utils():
    root = locate("aiter", "MOE_ORACLE_AITER_PATH")
    stub_packages(root, "aiter.jit.utils")
    stub_packages(root, "aiter.utility")
    chip_info = types.ModuleType("aiter.jit.utils.chip_info")  # its real one reads ROCm's files at import
    chip_info.get_gfx = lambda: "gfx950"
    sys.modules.setdefault("aiter.jit.utils.chip_info", chip_info)
    return import_file_module("aiter.utility.fp4_utils")


def aiter_torch() -> Implementation:
    try:
        fp4 = _aiter_fp4_utils()
    except PeerUnavailable as exc:
        return library_unavailable("aiter (utility)", str(exc))
    import torch

    def dequant(codes, scale):  # how AITER's op_tests build their reference weights
        values = fp4.mxfp4_to_f32(codes.clone())
        return values * fp4.e8m0_to_f32(scale.clone()).repeat_interleave(32, dim=-1)

    def quant(x):  # its Triton kernel in the asm layout: scales padded to 256 rows x 8 columns
        codes, scale = fp4.dynamic_mxfp4_quant(x, shuffle=False)
        M, K = x.shape
        return codes.view(torch.uint8), scale.view(torch.uint8)[:M, : K // 32]

    return Implementation("aiter (utility)", version=version_of("amd-aiter"),
                          note="aiter/utility/fp4_utils.py (get_gfx answered gfx950: its chip_info reads ROCm files)",
                          extra_quantizers=(
                              Quantizer("fp4_utils.dynamic_mxfp4_quant", "quantize_mxfp4", quant, (), "even",
                                        note="scales sliced from its padded [256k, 8k] buffer (shuffle=False)"),
                              Quantizer("mxfp4_to_f32 x e8m0_to_f32", "dequantize_mxfp4", dequant, (),
                                        note="composed as its op_tests compose them"),
                          ))
