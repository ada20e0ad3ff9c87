"""The reference MoE: float64 ideal, and the emulated production path the kernels must match.

Layouts (public): hidden [M, H] bf16 data; w1 [E, 2I, H/2] uint8 fp4x2 packed along H with
w1_scale [E, 2I, H/32] e8m0; w2 [E, H, I/2] with w2_scale [E, H, I/32]; topk_weights [M, topk]
fp32; topk_ids [M, topk] int; optional bias1 [E, 2I], bias2 [E, H] fp32.

The emulated path (``act_dtype`` in "bf16", "fp4x2", "fp8") - the contract:

1. ``a = bf16(hidden)`` (hidden rounded to bf16, ties to even, if it is not bf16 already), then the
   stage-1 input ``a_q = Q(a)`` along H: bf16 as is; fp4x2: MXFP4 per token (``scale_mode``);
   fp8: MXFP8 e4m3fn per token (``scale_mode``). Dequantized exactly.
2. For every (token t, slot k) whose expert e = topk_ids[t, k] is in ``expert_mask``:
   ``g = fp32(a_q[t] . dequant(w1[e]).T)`` - dot products exact, rounded once to fp32;
   ``g = fp32(g + bias1[e])``.
3. ``h = gated_activation(g)`` in fp32 (``moe_ref.activation``); with ``doweight_stage1``
   ``h = fp32(h * topk_weights[t, k])``.
4. ``h_q = Q(h)`` along I, the same quantization as step 1 (bf16: rounded to bf16).
5. ``y = fp32(h_q . dequant(w2[e]).T)`` exact then rounded once; ``y = fp32(y + bias2[e])``;
   without ``doweight_stage1`` ``y = fp32(y * topk_weights[t, k])``.
6. ``out[t] = bf16(((y_0 + y_1) + y_2) + ...)``: the slots summed in fp32 in slot order, masked slots
   skipped (a token with no live slot gets +0), then rounded to bf16.

Expert mask (expert parallelism): ``expert_mask[e] == 0`` means expert e is not on this rank; its
slots contribute nothing (no renormalisation of the other weights).

The ideal path (``act_dtype=None``): the same steps in float64 with no quantization of activations
(hidden taken as given, weights dequantized exactly, no bf16 rounding of the output).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np

import emulation as em
from emulation.validate import check_bool, check_finite_number, check_mask_values

from ._arrays import is_torch, like, to_numpy
from .activation import SWIGLU_ALPHA, SWIGLU_LIMIT, gated_activation
from .exact import exact_matmul_f32
from .paths import activation_path
from .selector import ACT_DTYPES, ACTIVATIONS, GATE_MODES

__all__ = ["MoEWeights", "quantize_activation", "moe_reference", "MoETrace"]


@dataclass(frozen=True)
class MoEWeights:
    """Validated weights: packed fp4x2 + e8m0 for both stages, and the sizes they imply.

    Per-expert dequantized matrices and bit ranges are computed once per instance (read-only arrays),
    and ``from_arrays`` returns the same instance for weights of the same content (the last
    ``_CACHE_SIZE`` sets, keyed by a digest of their bytes): a report's many references on one
    layer's weights dequantize them once.
    """

    w1: np.ndarray
    w1_scale: np.ndarray
    w2: np.ndarray
    w2_scale: np.ndarray
    E: int
    H: int
    I: int  # noqa: E741 - the intermediate size, as in every MoE paper
    _memo: dict = field(default_factory=dict, compare=False, repr=False)

    def _cached(self, key, compute):
        if key not in self._memo:
            value = compute()
            for arr in value if isinstance(value, tuple) else (value,):
                arr.setflags(write=False)
            self._memo[key] = value
        return self._memo[key]

    @classmethod
    def from_arrays(cls, w1, w1_scale, w2, w2_scale) -> MoEWeights:
        w1, w1_scale = to_numpy(w1, arg="w1"), to_numpy(w1_scale, arg="w1_scale")
        w2, w2_scale = to_numpy(w2, arg="w2"), to_numpy(w2_scale, arg="w2_scale")
        for name, arr in (("w1", w1), ("w1_scale", w1_scale), ("w2", w2), ("w2_scale", w2_scale)):
            if arr.dtype != np.uint8 or arr.ndim != 3:
                raise ValueError(f"{name}: expected a 3-D uint8 array, got {arr.dtype} with shape {arr.shape}")
        E, two_i, h_half = w1.shape
        H, I = 2 * h_half, two_i // 2  # noqa: E741
        if two_i % 2 or H % 32 or I % 32:
            raise ValueError(f"w1: shape {w1.shape} must be [E, 2*I, H/2] with H and I multiples of 32")
        expect = {"w1_scale": (E, 2 * I, H // 32), "w2": (E, H, I // 2), "w2_scale": (E, H, I // 32)}
        for name, arr in (("w1_scale", w1_scale), ("w2", w2), ("w2_scale", w2_scale)):
            if arr.shape != expect[name]:
                raise ValueError(f"{name}: expected shape {list(expect[name])} (from w1 {list(w1.shape)}), got {list(arr.shape)}")
        digest = hashlib.blake2b(digest_size=16)
        for arr in (w1, w1_scale, w2, w2_scale):
            digest.update(repr(arr.shape).encode())
            digest.update(np.ascontiguousarray(arr).data)
        key = digest.digest()
        if key in _WEIGHTS_CACHE:
            _WEIGHTS_CACHE.move_to_end(key)
            return _WEIGHTS_CACHE[key]
        weights = cls(w1.copy(), w1_scale.copy(), w2.copy(), w2_scale.copy(), E, H, I)
        _WEIGHTS_CACHE[key] = weights
        while len(_WEIGHTS_CACHE) > _CACHE_SIZE:
            _WEIGHTS_CACHE.popitem(last=False)
        return weights

    def dequant_w1(self, e: int) -> np.ndarray:
        return self._cached(("w1", e), lambda: em.dequantize_mxfp4(self.w1[e], self.w1_scale[e]))

    def dequant_w2(self, e: int) -> np.ndarray:
        return self._cached(("w2", e), lambda: em.dequantize_mxfp4(self.w2[e], self.w2_scale[e]))

    def bits_w1(self, e: int):
        return self._cached(("bits_w1", e), lambda: _mxfp4_bit_range(self.w1[e], self.w1_scale[e]))

    def bits_w2(self, e: int):
        return self._cached(("bits_w2", e), lambda: _mxfp4_bit_range(self.w2[e], self.w2_scale[e]))


_WEIGHTS_CACHE: OrderedDict = OrderedDict()
_CACHE_SIZE = 1


# Per e2m1 magnitude code: exponent of the lowest set bit and highest exponent + 1 (0 has none).
_E2M1_LOW = np.array([127, -1, 0, -1, 1, 0, 2, 1] * 2, np.int32)
_E2M1_HIGH = np.array([-128, 0, 1, 1, 2, 2, 3, 3] * 2, np.int32)


def _mxfp4_bit_range(packed: np.ndarray, scale_e8m0: np.ndarray):
    """Per row of an MXFP4 matrix: (lowest set bit, highest exponent + 1) of its nonzero values, from
    the codes and scales (``moe_ref.exact``'s bit range without dequantizing)."""
    codes = em.unpack_fp4x2(packed)
    n, k = codes.shape
    s = scale_e8m0.astype(np.int32) - 127
    low = (_E2M1_LOW[codes].reshape(n, k // 32, 32).min(-1) + s).min(-1)
    high = (_E2M1_HIGH[codes].reshape(n, k // 32, 32).max(-1) + s).max(-1)
    big, small = np.iinfo(np.int32).max, np.iinfo(np.int32).min
    nonzero_row = (codes & 7).any(-1)
    return np.where(nonzero_row, low, big), np.where(nonzero_row, high, small)


def quantize_activation(x: np.ndarray, act_dtype: str, scale_mode="round_up") -> np.ndarray:
    """Q of the contract: fp32 rows -> their quantized values (float32), along the last axis."""
    return activation_path(act_dtype).quantize_values(x, scale_mode)


@dataclass(frozen=True)
class MoETrace:
    """Intermediates of one emulated run (pairs are the live (token, slot) pairs in token-major order)."""

    pairs: np.ndarray  # [P, 2] (token, slot)
    a_q: np.ndarray  # [M, H] stage-1 input values after quantization
    stage1: np.ndarray  # [P, 2I] fp32 after bias1
    act: np.ndarray  # [P, I] fp32 after the activation (and routing weight with doweight_stage1)
    act_q: np.ndarray  # [P, I] stage-2 input values after quantization
    stage2: np.ndarray  # [P, H] fp32 after bias2 and routing weight (if applied at stage 2)
    out_f32: np.ndarray  # [M, H] fp32 sum over slots
    out: np.ndarray  # [M, H] bf16 values (float32)


def _validate_routing(topk_weights, topk_ids, M, E):
    w = to_numpy(topk_weights, arg="topk_weights")
    ids = to_numpy(topk_ids, arg="topk_ids")
    if ids.dtype.kind not in "iu":
        raise TypeError(f"topk_ids: expected an integer array, got dtype {ids.dtype}")
    if ids.ndim != 2 or ids.shape[0] != M:
        raise ValueError(f"topk_ids: expected shape [M={M}, topk], got {list(ids.shape)}")
    if w.shape != ids.shape:
        raise ValueError(f"topk_weights: expected shape {list(ids.shape)} like topk_ids, got {list(w.shape)}")
    if ids.size and (ids.min() < 0 or ids.max() >= E):
        raise ValueError(f"topk_ids: expert ids must lie in [0, {E - 1}]")
    return w.astype(np.float32), ids.astype(np.int64)


def _bias(b, shape, name):
    if b is None:
        return None
    b = to_numpy(b, arg=name)
    if b.shape != shape:
        raise ValueError(f"{name}: expected shape {list(shape)}, got {list(b.shape)}")
    return b


def moe_reference(hidden, w1, w1_scale, w2, w2_scale, topk_weights, topk_ids, *, act_dtype,
                  activation="swiglu", gate_mode="separated", alpha=SWIGLU_ALPHA, limit=SWIGLU_LIMIT,
                  bias1=None, bias2=None, doweight_stage1=False, expert_mask=None, scale_mode="round_up",
                  intermediate_dtype=None, routing_weight_dtype="fp32", slot_dtype="fp32", return_trace=False):
    """Reference MoE (see the module docstring for the exact definition).

    ``intermediate_dtype`` (emulated paths only): the quantization of step 4, by default the path's
    own (``act_dtype``); "bf16", "fp4x2", "fp8", or "fp32" (not quantized) model an implementation
    that quantizes its intermediate differently from its input (a diagnosis, not a path).
    ``routing_weight_dtype="bf16"`` rounds the routing weights to bf16 first (as vLLM's triton_kernels
    path does); ``slot_dtype="bf16"`` rounds each slot's stage-2 result to bf16 before the slot sum
    (kernels that write per-pair bf16 rows and reduce them after). Both default to the contract, fp32.

    Returns [M, H]: float64 for the ideal path; bf16 values for the emulated paths (float32 NumPy,
    or a torch.bfloat16 tensor when ``hidden`` is a torch tensor). ``return_trace=True`` returns
    ``(out, MoETrace)`` for the emulated paths.
    """
    torch_out = is_torch(hidden)
    weights = MoEWeights.from_arrays(w1, w1_scale, w2, w2_scale)
    x = to_numpy(hidden, arg="hidden")
    if x.ndim != 2 or x.shape[1] != weights.H:
        raise ValueError(f"hidden: expected shape [M, H={weights.H}], got {list(x.shape)}")
    if act_dtype is not None and act_dtype not in ACT_DTYPES:
        raise ValueError(f"act_dtype={act_dtype!r} is not valid; expected None or one of {list(ACT_DTYPES)}")
    if activation not in ACTIVATIONS or gate_mode not in GATE_MODES:
        raise ValueError(f"activation={activation!r}/gate_mode={gate_mode!r}: expected {list(ACTIVATIONS)} / {list(GATE_MODES)}")
    M, E, H, I = x.shape[0], weights.E, weights.H, weights.I  # noqa: E741
    tw, ids = _validate_routing(topk_weights, topk_ids, M, E)
    b1 = _bias(bias1, (E, 2 * I), "bias1")
    b2 = _bias(bias2, (E, H), "bias2")
    mask = np.ones(E, bool) if expert_mask is None else check_mask_values(to_numpy(expert_mask, arg="expert_mask"))
    check_bool(doweight_stage1, "doweight_stage1")
    alpha, limit = check_finite_number(alpha, "alpha"), check_finite_number(limit, "limit")
    if mask.shape != (E,):
        raise ValueError(f"expert_mask: expected shape [{E}], got {list(mask.shape)}")
    em.ScaleMode.parse(scale_mode)
    h_dtype = act_dtype if intermediate_dtype is None else intermediate_dtype
    if h_dtype is not None and h_dtype not in (*ACT_DTYPES, "fp32"):
        raise ValueError(f"intermediate_dtype={intermediate_dtype!r} is not valid; expected None, 'fp32' or one of "
                         f"{list(ACT_DTYPES)}")

    ideal = act_dtype is None
    ft = np.float64 if ideal else np.float32
    a = x.astype(np.float64) if ideal else em.round_to_bf16(x.astype(np.float32))
    a_q = a if ideal else quantize_activation(a, act_dtype, scale_mode)

    tokens, slots = np.nonzero(mask[ids])  # live pairs, token-major
    experts = ids[tokens, slots]
    P = tokens.size
    stage1 = np.zeros((P, 2 * I), ft)
    stage2 = np.zeros((P, H), ft)
    act = np.zeros((P, I), ft)
    act_q = np.zeros((P, I), ft)
    for name, value in (("routing_weight_dtype", routing_weight_dtype), ("slot_dtype", slot_dtype)):
        if value not in ("fp32", "bf16"):
            raise ValueError(f"{name}={value!r} is not valid; expected 'fp32' or 'bf16'")
    if routing_weight_dtype == "bf16" and not ideal:
        tw = em.round_to_bf16(tw)
    wts = tw[tokens, slots].astype(ft)
    for e in np.unique(experts):
        rows = np.flatnonzero(experts == e)
        w1e, w2e = weights.dequant_w1(e), weights.dequant_w2(e)
        g = a_q[tokens[rows]] @ w1e.T.astype(np.float64) if ideal else exact_matmul_f32(a_q[tokens[rows]], w1e, weights.bits_w1(e))
        if b1 is not None:
            g = (g + b1[e].astype(ft)).astype(ft)
        h = gated_activation(g.astype(ft), activation=activation, gate_mode=gate_mode, alpha=alpha, limit=limit)
        if doweight_stage1:
            h = (h * wts[rows, None]).astype(ft)
        hq = h if ideal or h_dtype == "fp32" else quantize_activation(h, h_dtype, scale_mode)
        y = hq @ w2e.T.astype(np.float64) if ideal else exact_matmul_f32(hq, w2e, weights.bits_w2(e))
        if b2 is not None:
            y = (y + b2[e].astype(ft)).astype(ft)
        if not doweight_stage1:
            y = (y * wts[rows, None]).astype(ft)
        stage1[rows], act[rows], act_q[rows], stage2[rows] = g, h, hq, y

    out = np.zeros((M, H), ft)
    summed = em.round_to_bf16(stage2) if slot_dtype == "bf16" and not ideal else stage2  # the trace keeps fp32
    for k in range(ids.shape[1]):  # slot order: ((y_0 + y_1) + y_2) ...
        sel = slots == k
        with np.errstate(over="ignore"):
            out[tokens[sel]] = (out[tokens[sel]] + summed[sel]).astype(ft)
    if ideal:
        return like(out, torch_out)
    out_bf16 = em.round_to_bf16(out)
    result = like(out_bf16, torch_out, "bfloat16")
    if return_trace:
        trace = MoETrace(np.stack([tokens, slots], 1), a_q, stage1, act, act_q, stage2, out, out_bf16)
        return result, trace
    return result
