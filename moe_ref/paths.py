"""The activation paths of an MXFP4-weight MoE: one record each (name, element format, quantization),
the one place dispatch, reference, tolerance and the oracle look them up."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

import emulation as em

__all__ = ["ActivationPath", "ACTIVATION_PATHS", "activation_path"]


@dataclass(frozen=True)
class ActivationPath:
    """``act_dtype`` (the selector's answer), ``name`` (a16w4 / a4w4 / a8w4), ``element_format`` of its
    MX activations (None: bf16, not MX-quantized), ``packed`` (two elements a byte: fp4x2), ``kind``
    (its number: the GEMM kernels' KIND constexpr, ``moe_kernels.moe_gemm``)."""

    act_dtype: str
    name: str
    element_format: str | None
    packed: bool
    kind: int

    @property
    def is_mx(self) -> bool:
        return self.element_format is not None

    def quantize(self, x: np.ndarray, scale_mode="round_up"):
        """The emulation's bytes of fp32 rows ``x``: (codes, e8m0 scales) along the last axis; bf16: (bits, None)."""
        if not self.is_mx:
            return em.encode(x, "bf16"), None
        if self.packed:
            return em.quantize_mxfp4(x, scale_mode=scale_mode)
        return em.quantize_mx(x, self.element_format, scale_mode=scale_mode)

    def quantize_values(self, x: np.ndarray, scale_mode="round_up") -> np.ndarray:
        """Q of the reference's contract: fp32 rows -> their quantized values (float32)."""
        if not self.is_mx:
            return em.round_to_bf16(x)
        codes, scale = em.quantize_mx(x, self.element_format, scale_mode=scale_mode)
        return em.dequantize_mx(codes, scale, self.element_format)


ACTIVATION_PATHS: dict[str, ActivationPath] = {
    p.act_dtype: p for p in (
        ActivationPath("bf16", "a16w4", None, packed=False, kind=0),
        ActivationPath("fp4x2", "a4w4", "e2m1", packed=True, kind=1),
        ActivationPath("fp8", "a8w4", "e4m3fn", packed=False, kind=2),
    )
}


def activation_path(act_dtype: str) -> ActivationPath:
    try:
        return ACTIVATION_PATHS[act_dtype]
    except KeyError:
        raise ValueError(f"act_dtype={act_dtype!r} is not valid; expected one of {list(ACTIVATION_PATHS)}") from None
