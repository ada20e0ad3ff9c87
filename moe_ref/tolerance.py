"""How far a kernel may be from the emulated reference: accumulation order only, derived.

The reference (``moe_ref.reference``) computes every dot product exactly and rounds once. A kernel
accumulates K products in fp32 in its own order (tensor cores may truncate partial sums), so, with
u = 2^-23 (one ulp: covers round-to-nearest and truncation):

1. stage 1:  |g_k - g| <= K u / (1 - K u) * sum_i |a_i w_i|  +  2^-24 |g|   (=: B_g)
2. activation (fp32; the kernel's exp and the reference's may differ by a few ulp):
   |h_k - h| <= 1.1 B_gate (|up + 1| + B_up) + S_up B_up + 2^-20 |h|        (=: B_h)
   (mean value theorem with the sup of SwiGLU's partial derivatives over the box gate +- B_gate,
   up +- B_up: d/dgate = (s(z) + z s(z)(1 - s(z))) (up + 1) with z = alpha g, and |s(z) + z s(z)(1 -
   s(z))| <= 1.0999 for every real z, so for every alpha; d/dup = g s(alpha g), whose sup S_up over
   the clamped gate interval is taken at its ends or at its one stationary point g* = z* / alpha,
   z* = -1.27846 (``_sup_gate_silu``): for alpha > 0 at most max(limit, 0.2785 / alpha), for alpha <= 0
   it grows with |gate|. Clamps are 1-Lipschitz; SiLU-gated uses 1.1 |up| and |gate| + B_gate
   likewise), times the routing weight when it is applied in stage 1.
3. stage-2 input quantization: Q(h_k) == Q(h) unless h is within B_h of a rounding boundary of its
   element or its block's amax within B_h of a scale boundary; there the two may differ by one
   step of the grid at the larger possible scale (D_j); elsewhere D_j = 0. This is checked per element
   with the emulation itself (quantize h +- B_h).
4. stage 2:  |y_k - y| <= sum_j |w2_j| D_j + K u / (1 - K u) * sum_j |h_q,j w2_j| + 2^-24 |y|, times
   the routing weight.
5. output: the fp32 slot sum adds 2^-24 per addition; then the bf16 outputs may differ only where the
   fp32 interval ref +- bound holds a bf16 rounding boundary, by the distance between the roundings of
   its ends (``bf16_output_bound``; elsewhere they must be equal).
The result is an elementwise bound on |out_kernel - out_reference|.

Accumulation term: the worst case n u sum|a_i w_i| (n roundings of relative size u) grows like K
and is far above what any real order produces for K in the thousands. We use the probabilistic
bound of Higham and Mary (SIAM J. Sci. Comput. 2019): with rounding errors independent and of mean
zero, |error| <= lambda sqrt(n) u sqrt(sum (a_i w_i)^2) fails with probability below
2 exp(-lambda^2 / 2) per output; lambda = 7 gives < 5e-11. The smaller of the two bounds is used.

``mma_k``: on tensor cores each MMA step adds ``mma_k`` exact products (bf16 x bf16) to the fp32
accumulator with one rounding (at most 2 ulp: alignment truncation), so a K-long dot sees
ceil(K / mma_k) + log2(mma_k) roundings of 2^-22 instead of K roundings of 2^-23 (``mma_k=None``:
any summation order, the worst case).
"""

from __future__ import annotations

import numpy as np

import emulation as em

from .activation import split_gate_up
from .paths import activation_path
from .products import HostProducts
from .reference import MoETrace, MoEWeights, add_rows, quantize_activation
from .spec import MoESpec

__all__ = ["kernel_tolerance", "expert_bound", "activation_bound", "finish_bound", "bf16_output_bound", "bf16_ulp", "U_ACC"]

U_ACC = 2.0**-23


LAMBDA = 7.0


def _accumulation_bound(products, a: np.ndarray, e: int, which: str, k: int, mma_k: int | None) -> np.ndarray:
    """min(worst case, probabilistic) bound on the fp32 accumulation error of |a| @ |w_e|.T (a >= 0)."""
    n, u = (k, U_ACC) if mma_k is None else (-(-k // mma_k) + int(np.log2(mma_k)), 2 * U_ACC)
    worst = n * u / (1 - n * u) * products.matmul(a, e, which, "abs")
    probable = LAMBDA * np.sqrt(n) * u * np.sqrt(products.matmul(a * a, e, which, "square"))
    return np.minimum(worst, probable)


def bf16_ulp(x: np.ndarray) -> np.ndarray:
    mag = np.maximum(np.abs(x.astype(np.float64)), 2.0**-126)
    return np.exp2(np.floor(np.log2(mag)) - 7)


def _flip_step(h: np.ndarray, b_h: np.ndarray, act_dtype: str, scale_mode) -> np.ndarray:
    """D per element: 0 where Q(h') == Q(h) for every |h' - h| <= b_h, else one step at the larger scale
    (act_dtype "fp32": no quantization, D = b_h itself)."""
    if act_dtype == "fp32":
        return b_h
    if act_dtype == "bf16":
        lo, hi = em.round_to_bf16((h - b_h).astype(np.float32)), em.round_to_bf16((h + b_h).astype(np.float32))
        return np.where(lo == hi, 0.0, 2 * bf16_ulp(np.abs(h) + b_h))
    q = quantize_activation(h, act_dtype, scale_mode).astype(np.float64)
    robust = np.ones_like(h, dtype=bool)
    for sign in (-1.0, 1.0):  # elementwise perturbation (scale checked separately below)
        shifted = h + sign * b_h
        robust &= quantize_activation(shifted.astype(np.float32), act_dtype, scale_mode) == q
    # scale robustness: the block's amax moved by up to the block's largest b_h
    fmt = activation_path(act_dtype).element_format
    n, cols = h.shape
    amax = np.abs(h).reshape(n, cols // 32, 32).max(-1)
    b_blk = b_h.reshape(n, cols // 32, 32).max(-1)
    s_lo = em.mx_scale_e8m0(np.maximum(amax - b_blk, 0).astype(np.float32), fmt, scale_mode)
    s_hi = em.mx_scale_e8m0((amax + b_blk).astype(np.float32), fmt, scale_mode)
    robust &= np.repeat(s_lo == s_hi, 32, axis=1)
    f = em.get_format(fmt)
    scale = em.decode(s_hi, "e8m0").astype(np.float64)
    step = np.repeat(scale, 32, axis=1) * np.exp2(
        np.maximum(np.floor(np.log2(np.maximum(np.abs(h) / np.repeat(scale, 32, axis=1), 2.0**-30))), f.emin)
        - f.man_bits)
    return np.where(robust, 0.0, 2 * step + 2 * b_h)


_Z_STAR = -1.2784645427610738  # the root of s(z) + z s(z)(1 - s(z)): where z s(z) is smallest


def _sup_gate_silu(lo: np.ndarray, hi: np.ndarray, alpha: float) -> np.ndarray:
    """sup |g s(alpha g)| over g in [lo, hi] elementwise (s the logistic sigmoid): the ends, and the
    stationary point g* = z* / alpha where it lies inside (g s(alpha g) has no other)."""
    def f(g):
        with np.errstate(over="ignore"):
            return np.abs(g / (1.0 + np.exp(-alpha * g)))

    best = np.maximum(f(lo), f(hi))
    if alpha != 0:
        g_star = _Z_STAR / alpha
        best = np.where((lo <= g_star) & (g_star <= hi), np.maximum(best, f(np.float64(g_star))), best)
    return best


def activation_bound(gate, up, b_gate, b_up, spec: MoESpec) -> np.ndarray:
    """Step 2 without its fp32 term: sup |h(gate', up') - h(gate, up)| over |gate' - gate| <= b_gate,
    |up' - up| <= b_up (elementwise, float64), for every alpha and limit a :class:`MoESpec` accepts."""
    if spec.activation == "swiglu":
        limit = spec.limit
        up_c = np.clip(up, -limit, limit)
        s_up = _sup_gate_silu(np.minimum(gate - b_gate, limit), np.minimum(gate + b_gate, limit), spec.alpha)
        return 1.1 * b_gate * (np.abs(up_c + 1) + b_up) + s_up * b_up
    return 1.1 * b_gate * (np.abs(up) + b_up) + (np.abs(gate) + b_gate) * b_up


def expert_bound(products, e: int, a_rows, g, h, hq, y, w_pair, *, act_dtype: str, spec: MoESpec,
                 mma_k: int | None = None) -> np.ndarray:
    """Steps 1-4 for expert e's pairs on the path ``act_dtype``: the bound [n, H] on each slot's stage-2
    result, from the pairs' stage-1 input ``a_rows``, stage-1 result ``g``, activation ``h``, its
    quantization ``hq``, stage-2 result ``y`` and routing weight ``w_pair`` (``products``: ``moe_ref.products``)."""
    H, I = products.weights.H, products.weights.I  # noqa: E741
    a = np.abs(a_rows.astype(np.float64))
    g = g.astype(np.float64)
    b_g = _accumulation_bound(products, a, e, "w1", H, mma_k) + 2.0**-24 * np.abs(g)
    (gate, up), (b_gate, b_up) = split_gate_up(g, spec.gate_mode), split_gate_up(b_g, spec.gate_mode)
    h64 = h.astype(np.float64)
    b_h = activation_bound(gate, up, b_gate, b_up, spec)
    b_h = b_h + 2.0**-20 * np.abs(h64)
    if spec.doweight_stage1:
        b_h = b_h * w_pair[:, None] + 2.0**-24 * np.abs(h64)
    d = _flip_step(h, b_h, spec.intermediate(act_dtype), spec.scale_mode)
    hq = np.abs(hq.astype(np.float64))
    y_abs = np.abs(y.astype(np.float64))
    b_y = products.matmul(d, e, "w2", "abs") + _accumulation_bound(products, hq, e, "w2", I, mma_k) + 2.0**-24 * y_abs
    if not spec.doweight_stage1:
        b_y = b_y * w_pair[:, None] + 2.0**-24 * y_abs
    if spec.slot_dtype == "bf16":  # each slot rounded to bf16 before the sum: its own interval rule
        b_y = bf16_output_bound(y, b_y)
    return b_y


def finish_bound(bound: np.ndarray, out_f32: np.ndarray, topk: int, bf16_output: bool = True) -> np.ndarray:
    """Step 5 on the summed slot bounds [M, H]: the fp32 slot sum's roundings, then the bf16 output's rule."""
    out = np.abs(out_f32.astype(np.float64))
    bound += topk * 2.0**-24 * (out + bound)
    return bf16_output_bound(out_f32, bound) if bf16_output else bound


def kernel_tolerance(trace: MoETrace, weights: MoEWeights, topk_weights, topk_ids, *, act_dtype: str,
                     mma_k: int | None = None, bf16_output: bool = True, spec: MoESpec | None = None,
                     **options) -> np.ndarray:
    """Elementwise bound [M, H] on |kernel - reference| for one emulated run on the path ``act_dtype``
    (see the module docstring); ``spec`` or its fields as keywords (``options``): the run's :class:`MoESpec`.

    ``bf16_output=False``: the bound on the fp32 slot sums instead (step 5 before the bf16 rounding)."""
    spec = MoESpec.from_options(spec, **options)
    tw = np.asarray(topk_weights, np.float64)
    ids = np.asarray(topk_ids)
    products = HostProducts(weights)
    tokens, slots = trace.pairs[:, 0], trace.pairs[:, 1]
    experts = ids[tokens, slots]
    bound = np.zeros(trace.out.shape)
    for e in np.unique(experts):
        rows = np.flatnonzero(experts == e)
        b_y = expert_bound(products, e, trace.a_q[tokens[rows]], trace.stage1[rows], trace.act[rows], trace.act_q[rows],
                           trace.stage2[rows], tw[tokens[rows], slots[rows]], act_dtype=act_dtype, spec=spec,
                           mma_k=mma_k)
        add_rows(bound, tokens[rows], b_y)
    return finish_bound(bound, trace.out_f32, ids.shape[1], bf16_output)


def bf16_output_bound(ref_f32: np.ndarray, bound: np.ndarray) -> np.ndarray:
    """Bound on |bf16(kernel) - bf16(ref)| given |kernel - ref| <= ``bound`` in fp32: rounding is
    monotonic, so bf16(kernel) lies between bf16(ref - bound) and bf16(ref + bound); where those agree
    the bf16 outputs must be equal (no ulp is granted where the fp32 interval holds no rounding boundary)."""
    ref = ref_f32.astype(np.float64)
    ref_bf16 = em.round_to_bf16(ref_f32.astype(np.float32)).astype(np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        lo = em.round_to_bf16((ref - bound).astype(np.float32)).astype(np.float64)
        hi = em.round_to_bf16((ref + bound).astype(np.float32)).astype(np.float64)
        out = np.maximum(np.abs(hi - ref_bf16), np.abs(ref_bf16 - lo))
    return np.where(np.isfinite(out), out, np.inf)
