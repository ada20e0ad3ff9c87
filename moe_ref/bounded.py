"""The reference, the float64 ideal and the kernel bound of one layer call in one pass, expert by
expert: what a conformance check needs, in memory that does not grow with the layer.

``moe_reference`` + ``kernel_tolerance`` keep a trace of every pair's intermediates ([P, 2I], [P, I]
and [P, H] arrays) and the dequantized weights of every touched expert; at a real model's shapes
(DeepSeek-V3: E=256, H=7168, I=2048, top-8, M=4096) that is tens of GB. Here each expert's pairs go
through both stages, and their bound is added into the [M, H] bound at once; only the stage-2 rows
[P, H] are kept, for the slot-ordered sum. The products run where ``device`` says (``moe_ref.products``:
NumPy, or a GPU's float64 GEMMs); the result equals ``moe_reference``'s and ``kernel_tolerance``'s
(tested, host and device).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

import emulation as em

from .products import products_for
from .reference import add_rows, forward, prepare_call
from .tolerance import expert_bound, finish_bound
from .weights import DEQUANT_CACHE_BYTES

__all__ = ["BoundedReference", "moe_reference_bounded", "reference_bytes"]


@dataclass(frozen=True)
class BoundedReference:
    out: np.ndarray  # [M, H] the emulated path's bf16 output values (float32)
    ideal: np.ndarray  # [M, H] float64 ideal
    bound: np.ndarray  # [M, H] float64 elementwise bound on |kernel - out| (moe_ref.tolerance)


def moe_reference_bounded(hidden, w1, w1_scale, w2, w2_scale, topk_weights, topk_ids, *, act_dtype: str,
                          mma_k: int | None = None, device=None, **options) -> BoundedReference:
    """``moe_reference(..., act_dtype)``, the ideal ``moe_reference(..., act_dtype=None)`` and
    ``kernel_tolerance`` of the emulated run (``mma_k`` its accumulation model), without a trace.

    ``options``: ``moe_reference``'s keywords (bias1, bias2, expert_mask, ``spec`` or the fields of
    :class:`moe_ref.MoESpec`). ``device``: None or "cpu" for NumPy, else a torch device
    for the products (the elementwise steps stay NumPy's: the emulation is the contract)."""
    if act_dtype is None:
        raise ValueError("act_dtype: expected an emulated path ('bf16', 'fp4x2', 'fp8'); the ideal comes with it")
    call = prepare_call(hidden, w1, w1_scale, w2, w2_scale, topk_weights, topk_ids, act_dtype=act_dtype, **options)
    products = products_for(call.weights, device)
    tw = call.topk_weights.astype(np.float64)
    bound = np.zeros((call.x.shape[0], call.weights.H))

    def add_bound(e, rows, a_rows, g, h, hq, y):
        tokens = call.tokens[rows]
        add_rows(bound, tokens, expert_bound(products, e, a_rows, g, h, hq, y, tw[tokens, call.slots[rows]],
                                                 act_dtype=act_dtype, spec=call.spec, mma_k=mma_k))

    _, out_f32, _ = forward(call, act_dtype, products, add_bound)
    bound = finish_bound(bound, out_f32, call.topk_ids.shape[1])
    out = em.round_to_bf16(out_f32)
    del out_f32
    _, ideal, _ = forward(call, None, products)
    return BoundedReference(out, ideal, bound)


def reference_bytes(M: int, E: int, H: int, I: int, topk: int, *, device: bool,  # noqa: E741
                    frozen_weights: bool = False) -> int:
    """An upper estimate of the peak host bytes of one :func:`moe_reference_bounded` call beyond its
    inputs, its first on a layer (measured against tracemalloc: tests/moe_ref/test_bounded.py): the
    [P, H] fp32 stage-2 rows and the [M, H] results; the layer's copy of its packed weights (unless
    ``frozen_weights``: read-only arrays owning their memory, used in place) and its per-row bit ranges; on the host one expert's float64 weight matrices
    in their three forms, its pairs' intermediates, and the dequantized experts the layer keeps for the
    next reference (``DEQUANT_CACHE_BYTES``, one expert past it at most)."""
    P = M * topk
    rows = P * H * 4 + 5 * M * H * 8
    layer_copy = 0 if frozen_weights else E * I * H * 51 // 32  # w1 I*H, w1_scale I*H/16, w2 I*H/2, w2_scale I*H/32 bytes per expert
    bit_ranges = E * (2 * I + H) * 2 * 8  # (low, high) per row, int64 after the where
    if device:
        return rows + layer_copy + bit_ranges
    per_expert_pairs = min(P, max(1, -(-P // E)) * 4) * (2 * I + H) * 8 * 8  # skewed routing: 4x the mean
    weights = 3 * (2 * I * H + H * I) * 8 + 2 * (2 * I * H + H * I) * 4
    dequant_memo = min(E * 3 * I * H * 4, DEQUANT_CACHE_BYTES + 2 * I * H * 4)
    return rows + layer_copy + bit_ranges + per_expert_pairs + weights + dequant_memo
