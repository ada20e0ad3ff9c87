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
from moe_ref.tolerance import U_ACC, _accumulation_bound, _flip_step, activation_bound, bf16_output_bound, bf16_ulp

u = U_ACC


@pytest.mark.parametrize("k, mma_k, expected", [
    (4, None, 4 * u / (1 - 4 * u) * 4),  # worst case n u sum|a w| (< probable 7 * 2 * u * 2)
    (64, None, 7 * 8 * u * 8),  # probable: lambda sqrt(n) u sqrt(sum (a w)^2) (< worst 64 u 64)
    (64, 16, 7 * math.sqrt(8) * 2 * u * 8),  # tensor cores: 64/16 + log2 16 = 8 roundings of 2u
    (4, 2, 3 * 2 * u / (1 - 3 * 2 * u) * 4),  # 4/2 + 1 = 3 roundings of 2u, worst case smaller
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


def _bound_by_hand(p, trace, limit=7.0):
    """The docstring's steps 1-5 for an a16w4 run with topk 1, one element at a time."""
    w = MoEWeights.from_arrays(p.w1, p.w1_scale, p.w2, p.w2_scale)
    I, H = w.I, w.H

    def acc(a, ws, k):  # min(worst, probable) for one dot product of |a| and |w|
        prods = [abs(float(x) * float(y)) for x, y in zip(a, ws)]
        return min(k * u / (1 - k * u) * sum(prods), 7.0 * math.sqrt(k) * u * math.sqrt(sum(q * q for q in prods)))

    bound = np.zeros(trace.out_f32.shape)
    for row, (t, k) in enumerate(trace.pairs):
        e = int(p.topk_ids[t, k])
        w1, w2 = w.dequant_w1(e), w.dequant_w2(e)
        g = trace.stage1[row].astype(np.float64)
        b_g = [acc(trace.a_q[t], w1[j], H) + 2.0**-24 * abs(g[j]) for j in range(2 * I)]
        d = []
        for j in range(I):
            up = min(max(g[I + j], -limit), limit)
            h = float(trace.act[row, j])
            s_up = _sup_gate_silu_by_hand(min(g[j] - b_g[j], limit), min(g[j] + b_g[j], limit), 1.702)
            b_h = 1.1 * b_g[j] * (abs(up + 1) + b_g[I + j]) + s_up * b_g[I + j] + 2.0**-20 * abs(h)
            lo, hi = (em.round_to_bf16(np.float32([h - b_h, h + b_h])))
            d.append(0.0 if lo == hi else 2 * float(bf16_ulp(np.float64([abs(h) + b_h]))[0]))
        weight = float(p.topk_weights[t, k])
        for n in range(H):
            y = abs(float(trace.stage2[row, n]))
            b_y = sum(abs(float(w2[n, j])) * d[j] for j in range(I)) + acc(trace.act_q[row], w2[n], I) + 2.0**-24 * y
            bound[t, n] += b_y * weight + 2.0**-24 * y
    return bound + 1 * 2.0**-24 * (np.abs(trace.out_f32.astype(np.float64)) + bound)


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
    from moe_ref.tolerance import _sup_gate_silu

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
