"""The reference contract read pair by pair (moe_ref.reference's docstring, step by step): one loop over
(token, slot) in token-major order, with the dot product given (exact rationals, or the module's exact
fp32 matmul), shared by the reference's tests."""

from __future__ import annotations

from fractions import Fraction

import numpy as np

import emulation as em
from moe_ref import MoESpec, gated_activation
from moe_ref.exact import exact_matmul_f32, round_scaled_int_to_f32
from moe_ref.paths import activation_path


def fraction_dot_f32(a, b) -> np.float32:
    """sum(a * b) in exact rationals, rounded once to fp32 (60 guard bits and a sticky bit)."""
    s = sum((Fraction(float(x)) * Fraction(float(y)) for x, y in zip(a, b)), Fraction(0))
    if s == 0:
        return np.float32(0)
    num, den = s.numerator, s.denominator
    q = -(den.bit_length() + 60)
    n = (abs(num) << -q) // den  # truncated; exact enough: 60 guard bits, sticky below
    if (abs(num) << -q) % den:
        n |= 1
    return round_scaled_int_to_f32(n if num > 0 else -n, q)


def fraction_matmul_f32(a: np.ndarray, w: np.ndarray) -> np.ndarray:
    """a [1, K] @ w [N, K].T with :func:`fraction_dot_f32`: an implementation independent of moe_ref.exact."""
    return np.array([[fraction_dot_f32(a[0], w[j]) for j in range(w.shape[0])]], np.float32)


def _quantize(values, dtype, scale_mode):
    return values if dtype == "fp32" else activation_path(dtype).quantize_values(values, scale_mode)


def naive_pairs(p, act_dtype: str, spec: MoESpec | None = None, mask=None, matmul=exact_matmul_f32):
    """(rows, out_f32): the trace's (stage1, act, act_q, stage2) rows of every live pair and the fp32 sum
    over slots, for problem ``p`` on path ``act_dtype`` under ``spec`` (experts where ``mask`` is 0 skipped)."""
    spec = spec or MoESpec()
    M, H = p.hidden.shape
    rows = {k: [] for k in ("stage1", "act", "act_q", "stage2")}
    out = np.zeros((M, H), np.float32)
    h_dtype = spec.intermediate_dtype or act_dtype
    for t in range(M):
        a_q = _quantize(em.round_to_bf16(p.hidden[t:t + 1].astype(np.float32)), act_dtype, spec.scale_mode)
        for k in range(p.topk_ids.shape[1]):
            e = int(p.topk_ids[t, k])
            if mask is not None and not mask[e]:
                continue
            wt = np.float32(p.topk_weights[t, k])
            if spec.routing_weight_dtype == "bf16":
                wt = em.round_to_bf16(np.float32([wt]))[0]
            g = matmul(a_q, em.dequantize_mxfp4(p.w1[e], p.w1_scale[e]))
            if p.bias1 is not None:
                g = g + p.bias1[e]
            h = gated_activation(g, activation=spec.activation, gate_mode=spec.gate_mode, alpha=spec.alpha,
                                 limit=spec.limit)
            if spec.doweight_stage1:
                h = h * wt
            hq = _quantize(h, h_dtype, spec.scale_mode)
            y = matmul(hq, em.dequantize_mxfp4(p.w2[e], p.w2_scale[e]))
            if p.bias2 is not None:
                y = y + p.bias2[e]
            if not spec.doweight_stage1:
                y = y * wt
            for name, value in zip(rows, (g, h, hq, y)):
                rows[name].append(value[0])
            out[t] = out[t] + (em.round_to_bf16(y[0]) if spec.slot_dtype == "bf16" else y[0])
    return {k: np.array(v, np.float32) for k, v in rows.items()}, out
