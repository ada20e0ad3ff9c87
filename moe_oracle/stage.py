"""Checking one MoE GEMM stage (no activation): for every routed pair (t, k),
``out[t, k] = bf16(fp32(hidden[t] . dequant(w[e]).T) [* topk_weights[t, k]])`` with e = topk_ids[t, k].

Contract: ``moe_gemm_stage(hidden bf16 [M, K], w uint8 [E, N, K/2], w_scale uint8 [E, N, K/32],
topk_weights fp32 [M, topk], topk_ids int32 [M, topk], *, mul_routed_weight, out=None) -> bf16 [M, topk, N]``
(``out``, when it declares it, is the buffer it must write; the check hands it one filled with NaN,
then one filled with zeros: a result that differs read memory it must not, an element still NaN was
never written). The bound is stage 1's of ``moe_ref.tolerance``, then its bf16 rule: the outputs may
differ only where the fp32 interval ref +- bound holds a bf16 rounding boundary
(``bf16_output_bound``).
"""

from __future__ import annotations

import numpy as np

import emulation as em
from moe_ref import MoEWeights, random_moe_problem
from moe_ref.products import products_for
from moe_ref.tolerance import _accumulation_bound, bf16_output_bound

from ._tensors import Kept
from .compare import margin_of
from .guard import guard_band_check
from .implementation import accepts, call_with
from .interpreter import bf16_explained_by_interpreter

__all__ = ["check_stage"]


def _reference(p, mul_routed_weight: bool, mma_k, device=None):
    M, topk = p.topk_ids.shape
    K, N = p.hidden.shape[1], p.w1.shape[1]
    ref = np.zeros((M, topk, N), np.float32)
    bound = np.zeros((M, topk, N))
    a = em.round_to_bf16(p.hidden)
    # on a GPU its float64 GEMMs (equal results: moe_ref.products); the host's took minutes at DeepSeek-V3's shape
    products = products_for(MoEWeights.from_arrays(p.w1, p.w1_scale, p.w2, p.w2_scale), device)
    for e in np.unique(p.topk_ids):
        t, k = np.nonzero(p.topk_ids == e)
        g = products.exact(a[t], e, "w1")
        b = _accumulation_bound(products, np.abs(a[t]).astype(np.float64), e, "w1", K, mma_k) + 2.0**-24 * np.abs(g)
        if mul_routed_weight:
            wt = p.topk_weights[t, k][:, None]
            g = (g * wt).astype(np.float32)
            b = b * wt + 2.0**-24 * np.abs(g)
        ref[t, k], bound[t, k] = g, b
    return em.round_to_bf16(ref), bf16_output_bound(ref, bound), ref, bound


def check_stage(fn, *, M: int, E: int, K: int, N: int, topk: int, mul_routed_weight: bool, seed: int,
                device="cpu", guard_bands: bool = True) -> dict:
    """One stage case -> a row: bytes-free (bf16 output) comparison with margin, NaN (never written)
    count, memory sensitivity, reads outside the inputs (``moe_oracle.guard``), and a diagnosis."""
    import torch

    p = random_moe_problem(np.random.default_rng([seed, M, E, K, N, topk]), M=M, E=E, H=K, I=N // 2, topk=topk)
    ref, bound, ref_f32, fp32_bound = _reference(p, mul_routed_weight, 16 if str(device) != "cpu" else None,
                                                device)
    pt = p.to_torch(device)
    inputs = dict(zip(("hidden", "w", "w_scale", "topk_weights", "topk_ids"),
                      (pt.hidden, pt.w1, pt.w1_scale, pt.topk_weights, pt.topk_ids)))

    def run(args, fill=float("nan")):
        kw = {"mul_routed_weight": mul_routed_weight}
        if accepts(fn, "out"):
            kw["out"] = torch.full((M, topk, N), fill, dtype=torch.bfloat16, device=device)
        res = call_with(fn, *args.values(), **kw)
        return res.detach().float().cpu().numpy().astype(np.float64)

    kept = Kept(inputs)  # put back after each run: a write run twice may undo itself
    got = run(inputs)
    kept.put_back()
    got_zeroed = run(inputs, 0.0)
    kept.put_back()
    if got.shape != ref.shape:
        raise ValueError(f"moe_gemm_stage returned shape {list(got.shape)}, expected {list(ref.shape)}")
    err = np.abs(got - ref)
    margin = margin_of(err, bound)
    # a NaN is unwritten only if the zero-filled buffer left a number there; NaN in both runs was computed
    nan_got, nan_zeroed = np.isnan(got), np.isnan(got_zeroed)
    unwritten = int((nan_got & ~nan_zeroed).sum()) if accepts(fn, "out") else 0
    computed_nan = int((nan_got & (nan_zeroed | (not accepts(fn, "out"))) & ~np.isnan(ref)).sum())
    changed = int(((got != got_zeroed) & ~nan_got).sum())  # NaN in the NaN-filled run: unwritten, or NaN in both
    notes = []
    if unwritten:
        notes.append(f"{unwritten} of {got.size} outputs never written (NaN from the poisoned buffer)")
    if computed_nan:
        notes.append(f"{computed_nan} of {got.size} outputs are NaN where the reference is finite"
                     + (" (NaN with a zero-filled buffer too: computed, not unwritten)" if accepts(fn, "out") else ""))
    if changed:
        notes.append(f"{changed} outputs change with the buffer's prior contents")
    if kept.written:
        notes.append(f"it wrote to its inputs: {', '.join(kept.written)}")
    outside = guard_band_check(run, inputs, got) if guard_bands and got.shape == ref.shape else []
    notes += outside
    read_outside = any(n.startswith("reads outside") for n in outside)
    if margin > 1 and not unwritten:
        alt, alt_bound, _, _ = _reference(p, not mul_routed_weight, 16 if str(device) != "cpu" else None, device)
        if margin_of(np.abs(got - alt), alt_bound) <= 1:
            notes.append(f"matches the reference with mul_routed_weight={not mul_routed_weight}")
    why = None if unwritten else bf16_explained_by_interpreter(ref_f32, fp32_bound, got, ~(err <= bound))
    if why:
        notes.append(why)
    ok = margin <= 1 and not unwritten and not changed and not read_outside and not kept.written
    notes.insert(0, f"within the bound (margin {margin:.3g})" if margin <= 1 else f"outside the bound (margin {margin:.3g})")
    verdict = "PASS" if ok else "INTERP" if why and not changed and not read_outside and not kept.written else "FAIL"
    return dict(M=M, E=E, K=K, N=N, topk=topk, mul_routed_weight=mul_routed_weight, seed=seed,
                max_err=float(np.nanmax(err)) if not np.all(np.isnan(err)) else float("nan"), margin=margin,
                verdict=verdict, diagnosis="; ".join(notes))
