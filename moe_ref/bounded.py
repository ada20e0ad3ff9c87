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


def reference_bytes(M: int, E: int, H: int, I: int, topk: int, *, device: bool) -> int:  # noqa: E741
    """About the peak host bytes of one :func:`moe_reference_bounded` call beyond its inputs: the
    [P, H] fp32 stage-2 rows, the [M, H] results, and on the host one expert's float64 weight matrices
    in their three forms plus its pairs' intermediates."""
    P = M * topk
    rows = P * H * 4 + 5 * M * H * 8
    per_expert_pairs = min(P, max(1, -(-P // E)) * 4) * (2 * I + H) * 8 * 8  # skewed routing: 4x the mean
    weights = 0 if device else 3 * (2 * I * H + H * I) * 8 + 2 * (2 * I * H + H * I) * 4
    return rows + per_expert_pairs + weights
