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
(hidden taken as given, weights dequantized exactly, no bf16 rounding of the output; the slots
summed in expert order, which float64 makes immaterial).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

import emulation as em
from emulation.validate import check_mask_values

from ._arrays import is_torch, like, real_array, to_numpy
from .activation import gated_activation
from .exact import row_bits
from .paths import ACTIVATION_PATHS, activation_path
from .products import HostProducts
from .spec import MoESpec
from .weights import MoEWeights, _mxfp4_bit_range  # noqa: F401 - re-exported (the layer's weights live there)

__all__ = ["MoEWeights", "quantize_activation", "moe_reference", "MoETrace", "MoECall", "prepare_call", "forward",
           "add_rows"]


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


@dataclass(frozen=True)
class MoECall:
    """The validated inputs and options of one reference call; live pairs (token, slot, expert) in
    token-major order."""

    x: np.ndarray
    weights: MoEWeights
    topk_weights: np.ndarray  # fp32
    topk_ids: np.ndarray  # int64
    bias1: np.ndarray | None
    bias2: np.ndarray | None
    tokens: np.ndarray
    slots: np.ndarray
    experts: np.ndarray
    spec: MoESpec


def _validate_routing(topk_weights, topk_ids, M, E):
    w = real_array(topk_weights, arg="topk_weights")
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
    b = real_array(b, arg=name)
    if b.shape != shape:
        raise ValueError(f"{name}: expected shape {list(shape)}, got {list(b.shape)}")
    return b


def prepare_call(hidden, w1, w1_scale, w2, w2_scale, topk_weights, topk_ids, *, act_dtype, bias1=None, bias2=None,
                 expert_mask=None, spec: MoESpec | None = None, **options) -> MoECall:
    """Every argument of :func:`moe_reference` checked (ValueError/TypeError naming it); ``options``
    (or ``spec``) are the call's :class:`MoESpec`."""
    spec = MoESpec.from_options(spec, **options)
    weights = MoEWeights.from_arrays(w1, w1_scale, w2, w2_scale)
    x = real_array(hidden, arg="hidden")
    if x.ndim != 2 or x.shape[1] != weights.H:
        raise ValueError(f"hidden: expected shape [M, H={weights.H}], got {list(x.shape)}")
    if act_dtype is not None and act_dtype not in ACTIVATION_PATHS:
        raise ValueError(f"act_dtype={act_dtype!r} is not valid; expected None or one of {list(ACTIVATION_PATHS)}")
    M, E, H, I = x.shape[0], weights.E, weights.H, weights.I  # noqa: E741
    tw, ids = _validate_routing(topk_weights, topk_ids, M, E)
    b1 = _bias(bias1, (E, 2 * I), "bias1")
    b2 = _bias(bias2, (E, H), "bias2")
    mask = np.ones(E, bool) if expert_mask is None else check_mask_values(to_numpy(expert_mask, arg="expert_mask"))
    if mask.shape != (E,):
        raise ValueError(f"expert_mask: expected shape [{E}], got {list(mask.shape)}")
    tokens, slots = np.nonzero(mask[ids])  # live pairs, token-major
    return MoECall(x, weights, tw, ids, b1, b2, tokens, slots, ids[tokens, slots], spec)


def add_rows(out: np.ndarray, index: np.ndarray, values: np.ndarray) -> None:
    """``out[index[i]] += values[i]`` for every i, repeated indices included (``np.add.at``, whose
    general path is slow: taken only where an index repeats, e.g. a token routed twice to one expert)."""
    if index.size and np.unique(index).size == index.size:
        out[index] += values
    else:
        np.add.at(out, index, values)


def forward(call: MoECall, act_dtype, products=None, on_expert=None, keep_stages: bool = False):
    """One path of the reference, expert by expert: ``(a_q, out, stages)`` with ``out`` [M, H] the fp32
    slot sum in slot order (the ideal path, ``act_dtype`` None: the float64 sum in expert order, no
    [P, H] rows kept) and ``stages`` (stage1, act, act_q, stage2) [P, .] where ``keep_stages``, else
    (stage2,) (ideal: ()). ``on_expert(e, rows, x, g, h, hq, y)`` sees
    each expert's pairs as they are computed (``rows`` index the live pairs, ``x`` their stage-1 input)."""
    products = products or HostProducts(call.weights)
    x, tokens, slots, experts = call.x, call.tokens, call.slots, call.experts
    M, H, I = x.shape[0], call.weights.H, call.weights.I  # noqa: E741
    spec = call.spec
    b1, b2, scale_mode, doweight_stage1 = call.bias1, call.bias2, spec.scale_mode, spec.doweight_stage1
    h_dtype = spec.intermediate(act_dtype)
    ideal = act_dtype is None
    ft = np.float64 if ideal else np.float32
    a = x.astype(np.float64) if ideal else em.round_to_bf16(x.astype(np.float32))
    a_q = a if ideal else quantize_activation(a, act_dtype, scale_mode)
    a_bits = None if ideal else row_bits(a_q)  # per token: its top-k pairs share them
    P = tokens.size
    out = np.zeros((M, H), ft)
    stage2 = None if ideal and not keep_stages else np.zeros((P, H), ft)  # the ideal sums as it goes
    if keep_stages:
        stage1, act, act_q = np.zeros((P, 2 * I), ft), np.zeros((P, I), ft), np.zeros((P, I), ft)
    tw = em.round_to_bf16(call.topk_weights) if spec.routing_weight_dtype == "bf16" and not ideal else call.topk_weights
    wts = tw[tokens, slots].astype(ft)
    for e in np.unique(experts):
        rows = np.flatnonzero(experts == e)
        a_rows = a_q[tokens[rows]]
        g = products.matmul(a_rows, e, "w1") if ideal else products.exact(
            a_rows, e, "w1", (a_bits[0][tokens[rows]], a_bits[1][tokens[rows]]))
        if b1 is not None:
            g = (g + b1[e].astype(ft)).astype(ft)
        h = gated_activation(g.astype(ft), activation=spec.activation, gate_mode=spec.gate_mode, alpha=spec.alpha,
                             limit=spec.limit)
        if doweight_stage1:
            h = (h * wts[rows, None]).astype(ft)
        hq = h if ideal or h_dtype == "fp32" else quantize_activation(h, h_dtype, scale_mode)
        y = products.matmul(hq, e, "w2") if ideal else products.exact(hq, e, "w2")
        if b2 is not None:
            y = (y + b2[e].astype(ft)).astype(ft)
        if not doweight_stage1:
            y = (y * wts[rows, None]).astype(ft)
        if ideal:
            add_rows(out, tokens[rows], y)
        if stage2 is not None:
            stage2[rows] = y
        if keep_stages:
            stage1[rows], act[rows], act_q[rows] = g, h, hq
        if on_expert is not None:
            on_expert(e, rows, a_rows, g, h, hq, y)

    if ideal:
        return a_q, out, ((stage1, act, act_q, stage2) if keep_stages else ())
    summed = em.round_to_bf16(stage2) if spec.slot_dtype == "bf16" else stage2  # the trace keeps fp32
    for k in range(call.topk_ids.shape[1]):  # slot order: ((y_0 + y_1) + y_2) ...
        sel = slots == k
        with np.errstate(over="ignore"):
            out[tokens[sel]] = (out[tokens[sel]] + summed[sel]).astype(ft)
    return a_q, out, ((stage1, act, act_q, stage2) if keep_stages else (stage2,))


def moe_reference(hidden, w1, w1_scale, w2, w2_scale, topk_weights, topk_ids, *, act_dtype, bias1=None, bias2=None,
                  expert_mask=None, return_trace=False, spec: MoESpec | None = None, **options):
    """Reference MoE (see the module docstring for the exact definition).

    The call's options are a :class:`moe_ref.MoESpec` (``spec``) or its fields as keywords (``options``):
    activation ("swiglu", "silu"), gate_mode, alpha, limit, scale_mode, doweight_stage1, and the
    conventions below. ``intermediate_dtype`` (emulated paths only): the quantization of step 4, by
    default the path's own (``act_dtype``); "bf16", "fp4x2", "fp8", or "fp32" (not quantized) model an
    implementation that quantizes its intermediate differently from its input (a diagnosis, not a path).
    ``routing_weight_dtype="bf16"`` rounds the routing weights to bf16 first (as vLLM's triton_kernels
    path does); ``slot_dtype="bf16"`` rounds each slot's stage-2 result to bf16 before the slot sum
    (kernels that write per-pair bf16 rows and reduce them after). Both default to the contract, fp32.

    Returns [M, H]: float64 for the ideal path; bf16 values for the emulated paths (float32 NumPy,
    or a torch.bfloat16 tensor when ``hidden`` is a torch tensor). ``return_trace=True`` returns
    ``(out, MoETrace)`` for the emulated paths. (Reference, ideal and bound of a real model's layer in
    bounded memory, on a GPU where there is one: ``moe_ref.bounded``.)
    """
    torch_out = is_torch(hidden)
    call = prepare_call(hidden, w1, w1_scale, w2, w2_scale, topk_weights, topk_ids, act_dtype=act_dtype, bias1=bias1,
                        bias2=bias2, expert_mask=expert_mask, spec=spec, **options)
    keep = return_trace and act_dtype is not None
    a_q, out, stages = forward(call, act_dtype, keep_stages=keep)
    if act_dtype is None:
        return like(out, torch_out)
    out_bf16 = em.round_to_bf16(out)
    result = like(out_bf16, torch_out, "bfloat16")
    if keep:
        return result, MoETrace(np.stack([call.tokens, call.slots], 1), a_q, *stages, out, out_bf16)
    return result
