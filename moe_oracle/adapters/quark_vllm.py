"""amd-quark's MXFP4 kernels and vLLM's MXFP4 helpers, in the contract's signatures.

amd-quark (``quark.torch.kernel.mx``, what vLLM calls for MXFP4 models on ROCm) has three backends of
one quantize-dequantize and one dequantize: a compiled extension (``*_hip``: its ``hw_emulation`` C++,
JIT-built on first use), Triton (``*_triton``: its own copy of triton_kernels' ``downcast_to_mxfp`` /
``upcast_from_mxfp`` with an EVEN mode added) and the torch references beside the Triton kernels
(``downcast_to_mxfp_torch`` / ``upcast_from_mxfp_torch``); and the QAT path ``fake_quantize_mx``
(FLOOR / CEIL / EVEN scales). Its ``quark/__init__`` and ``quark/torch/__init__`` import onnx, pandas
and more: they are skipped (namespace stand-ins), everything below them is imported as it is.
Measured: ``quark.common.utils.import_utils`` imports ``aiter`` when the ``aiter`` module exists,
and AITER's import raises RuntimeError without ROCm (not the ImportError Quark catches); the adapter
hides ``aiter`` while Quark loads and says so.

vLLM 0.33 (``model_executor/layers/quantization/utils/mxfp4_utils.py``): ``_dequant_mxfp4`` and
``_quant_dequant_mxfp4`` delegate to amd-quark (``from quark.torch.kernel import mx``: read from its
source, see :func:`delegations`); ``mxfp4_quantize`` runs vLLM's own Triton ``downcast_to_mxfp`` (a
third copy of triton_kernels' quantizer) off XPU and off ROCm-with-AITER. The file's imports from vLLM
(logger, platform, triton_utils, custom-op registration) are given stand-ins: a CPU/CUDA platform
that is neither ROCm nor XPU, and ``direct_register_custom_op`` as ``torch.library`` registration.
"""

from __future__ import annotations

import ast
import contextlib
import functools
import importlib
import importlib.metadata
import sys
import types
from pathlib import Path

from ..implementation import Implementation, Quantizer
from ._loader import PeerUnavailable, import_file_module, locate, stub_packages
from .mx_peers import library_unavailable, unavailable, version_of

__all__ = ["quark", "vllm", "delegations", "INTERPRETER_BF16"]

INTERPRETER_BF16 = ("Triton with bf16 output: under the interpreter (the CPU) its bf16 casts are not hardware-faithful, "
                    "so a difference there is not a finding until a GPU run shows it")


@contextlib.contextmanager
def _aiter_hidden():
    saved = {k: v for k, v in sys.modules.items() if k == "aiter" or k.startswith("aiter.")}
    sys.modules["aiter"] = None  # import aiter -> ImportError, which Quark's probe handles
    try:
        yield
    finally:
        sys.modules.pop("aiter", None)
        sys.modules.update(saved)


@functools.cache
def _quark_modules():
    root = locate("quark", "MOE_ORACLE_QUARK_PATH")
    stub_packages(root, "quark.torch")
    try:
        sys.modules["quark"].__version__ = importlib.metadata.version("amd-quark")
    except importlib.metadata.PackageNotFoundError:
        sys.modules["quark"].__version__ = "0"
    with _aiter_hidden():
        mx = import_file_module("quark.torch.kernel.mx")
        return mx, import_file_module("quark.torch.kernel.mx.triton"), import_file_module(
            "quark.torch.kernel.hw_emulation.hw_emulation_interface")


def quark() -> Implementation:
    try:
        mx, tri, hw = _quark_modules()
    except PeerUnavailable as exc:
        return library_unavailable("amd-quark", str(exc))
    import torch

    modes = {"round_up": tri.DequantScaleRoundingMode.ROUND_UP, "round_down": tri.DequantScaleRoundingMode.ROUND_DOWN,
             "even": tri.DequantScaleRoundingMode.EVEN}

    def downcast_torch(x, scale_mode="even"):
        return tri.downcast_to_mxfp_torch(x, torch.uint8, axis=1, DEQUANT_SCALE_ROUNDING_MODE=modes[scale_mode])

    def downcast_triton(x, scale_mode="even"):
        codes, scale, _ = tri.downcast_to_mxfp(x, torch.uint8, axis=-1, swizzle_axis=None,
                                               DEQUANT_SCALE_ROUNDING_MODE=modes[scale_mode])
        return codes, scale

    def upcast_torch(codes, scale):
        return tri.upcast_from_mxfp_torch(codes, scale, torch.float32, axis=1)

    def upcast_triton(codes, scale):
        return tri.upcast_from_mxfp(codes, scale, torch.bfloat16, axis=-1, swizzle_axis=None)  # bf16/fp16 out only

    def qdq_hip(x):
        return mx.qdq_mxfp4_hip(x, "even")

    def dq_hip(codes, scale):
        return mx.dq_mxfp4_hip(codes, scale, torch.float32)

    def qdq_triton(x):
        return mx.qdq_mxfp4_triton(x, "even")

    def fake_quantize_mx(mode):
        def fn(x):
            return hw.fake_quantize_mx(x, -1, 32, mode, mx_element_dtype="fp4")
        return fn

    both = ("round_up", "round_down", "even")
    return Implementation("amd-quark", version=version_of("amd-quark"),
                          note=f"quark.torch.kernel.mx (QUARK_MXFP4_IMPL={getattr(mx, 'QUARK_MXFP4_IMPL', '?')}: "
                               f"what mx.qdq_mxfp4 / mx.dq_mxfp4 are)",
                          extra_quantizers=(
                              Quantizer("qdq_mxfp4_hip", "quantize_dequantize_mxfp4", qdq_hip, (), "even"),
                              Quantizer("qdq_mxfp4_triton", "quantize_dequantize_mxfp4", qdq_triton, (), "even"),
                              *(Quantizer(f"fake_quantize_mx[{m}]", "quantize_dequantize_mxfp4", fake_quantize_mx(m),
                                          (), {"floor": "round_down"}.get(m, m)) for m in ("floor", "ceil", "even")),
                              Quantizer("downcast_to_mxfp_torch[fp4]", "quantize_mxfp4", downcast_torch, both,
                                        input_dtypes=("bfloat16",), note="bf16/fp16 inputs only (its assertion)"),
                              Quantizer("downcast_to_mxfp[fp4] (Triton)", "quantize_mxfp4", downcast_triton, both,
                                        input_dtypes=("bfloat16",), note="bf16/fp16 inputs only (its assertion)"),
                              Quantizer("dq_mxfp4_hip", "dequantize_mxfp4", dq_hip, ()),
                              Quantizer("upcast_from_mxfp_torch[fp4]", "dequantize_mxfp4", upcast_torch, ()),
                              Quantizer("upcast_from_mxfp[fp4] (Triton)", "dequantize_mxfp4", upcast_triton, (),
                                        note=INTERPRETER_BF16),
                          ))


# --- vLLM --------------------------------------------------------------------------------------------------------

_VLLM_FILE = "vllm.model_executor.layers.quantization.utils.mxfp4_utils"


def _vllm_standins() -> dict[str, types.ModuleType]:
    import logging

    import torch
    import triton
    import triton.language as tl

    def mod(name, **attrs):
        m = types.ModuleType(name)
        m.__dict__.update(attrs)
        m.__moe_oracle_standin__ = True
        return m

    platform = types.SimpleNamespace(is_rocm=lambda: False, is_xpu=lambda: False, is_cuda=torch.cuda.is_available)

    def direct_register_custom_op(op_name, op_func, mutates_args=None, fake_impl=None, **_):
        name = f"vllm::{op_name}"
        if not hasattr(torch.ops.vllm, op_name) if hasattr(torch.ops, "vllm") else True:
            torch.library.custom_op(name, op_func, mutates_args=tuple(mutates_args or ()))
            if fake_impl is not None:
                torch.library.register_fake(name, fake_impl)

    return {
        "vllm.logger": mod("vllm.logger", init_logger=logging.getLogger),
        "vllm.platforms": mod("vllm.platforms", current_platform=platform),
        "vllm.triton_utils": mod("vllm.triton_utils", tl=tl, triton=triton),
        "vllm.utils.import_utils": mod("vllm.utils.import_utils", get_triton_kernels_version=lambda: "3.6",
                                       has_triton_kernels=lambda: False),
        "vllm.utils.torch_utils": mod("vllm.utils.torch_utils", direct_register_custom_op=direct_register_custom_op,
                                      is_torch_equal_or_newer=lambda v: True),
        "vllm._aiter_ops": mod("vllm._aiter_ops", is_aiter_found_and_supported=lambda: False),
    }


@functools.cache
def _vllm_module():
    root = locate("vllm", "MOE_ORACLE_VLLM_PATH")
    stub_packages(root, "vllm.model_executor.layers.quantization.utils")
    stub_packages(root, "vllm.utils")
    for name, standin in _vllm_standins().items():
        sys.modules.setdefault(name, standin)
    return import_file_module(_VLLM_FILE), root


def delegations(root: Path) -> dict[str, str]:
    """Which of the file's functions import another library inside (read from its source)."""
    path = root / Path(*_VLLM_FILE.split(".")).with_suffix(".py")
    found = {}
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.FunctionDef):
            for inner in ast.walk(node):
                if isinstance(inner, ast.ImportFrom) and inner.module and inner.module.split(".")[0] in ("quark", "aiter"):
                    names = ", ".join(a.name for a in inner.names)
                    found[node.name] = f"from {inner.module} import {names}"
    return found


def vllm() -> Implementation:
    try:  # Quark first, as a serving process has it: its import probes vLLM, which must not find the stand-ins
        _quark_modules()
        quark_error = None
    except PeerUnavailable as exc:
        quark_error = exc
    try:
        utils, root = _vllm_module()
    except PeerUnavailable as exc:
        return library_unavailable("vllm", str(exc))
    import torch

    via = delegations(root)

    def quant_dequant(x):
        return utils._quant_dequant_mxfp4(x, "even")

    def dequant(codes, scale):
        return utils._dequant_mxfp4(codes, scale, torch.float32)

    def quantize(x):
        return utils.mxfp4_quantize(x)

    def said(name):
        return f"delegates: {via[name]} (read from its source)" if name in via else "its own code"

    entries = [Quantizer("mxfp4_quantize", "quantize_mxfp4", quantize, (), "round_up",
                         note="off XPU and off ROCm-with-AITER: its own Triton downcast_to_mxfp")]
    if quark_error is None:
        entries += [Quantizer("_quant_dequant_mxfp4", "quantize_dequantize_mxfp4", quant_dequant, (), "even",
                              note=said("_quant_dequant_mxfp4")),
                    Quantizer("_dequant_mxfp4", "dequantize_mxfp4", dequant, (), note=said("_dequant_mxfp4"))]
    else:
        entries += [unavailable(n, k, f"{said(n)}; amd-quark does not load: {quark_error}")
                    for n, k in (("_quant_dequant_mxfp4", "quantize_dequantize_mxfp4"),
                                 ("_dequant_mxfp4", "dequantize_mxfp4"))]
    return Implementation("vllm", version=version_of("vllm"), note=f"{_VLLM_FILE} (vLLM's imports given stand-ins)",
                          extra_quantizers=tuple(entries))
