"""The gated activations of the MoE stage-1 epilogue: one definition, fp32 and float64.

SwiGLU (gpt-oss style, NUMERICS.md section 7), with alpha = 1.702 and limit = 7.0 by default::

    gate = min(gate, limit); up = clamp(up, -limit, limit)
    out  = gate * sigmoid(alpha * gate) * (up + 1),   sigmoid(z) = 1 / (1 + exp(-z))

SiLU-gated: ``out = gate * sigmoid(gate) * up`` (no clamp). The fp32 version performs exactly these
operations in this order, each rounded to fp32: z = alpha*gate; e = exp(-z); s = 1/(1+e);
out = (gate*s) * (up+1). ``exp`` is the only step whose last bit may differ between NumPy and a GPU.

Gate modes of the stage-1 output columns (length 2*I): SEPARATED: columns [0, I) are gate and
[I, 2I) up; INTERLEAVE: even columns gate, odd columns up.
"""

from __future__ import annotations

import numpy as np

from emulation.validate import check_finite_number

__all__ = ["SWIGLU_ALPHA", "SWIGLU_LIMIT", "GATED_ACTIVATIONS", "split_gate_up", "gated_activation",
           "check_swiglu_params"]

SWIGLU_ALPHA = 1.702
SWIGLU_LIMIT = 7.0
GATED_ACTIVATIONS = ("swiglu", "silu")  # what the reference computes (the selector also knows gelu's rule)


def check_swiglu_params(alpha, limit) -> tuple[float, float]:
    """``(alpha, limit)`` as floats: any finite alpha; a finite ``limit >= 0`` (a negative one would make
    the clamp's interval empty). ValueError naming the argument otherwise. Reference and kernels both call it."""
    alpha, limit = check_finite_number(alpha, "alpha"), check_finite_number(limit, "limit")
    if limit < 0:
        raise ValueError(f"limit={limit!r} is not valid; expected a finite number >= 0 (the clamp is [-limit, limit])")
    return alpha, limit


def split_gate_up(x: np.ndarray, gate_mode: str) -> tuple[np.ndarray, np.ndarray]:
    """Split stage-1 outputs [..., 2I] into (gate, up) [..., I] according to ``gate_mode``."""
    if gate_mode == "separated":
        half = x.shape[-1] // 2
        return x[..., :half], x[..., half:]
    if gate_mode == "interleave":
        return x[..., 0::2], x[..., 1::2]
    raise ValueError(f"gate_mode={gate_mode!r} is not valid; expected one of ['separated', 'interleave']")


def gated_activation(x: np.ndarray, *, activation: str, gate_mode: str, alpha: float = SWIGLU_ALPHA,
                     limit: float = SWIGLU_LIMIT) -> np.ndarray:
    """Stage-1 outputs [..., 2I] -> activations [..., I], in the dtype of ``x`` (float32 or float64)."""
    dt = x.dtype.type
    gate, up = split_gate_up(x, gate_mode)
    one = dt(1.0)
    with np.errstate(over="ignore"):
        if activation == "swiglu":
            gate = np.minimum(gate, dt(limit))
            up = np.clip(up, dt(-limit), dt(limit))
            s = one / (one + np.exp(-(dt(alpha) * gate)))
            return ((gate * s) * (up + one)).astype(dt)
        if activation == "silu":
            s = one / (one + np.exp(-gate))
            return ((gate * s) * up).astype(dt)
    raise ValueError(f"activation={activation!r} is not supported by the reference; expected 'swiglu' or 'silu'")
