"""The derived tolerance pinned down: hand-computed bounds on tiny inputs, and the whole bound of a
small problem re-derived element by element from the formula in ``moe_ref.tolerance``'s docstring.

A bound that is a few times too loose passes every kernel, so "the kernels fit under it" proves
nothing about it; these tests fail when any term changes."""

from __future__ import annotations

import math

import numpy as np
import pytest

import emulation as em
from moe_ref import MoESpec, MoEWeights, kernel_tolerance, moe_reference, random_moe_problem
from moe_ref.activation import gated_activation
from moe_ref.tolerance import (
    U_ACC,
    _accumulation_bound,
    _flip_step,
    _sup_gate_silu,
    activation_bound,
    bf16_output_bound,
    bf16_ulp,
)

u = U_ACC


@pytest.mark.parametrize("k, mma_k, expected", [
    (4, None, 4 * u / (1 - 4 * u) * 4),  # worst case n u sum|a w| (< probable 7 * 2 * u * 2)
    (64, None, 7 * 8 * u * 8),  # probable: lambda sqrt(n) u sqrt(sum (a w)^2) (< worst 64 u 64)
    (64, 16, 7 * math.sqrt(8) * 2 * u * 8),  # tensor cores: 64/16 + log2 16 = 8 roundings of 2u
    (4, 2, 3 * 2 * u / (1 - 3 * 2 * u) * 4),  # 4/2 + 1 = 3 roundings of 2u, worst case smaller
    (5, 2, 4 * 2 * u / (1 - 4 * 2 * u) * 5),  # ceil(5/2) + 1 = 4 roundings (a partial MMA step is one)
])
def test_accumulation_bound_by_hand(k, mma_k, expected):
    class Ones:  # the products of a weight matrix of ones, in every form
        def matmul(self, a, e, which, form):
            return a @ np.ones((1, k)).T

    got = _accumulation_bound(Ones(), np.ones((1, k)), 0, "w1", k, mma_k)[0, 0]
    assert got == pytest.approx(expected, rel=1e-12)


def test_flip_step_by_hand():
    """MXFP4 block of amax 4 (ROUND_UP scale 2^0, robust to the perturbation): elements on the grid
    cannot flip (D = 0); ties can, by one step at their binade plus the perturbation: 0.25 and 1.25
    (step 0.5), 3.5 (step 1). bf16: 1 + 2^-8 is a tie, D = 2 ulps; 1.0 is not."""
    b = 2.0**-20
    h = np.zeros((1, 32), np.float32)
    h[0, :5] = [4.0, 0.25, 1.0, 1.25, 3.5]
    d = _flip_step(h, np.full(h.shape, b), "fp4x2", "round_up")
    want = np.zeros((1, 32))
    want[0, :5] = [0.0, 1 + 2 * b, 0.0, 1 + 2 * b, 2 + 2 * b]
    np.testing.assert_array_equal(d, want)
    hb = np.float32([[1 + 2.0**-8, 1.0]])
    np.testing.assert_array_equal(_flip_step(hb, np.full(hb.shape, b), "bf16", "round_up"), [[2 * 2.0**-7, 0.0]])


@pytest.mark.parametrize("activation", ["swiglu", "silu"])
def test_activation_bound_by_hand(activation):
    """Step 2 on one element with perturbations too large to hide any term: SwiGLU clamps up at limit
    and takes S_up at the gate's ends; SiLU-gated is 1.1 b_gate (|up| + b_up) + (|gate| + b_gate) b_up."""
    gate, up, b_gate, b_up = np.array([1.0]), np.array([9.0]), np.array([0.5]), np.array([0.25])
    got = activation_bound(gate, up, b_gate, b_up, MoESpec(activation=activation))[0]
    if activation == "swiglu":
        s_up = max(g / (1 + math.exp(-1.702 * g)) for g in (0.5, 1.5))  # g* = -0.75 lies outside [0.5, 1.5]
        want = 1.1 * 0.5 * (abs(7.0 + 1) + 0.25) + s_up * 0.25
    else:
        want = 1.1 * 0.5 * (9.0 + 0.25) + (1.0 + 0.5) * 0.25
    assert got == pytest.approx(want, rel=1e-15)


def test_flip_step_scale_robustness_by_hand():
    """The block's scale decides too (fp4x2, ROUND_UP: scale = ceil_pow2(amax / 6)): a block whose amax
    lies within its b of 6 may take scale 2^0 or 2^1, so every element may move (D = 2 steps at 2^1
    plus 2 b); a block of amax 0.5 far from a boundary keeps its scale (grid values: D = 0), whatever
    a neighbouring block's b; zeros raise no warning."""
    import warnings

    b = np.zeros((1, 96))
    h = np.zeros((1, 96), np.float32)
    h[0, :3] = [6.0 * (1 - 2.0**-10), 1.0, 0.0]
    b[0, :32] = 2.0**-7  # amax +- b straddles 6
    h[0, 32:34] = [0.5, 0.25]
    b[0, 32:64] = 2.0**-20
    h[0, 64], b[0, 64] = 3.0, 0.4  # a large b in the third block: not the second block's
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        d = _flip_step(h, b, "fp4x2", "round_up")
    step = lambda v, scale: scale * 2.0 ** (max(math.floor(math.log2(max(v / scale, 2.0**-30))), 0) - 1)  # noqa: E731
    np.testing.assert_array_equal(d[0, :3], [2 * step(6.0 * (1 - 2.0**-10), 2.0) + 2 * 2.0**-7,
                                             2 * step(1.0, 2.0) + 2 * 2.0**-7, 2 * step(0.0, 2.0) + 2 * 2.0**-7])
    assert np.all(d[0, 3:32] > 0)
    np.testing.assert_array_equal(d[0, 32:64], 0.0)


def test_bf16_ulp_by_hand():
    """One bf16 ulp of |x| (2^(e - 7) in x's binade), the smallest normal's below it (zero and subnormals)."""
    x = np.array([1.0, -1.5, 2.0**100, 0.0, 2.0**-130, -(2.0**-126)])
    np.testing.assert_array_equal(bf16_ulp(x), [2.0**-7, 2.0**-7, 2.0**93, 2.0**-133, 2.0**-133, 2.0**-133])


def test_the_bound_at_fp32_overflow_is_inf_and_silent():
    """Where ref + bound leaves fp32's range the bound is +inf (never NaN), and no warning is raised."""
    import warnings

    big = np.float32(3.3e38)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = bf16_output_bound(np.float32([big, -big, np.inf]), np.array([1e38, 1e38, 1.0]))
        gate = np.array([-1000.0, -3.0])  # exp(-alpha g) overflows at the first: g s(alpha g) is 0 there
        s_up = _sup_gate_silu(gate, gate + 1, 1.702)
    assert np.all(got == np.inf)
    assert s_up[0] == 0.0 and s_up[1] == pytest.approx(2 / (1 + math.exp(1.702 * 2)), rel=1e-12)  # the upper end


@pytest.mark.parametrize("ref, bound, expected", [
    (1.0, 2.0**-9, 0.0),  # [1 - 2^-9, 1 + 2^-9] holds no bf16 rounding boundary: outputs must be equal
    (1.0, 2.0**-8, 2.0**-8),  # 1 - 2^-8 is a bf16 value below 1 (ulp 2^-8 there); 1 + 2^-8 ties to 1
    (1.0, 3 * 2.0**-8, 2.0**-6),  # 1 + 3 * 2^-8 ties to the even 1 + 2^-6 (farther than 1 - 3 * 2^-8)
])
def test_bf16_output_bound_by_hand(ref, bound, expected):
    assert bf16_output_bound(np.float32([ref]), np.array([bound]))[0] == expected


def _z_star() -> float:
    """The stationary point of z * sigmoid(z), by bisection on its derivative (independent of the code's constant)."""
    lo, hi = -2.0, -1.0
    for _ in range(200):
        mid = (lo + hi) / 2
        s = 1 / (1 + math.exp(-mid))
        lo, hi = (mid, hi) if s + mid * s * (1 - s) < 0 else (lo, mid)
    return lo


def _sup_gate_silu_by_hand(lo: float, hi: float, alpha: float) -> float:
    f = lambda g: abs(g / (1 + math.exp(-alpha * g)))  # noqa: E731
    points = [lo, hi] + ([_z_star() / alpha] if alpha and lo <= _z_star() / alpha <= hi else [])
    return max(f(g) for g in points)


def _flip_by_hand(h_row, b_row, act_dtype, mode):
    """Step 3 for one row, element by element: D = 0 where neither the element's quantization nor its
    block's scale can move under the perturbation, else two steps of the grid at the larger scale plus 2 b."""
    h_row, b_row = np.float32(h_row), np.asarray(b_row, np.float64)
    if act_dtype == "fp32":
        return list(b_row)
    if act_dtype == "bf16":
        out = []
        for h, b in zip(h_row.astype(np.float64), b_row):
            lo, hi = em.round_to_bf16(np.float32([h - b, h + b]))
            out.append(0.0 if lo == hi else 2 * float(bf16_ulp(np.float64([abs(h) + b]))[0]))
        return out
    fmt = {"fp4x2": "e2m1", "fp8": "e4m3fn"}[act_dtype]
    f = em.get_format(fmt)

    def q(row):
        codes, scale = em.quantize_mx(np.float32(row)[None], fmt, scale_mode=mode)
        return em.dequantize_mx(codes, scale, fmt)[0]

    q0, q_lo, q_hi = q(h_row), q(h_row.astype(np.float64) - b_row), q(h_row.astype(np.float64) + b_row)
    out = []
    for blk in range(h_row.size // 32):
        sl = slice(32 * blk, 32 * blk + 32)
        amax, b_blk = float(np.abs(h_row[sl]).max()), float(b_row[sl].max())
        s_lo = em.mx_scale_e8m0(np.float32([max(amax - b_blk, 0.0)]), fmt, mode)[0]
        s_hi = em.mx_scale_e8m0(np.float32([amax + b_blk]), fmt, mode)[0]
        scale = float(em.decode(np.uint8([s_hi]), "e8m0")[0])
        for j in range(32 * blk, 32 * blk + 32):
            robust = q_lo[j] == q0[j] == q_hi[j] and s_lo == s_hi
            binade = max(math.floor(math.log2(max(abs(float(h_row[j])) / scale, 2.0**-30))), f.emin)
            out.append(0.0 if robust else 2 * scale * 2.0**(binade - f.man_bits) + 2 * b_row[j])
    return out


def _bound_by_hand(p, trace, act_dtype="bf16", spec=None, mma_k=None):
    """The docstring's steps 1-5, one element at a time, for any path and options."""
    spec = spec or MoESpec()
    w = MoEWeights.from_arrays(p.w1, p.w1_scale, p.w2, p.w2_scale)
    I, H = w.I, w.H  # noqa: E741
    limit, alpha = spec.limit, spec.alpha

    def acc(a, ws, k):  # min(worst, probable) for one dot product of |a| and |w|
        n, unit = (k, u) if mma_k is None else (math.ceil(k / mma_k) + int(math.log2(mma_k)), 2 * u)
        prods = [abs(float(x) * float(y)) for x, y in zip(a, ws)]
        return min(n * unit / (1 - n * unit) * sum(prods),
                   7.0 * math.sqrt(n) * unit * math.sqrt(sum(q * q for q in prods)))

    gate_col = (lambda j: j) if spec.gate_mode == "separated" else (lambda j: 2 * j)
    up_col = (lambda j: I + j) if spec.gate_mode == "separated" else (lambda j: 2 * j + 1)
    bound = np.zeros(trace.out_f32.shape)
    for row, (t, k) in enumerate(trace.pairs):
        e = int(p.topk_ids[t, k])
        weight = float(p.topk_weights[t, k])
        w1, w2 = w.dequant_w1(e), w.dequant_w2(e)
        g = trace.stage1[row].astype(np.float64)
        b_g = [acc(trace.a_q[t], w1[j], H) + 2.0**-24 * abs(g[j]) for j in range(2 * I)]
        b_h = []
        for j in range(I):
            gate, up, bg, bu = g[gate_col(j)], g[up_col(j)], b_g[gate_col(j)], b_g[up_col(j)]
            h = abs(float(trace.act[row, j]))
            if spec.activation == "swiglu":
                s_up = _sup_gate_silu_by_hand(min(gate - bg, limit), min(gate + bg, limit), alpha)
                b = 1.1 * bg * (abs(min(max(up, -limit), limit) + 1) + bu) + s_up * bu + 2.0**-20 * h
            else:
                b = 1.1 * bg * (abs(up) + bu) + (abs(gate) + bg) * bu + 2.0**-20 * h
            b_h.append(b * weight + 2.0**-24 * h if spec.doweight_stage1 else b)
        d = _flip_by_hand(trace.act[row], b_h, spec.intermediate(act_dtype), spec.scale_mode)
        for n in range(H):
            y = float(trace.stage2[row, n])
            b_y = sum(abs(float(w2[n, j])) * d[j] for j in range(I)) + acc(trace.act_q[row], w2[n], I) + 2.0**-24 * abs(y)
            if not spec.doweight_stage1:
                b_y = b_y * weight + 2.0**-24 * abs(y)
            if spec.slot_dtype == "bf16":
                b_y = float(bf16_output_bound(np.float32([y]), np.array([b_y]))[0])
            bound[t, n] += b_y
    topk = p.topk_ids.shape[1]
    return bound + topk * 2.0**-24 * (np.abs(trace.out_f32.astype(np.float64)) + bound)


def test_kernel_tolerance_equals_the_formula_by_hand(rng):
    p = random_moe_problem(rng, M=3, E=2, H=32, I=32, topk=1, outlier_rows=0.5)
    ref, trace = moe_reference(*p.args(), act_dtype="bf16", return_trace=True)
    w = MoEWeights.from_arrays(p.w1, p.w1_scale, p.w2, p.w2_scale)
    got = kernel_tolerance(trace, w, p.topk_weights, p.topk_ids, act_dtype="bf16", bf16_output=False)
    want = _bound_by_hand(p, trace)
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=0)
    assert (want > 0).all()
    np.testing.assert_array_equal(kernel_tolerance(trace, w, p.topk_weights, p.topk_ids, act_dtype="bf16"),
                                  bf16_output_bound(trace.out_f32, want))


OPTIONS = [  # (path, spec options, mma_k): every option the bound reads, each changing it
    ("fp4x2", {}, None), ("fp8", dict(scale_mode="even"), 16), ("bf16", dict(gate_mode="interleave"), None),
    ("bf16", dict(doweight_stage1=True, alpha=0.05, limit=3.0), None), ("bf16", dict(activation="silu"), 16),
    ("fp4x2", dict(intermediate_dtype="fp32", slot_dtype="bf16"), None), ("fp8", dict(scale_mode="round_down"), 32),
    ("bf16", dict(doweight_stage1=True, intermediate_dtype="fp32"), None),  # b_h reaches the bound unflipped
]


@pytest.mark.parametrize("act_dtype,options,mma_k", OPTIONS, ids=lambda x: str(x))
def test_kernel_tolerance_equals_the_formula_by_hand_for_every_option(act_dtype, options, mma_k, rng):
    """Each option's term of the bound, re-derived element by element (top-2, so the slot sum's term
    counts), on data with ties and clamped gates (outlier rows)."""
    p = random_moe_problem(rng, M=3, E=2, H=32, I=64, topk=2, outlier_rows=0.5)
    spec = MoESpec(**options)
    _, trace = moe_reference(*p.args(), act_dtype=act_dtype, spec=spec, return_trace=True)
    w = MoEWeights.from_arrays(p.w1, p.w1_scale, p.w2, p.w2_scale)
    got = kernel_tolerance(trace, w, p.topk_weights, p.topk_ids, act_dtype=act_dtype, spec=spec, mma_k=mma_k,
                           bf16_output=False)
    want = _bound_by_hand(p, trace, act_dtype, spec, mma_k)
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=0)
    default = kernel_tolerance(trace, w, p.topk_weights, p.topk_ids, act_dtype=act_dtype, bf16_output=False)
    assert not np.array_equal(got, default) or (act_dtype, options, mma_k) == OPTIONS[0]  # the options are read


@pytest.mark.parametrize("alpha", [1.702, 0.5, 0.05, 0.0, -0.3, -1.702])
def test_activation_bound_holds_for_every_alpha(alpha, rng):
    """The sup of |h(gate', up') - h(gate, up)| over the box, searched densely (corners, edges, a grid),
    never exceeds the bound; with the old d/dup <= limit it would at small or negative alpha."""
    n = 400
    gate = np.concatenate([rng.uniform(-40, 10, n), np.full(8, 7.0), -1.27846 / alpha * np.ones(8) if alpha else []])
    m = gate.size
    up = rng.uniform(-9, 9, m)
    b_gate, b_up = rng.uniform(0, 0.5, m), rng.uniform(0, 0.5, m)
    x = np.empty((m, 2))
    worst = np.zeros(m)
    h0 = gated_activation(np.stack([gate, up], 1), activation="swiglu", gate_mode="separated", alpha=alpha)[:, 0]
    for dg in np.linspace(-1, 1, 41):
        for du in np.linspace(-1, 1, 41):
            x[:, 0], x[:, 1] = gate + dg * b_gate, up + du * b_up
            h = gated_activation(x, activation="swiglu", gate_mode="separated", alpha=alpha)[:, 0]
            worst = np.maximum(worst, np.abs(h - h0))
    bound = activation_bound(gate, up, b_gate, b_up, MoESpec(alpha=alpha))
    assert np.all(worst <= bound * (1 + 1e-12)), np.max(worst / bound)
    if alpha < 0.2785 / 7:  # below it the old d/dup <= limit is no bound (sup |g s(alpha g)| = 0.2785 / alpha)
        old = 1.1 * b_gate * (np.abs(np.clip(up, -7, 7) + 1) + b_up) + 7.0 * b_up
        assert np.any(worst > old)


@pytest.mark.parametrize("alpha", [1.702, 0.05, -1.0])
def test_sup_gate_silu_is_the_sup(alpha, rng):
    lo = rng.uniform(-60, 7, 200)
    hi = np.minimum(lo + rng.uniform(0, 20, 200), 7.0)
    got = _sup_gate_silu(lo, hi, alpha)
    grid = lo[:, None] + (hi - lo)[:, None] * np.linspace(0, 1, 20001)[None, :]
    dense = np.abs(grid / (1 + np.exp(-alpha * grid))).max(1)
    assert np.all(got >= dense * (1 - 1e-12)) and np.all(got <= dense * (1 + 1e-6) + 1e-12)
    want = [_sup_gate_silu_by_hand(a, b, alpha) for a, b in zip(lo, hi)]
    np.testing.assert_allclose(got, want, rtol=1e-12)


def test_an_activation_the_reference_cannot_compute_is_refused_by_name(rng):
    """gelu is a rule of the selector's table, not an activation the reference computes: refused, not zeros."""
    p = random_moe_problem(rng, M=2, E=2, H=32, I=32, topk=1)
    with pytest.raises(ValueError, match="activation='gelu' is not computed by the reference"):
        moe_reference(*p.args(), act_dtype="bf16", activation="gelu")
    with pytest.raises(ValueError, match="gate_mode='both'"):
        moe_reference(*p.args(), act_dtype="bf16", gate_mode="both")


@pytest.mark.parametrize("mma_k", [None, 16])
def test_kernel_tolerance_by_hand_where_the_probable_term_rules(mma_k, rng):
    """K = 512: the probabilistic bound (lambda sqrt(n) u sqrt(sum (a w)^2)) is the smaller, and it is the one used."""
    p = random_moe_problem(rng, M=2, E=2, H=512, I=32, topk=1)
    _, trace = moe_reference(*p.args(), act_dtype="fp4x2", return_trace=True)
    w = MoEWeights.from_arrays(p.w1, p.w1_scale, p.w2, p.w2_scale)
    got = kernel_tolerance(trace, w, p.topk_weights, p.topk_ids, act_dtype="fp4x2", mma_k=mma_k, bf16_output=False)
    np.testing.assert_allclose(got, _bound_by_hand(p, trace, "fp4x2", mma_k=mma_k), rtol=1e-9, atol=0)
    a = np.abs(trace.a_q[:1].astype(np.float64))
    w1 = np.abs(w.dequant_w1(int(p.topk_ids[0, 0])))
    worst = 512 * u * (a @ w1.T)
    probable = 7 * math.sqrt(512) * u * np.sqrt((a * a) @ (w1 * w1).T)
    assert (probable < worst).mean() > 0.9
