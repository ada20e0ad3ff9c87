"""FlashInfer's MXFP4 quantizers in the contract's signatures, loaded without its top level (which
imports every kernel family and their compiled-extension machinery).

- ``mxfp4_quantize`` (``flashinfer.quantization.fp4_quantization``): the CUDA kernel, and with
  ``batch_invariant=True`` its batch-invariant class; asked for the linear scale layout (``M x K/32``
  bytes), the contract's. Its own guards decide where it runs: what calling it did is the line.
- Its CPU specification of that class (``batch_invariant.quantization.mx_reference``):
  ``quantize_mx_reference`` under the two scale rules FlashInfer names (``DEFAULT_RULE``,
  TransformerEngine's recipe: amax times the float32 reciprocal of 6, rounded up to a power of two;
  ``OCP_FLOOR_RULE``: the OCP sheet's floor(log2 amax) - 2), and ``dequantize_mx``, its decode. Plain
  torch: it runs anywhere.

Not here: ``mxfp4_dequantize`` / ``mxfp4_dequantize_host`` call a module JIT-compiled on first use
from the wheel's CUDA sources, and ask the CUDA device's arch even for the host path.
"""

from __future__ import annotations

import functools

from ..implementation import Implementation, Quantizer
from ._loader import PeerUnavailable, import_file_module, locate, stub_packages
from .mx_peers import library_unavailable, unavailable, version_of

__all__ = ["flashinfer"]

_REFERENCE = "flashinfer.batch_invariant.quantization.mx_reference"
_KERNELS = "flashinfer.quantization.fp4_quantization"
RULES = {"DEFAULT_RULE": "ceil", "OCP_FLOOR_RULE": "round_down"}  # the rule's name -> the mode it describes


@functools.cache
def _module(dotted: str):
    root = locate("flashinfer", "MOE_ORACLE_FLASHINFER_PATH")
    stub_packages(root, dotted.rsplit(".", 1)[0])
    return import_file_module(dotted)


def _kernel(label: str, batch_invariant: bool) -> Quantizer:
    try:
        kernels = _module(_KERNELS)
        layout = _module("flashinfer.tllm_enums").SfLayout.layout_linear
    except PeerUnavailable as exc:
        return unavailable(label, "quantize_mxfp4", str(exc))

    def fn(x):
        codes, scale = kernels.mxfp4_quantize(x, sfLayout=layout, batch_invariant=batch_invariant)
        return codes, scale.reshape(x.shape[0], -1)

    return Quantizer(label, "quantize_mxfp4", fn, (), "ceil", input_dtypes=("bfloat16",),
                     note="sfLayout=layout_linear (M x K/32 scale bytes)")


def flashinfer() -> Implementation:
    try:
        ref = _module(_REFERENCE)
    except PeerUnavailable as exc:
        return library_unavailable("flashinfer", str(exc))
    spec = _module("flashinfer.batch_invariant.quantization.mx_spec")

    def reference(rule_name):
        def fn(x):
            codes, _, scale_rows = ref.quantize_mx_reference(x, spec.MXFP4, getattr(spec, rule_name), "linear")
            return codes.to(x.device), scale_rows.to(x.device)

        return Quantizer(f"quantize_mx_reference[{rule_name}]", "quantize_mxfp4", fn, (), RULES[rule_name],
                         note="its CPU specification of mxfp4_quantize(batch_invariant=True); the third output "
                              "(the scales' logical M x K/32 bytes) taken")

    def dequantize(codes, scale):
        return ref.dequantize_mx(codes.cpu(), scale.cpu(), spec.MXFP4, 2 * codes.shape[-1]).to(codes.device)

    return Implementation("flashinfer", version=version_of("flashinfer-python"),
                          note="flashinfer.quantization.fp4_quantization and batch_invariant.quantization",
                          extra_quantizers=(
                              _kernel("mxfp4_quantize", False),
                              _kernel("mxfp4_quantize(batch_invariant=True)", True),
                              *(reference(r) for r in RULES),
                              Quantizer("dequantize_mx (its specification's decode)", "dequantize_mxfp4", dequantize,
                                        ()),
                          ))
