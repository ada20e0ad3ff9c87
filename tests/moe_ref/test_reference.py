"""Contracts of the reference MoE: the definition, layouts, options and derived error bounds."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import emulation as em
from moe_ref import MoESpec, moe_reference, random_moe_problem
from moe_ref.exact import accumulation_bits, exact_matmul_f32

from .naive import fraction_dot_f32, fraction_matmul_f32, naive_pairs

SMALL = dict(M=6, E=4, H=64, I=32, topk=2)
PATHS = ["bf16", "fp4x2", "fp8"]


def test_exact_matmul_slow_path_is_correctly_rounded(rng):
    x = rng.standard_normal((3, 40)).astype(np.float32)
    x[0, 0], x[1, 5] = 1e-30, 3e20  # spans far beyond float64's 53 bits
    w = rng.standard_normal((5, 40)).astype(np.float32)
    got = exact_matmul_f32(x, w)
    want = np.array([[fraction_dot_f32(x[i], w[j]) for j in range(5)] for i in range(3)], np.float32)
    np.testing.assert_array_equal(got, want)


def test_exact_matmul_double_rounding_between_53_and_64_bits():
    """1 + 2^-24 + 2^-60 needs 61 bits (64 counted): float64 drops 2^-60 and the fp32 tie then rounds to 1 (even);
    the exact sum is above the tie and rounds to 1 + 2^-23. The fast path must not take it."""
    x = np.float32([[1.0, 2.0**-24, 2.0**-60]])
    w = np.ones((1, 3), np.float32)
    assert 53 < accumulation_bits(x, w)[0, 0] <= 64  # beyond float64, within a 64-bit "fast enough" guess
    assert exact_matmul_f32(x, w)[0, 0] == np.float32(1 + 2.0**-23)


@pytest.mark.parametrize("act_dtype", PATHS)
def test_fp32_hidden_is_rounded_to_bf16_first(act_dtype, rng):
    """Step 1 of the contract: hidden is rounded to bf16 before anything else, so fp32 hidden with low
    bits set gives the reference of its bf16 rounding (kernels take bf16 hidden)."""
    p = random_moe_problem(rng, M=8, E=4, H=64, I=64, topk=2)
    low_bits = (p.hidden.view(np.uint32) | rng.integers(1, 1 << 16, size=p.hidden.shape, dtype=np.uint32))
    hidden32 = low_bits.view(np.float32)
    assert not np.array_equal(em.round_to_bf16(hidden32), hidden32)
    got = moe_reference(hidden32, *p.args()[1:], act_dtype=act_dtype)
    want = moe_reference(em.round_to_bf16(hidden32), *p.args()[1:], act_dtype=act_dtype)
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))


@pytest.mark.parametrize("act_dtype", PATHS)
@pytest.mark.parametrize("gate_mode", ["separated", "interleave"])
@pytest.mark.parametrize("doweight_stage1", [False, True])
def test_reference_equals_a_naive_loop(act_dtype, gate_mode, doweight_stage1, rng):
    p = random_moe_problem(rng, **SMALL, with_bias=True)
    mask = np.array([1, 0, 1, 1])
    got = moe_reference(*p.args(), act_dtype=act_dtype, gate_mode=gate_mode, doweight_stage1=doweight_stage1,
                        expert_mask=mask, **p.biases())
    _, out_f32 = naive_pairs(p, act_dtype, MoESpec(gate_mode=gate_mode, doweight_stage1=doweight_stage1), mask=mask,
                             matmul=fraction_matmul_f32)  # exact rationals: independent of moe_ref.exact
    np.testing.assert_array_equal(got, em.round_to_bf16(out_f32))


def _interleave_rows(w1, w1_scale, bias1):
    two_i = w1.shape[1]
    perm = np.empty(two_i, np.int64)
    perm[0::2], perm[1::2] = np.arange(two_i // 2), np.arange(two_i // 2, two_i)
    return w1[:, perm], w1_scale[:, perm], None if bias1 is None else bias1[:, perm]


@pytest.mark.parametrize("act_dtype", [None, *PATHS])
def test_separated_equals_interleave_with_permuted_rows(act_dtype, rng):
    p = random_moe_problem(rng, **SMALL, with_bias=True)
    sep = moe_reference(*p.args(), act_dtype=act_dtype, **p.biases())
    w1i, s1i, b1i = _interleave_rows(p.w1, p.w1_scale, p.bias1)
    inter = moe_reference(p.hidden, w1i, s1i, p.w2, p.w2_scale, p.topk_weights, p.topk_ids, act_dtype=act_dtype,
                          gate_mode="interleave", bias1=b1i, bias2=p.bias2)
    np.testing.assert_array_equal(sep, inter)


def test_doweight_stage1_vs_stage2(rng):
    p = random_moe_problem(rng, **SMALL)
    a = moe_reference(*p.args(), act_dtype=None)
    b = moe_reference(*p.args(), act_dtype=None, doweight_stage1=True)
    np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)  # linear in h without bias2
    out, trace = moe_reference(*p.args(), act_dtype="bf16", doweight_stage1=True, return_trace=True)
    _, plain = moe_reference(*p.args(), act_dtype="bf16", return_trace=True)
    w = p.topk_weights[trace.pairs[:, 0], trace.pairs[:, 1]]
    np.testing.assert_array_equal(trace.act, (plain.act * w[:, None]).astype(np.float32))


def test_biases_enter_before_the_activation_and_after_stage_2(rng):
    p = random_moe_problem(rng, **SMALL, with_bias=True)
    _, with_b = moe_reference(*p.args(), act_dtype="fp8", return_trace=True, **p.biases())
    _, without = moe_reference(*p.args(), act_dtype="fp8", return_trace=True)
    e = p.topk_ids[with_b.pairs[:, 0], with_b.pairs[:, 1]]
    np.testing.assert_array_equal(with_b.stage1, (without.stage1 + p.bias1[e]).astype(np.float32))


def test_expert_mask_drops_slots(rng):
    p = random_moe_problem(rng, **SMALL)
    mask = np.array([0, 1, 1, 0])
    masked = moe_reference(*p.args(), act_dtype=None, expert_mask=mask)
    w = np.where(mask[p.topk_ids] != 0, p.topk_weights, 0).astype(np.float32)
    zeroed = moe_reference(p.hidden, p.w1, p.w1_scale, p.w2, p.w2_scale, w, p.topk_ids, act_dtype=None)
    np.testing.assert_allclose(masked, zeroed, rtol=0, atol=0)
    none = moe_reference(*p.args(), act_dtype="fp4x2", expert_mask=np.zeros(4))
    assert np.all(none == 0)


def _abs_matmul(x, w):
    return np.abs(x.astype(np.float64)) @ np.abs(w.astype(np.float64)).T


def _output_bound(p, trace, ideal_trace_act, stage2_input_err):
    """|out_emul - out_ideal| <= sum_k w_k |W2| err_k  + fp32 rounding terms + half a bf16 ulp."""
    bound = np.zeros_like(trace.out_f32, dtype=np.float64)
    for row, (t, k) in enumerate(trace.pairs):
        e = p.topk_ids[t, k]
        w2 = em.dequantize_mxfp4(p.w2[e], p.w2_scale[e])
        y_mag = _abs_matmul(np.abs(trace.act_q[row:row + 1]) + stage2_input_err[row:row + 1], w2)[0]
        bound[t] += p.topk_weights[t, k] * (_abs_matmul(stage2_input_err[row:row + 1], w2)[0] + 4 * 2.0**-24 * y_mag)
    return bound + 2.0**-8 * np.abs(trace.out_f32) + 2.0**-133


def test_bf16_path_equals_ideal_up_to_bf16_rounding(rng):
    """Derivation: hidden is already bf16, so stage 1 differs only by fp32 rounding (2^-24 rel.); the
    fp32 SwiGLU is within 8 ulps of float64 (5 rounded operations + exp); the stage-2 input is
    rounded to bf16 (2^-9 rel.); stage 2 and the slot sum add fp32 roundings; the output is rounded
    to bf16 (2^-9 rel.). So per element of the stage-2 input |h_q - h| <= (2^-9 + 2^-20)|h| and the
    output error <= sum_k w_k |W2| |h_q - h| + fp32 terms + 2^-9 |out|."""
    p = random_moe_problem(rng, M=16, E=4, H=128, I=64, topk=2)
    ideal = moe_reference(*p.args(), act_dtype=None)
    out, trace = moe_reference(*p.args(), act_dtype="bf16", return_trace=True)
    err_h = (2.0**-8 + 2.0**-20) * np.abs(trace.act.astype(np.float64)) + 2.0**-140
    bound = _output_bound(p, trace, None, err_h)
    diff = np.abs(out.astype(np.float64) - ideal)
    assert np.all(diff <= bound)
    assert diff.max() > 0.01 * bound.max()  # the bound is not vacuous


SWIGLU_DGATE = 1.1  # sup over z of |d/dz z*sigmoid(alpha z)| / 1 = sup sigma + z sigma (1 - sigma) < 1.1
SWIGLU_ABS_MAX = 7.0  # |gate * sigmoid(alpha * gate)| <= limit for gate <= limit


@pytest.mark.parametrize("act_dtype", ["fp4x2", "fp8"])
def test_quantized_paths_differ_from_ideal_by_their_quantization_step(act_dtype, rng):
    """Derivation: with e_a = |a_q - a| (the stage-1 input quantization error, per element) the
    stage-1 error is |dg| <= |W1| e_a (+ fp32 rounding); SwiGLU changes by at most
    1.1 |dgate| (|up + 1| + |dup|) + 7 |dup| (sup of its partial derivatives; clamps are
    1-Lipschitz); the stage-2 input adds its own quantization error |h_q - h|; stage 2 propagates
    through |W2|; the output adds fp32 sums and one bf16 rounding."""
    p = random_moe_problem(rng, M=16, E=4, H=128, I=64, topk=2)
    ideal = moe_reference(*p.args(), act_dtype=None)
    out, trace = moe_reference(*p.args(), act_dtype=act_dtype, return_trace=True)
    a = em.round_to_bf16(p.hidden).astype(np.float64)
    e_a = np.abs(trace.a_q - a)
    I = trace.act.shape[1]  # noqa: E741
    err_in = np.zeros_like(trace.act, dtype=np.float64)
    for row, (t, k) in enumerate(trace.pairs):
        e = p.topk_ids[t, k]
        w1 = em.dequantize_mxfp4(p.w1[e], p.w1_scale[e])
        dg = _abs_matmul(e_a[t:t + 1], w1)[0] + 2.0**-23 * _abs_matmul(np.abs(trace.a_q[t:t + 1]), w1)[0]
        dgate, dup = dg[:I], dg[I:]
        up = np.clip(trace.stage1[row, I:], -7, 7)
        d_act = SWIGLU_DGATE * dgate * (np.abs(up + 1) + dup) + SWIGLU_ABS_MAX * dup + 2.0**-20 * np.abs(trace.act[row])
        err_in[row] = d_act + np.abs(trace.act_q[row] - trace.act[row])
    bound = _output_bound(p, trace, None, err_in)
    diff = out.astype(np.float64) - ideal
    assert np.all(np.abs(diff) <= bound)
    # The worst case is loose (|W| sums); the first-order propagation of the actual signed
    # quantization errors must explain the observed difference.
    pred = np.zeros_like(ideal)
    for row, (t, k) in enumerate(trace.pairs):
        e = p.topk_ids[t, k]
        w1 = em.dequantize_mxfp4(p.w1[e], p.w1_scale[e]).astype(np.float64)
        w2 = em.dequantize_mxfp4(p.w2[e], p.w2_scale[e]).astype(np.float64)
        dg = w1 @ (trace.a_q[t] - a[t])
        g, u = trace.stage1[row, :I].astype(np.float64), trace.stage1[row, I:].astype(np.float64)
        sig = 1 / (1 + np.exp(-1.702 * np.minimum(g, 7)))
        d_gate = np.where(g < 7, sig + 1.702 * g * sig * (1 - sig), 0) * (np.clip(u, -7, 7) + 1)
        d_up = np.where(np.abs(u) < 7, np.minimum(g, 7) * sig, 0)
        dh = d_gate * dg[:I] + d_up * dg[I:] + (trace.act_q[row] - trace.act[row])
        pred[t] += p.topk_weights[t, k] * (w2 @ dh)
    resid = np.linalg.norm(diff - pred) / np.linalg.norm(diff)
    print(f"{act_dtype}: max |diff| {np.abs(diff).max():.4g}, worst-case bound max {bound.max():.4g}, "
          f"relative residual of the first-order prediction {resid:.3f}")
    assert resid < 0.25


def test_torch_in_torch_out(rng):
    p = random_moe_problem(rng, **SMALL)
    pt = p.to_torch()
    out = moe_reference(*pt.args(), act_dtype="fp4x2")
    assert isinstance(out, torch.Tensor) and out.dtype == torch.bfloat16
    np.testing.assert_array_equal(out.float().numpy(), moe_reference(*p.args(), act_dtype="fp4x2"))
    ideal = moe_reference(*pt.args(), act_dtype=None)
    assert ideal.dtype == torch.float64


@pytest.mark.parametrize(
    "change, match",
    [(dict(w1=np.zeros((4, 64, 31), np.uint8)), "w1"), (dict(w2_scale=np.zeros((4, 64, 2), np.uint8)), "w2_scale"),
     (dict(topk_ids=np.full((6, 2), 4)), r"topk_ids: expert ids must lie in \[0, 3\]"),
     (dict(topk_weights=np.zeros((6, 3), np.float32)), "topk_weights"), (dict(hidden=np.zeros((6, 32), np.float32)), "hidden"),
     (dict(act_dtype="int8"), "^act_dtype='int8' is not valid; expected None or one of"),
     (dict(topk_ids=np.zeros((6, 2), np.float32)), "^topk_ids: expected an integer array, got dtype float32"),
     (dict(topk_ids=np.zeros(6, np.int64)), r"^topk_ids: expected shape \[M=6, topk\], got \[6\]"),
     (dict(expert_mask=[None] * 4), "^expert_mask: expected a numeric"), (dict(bias1=np.zeros((4, 8), np.float32)), "bias1"),
     (dict(expert_mask=np.ones(3)), "expert_mask"), (dict(scale_mode="up"), "scale_mode"),
     # non-numeric inputs: the message starts with the argument's own name
     (dict(topk_weights=[[None, 1.0]] * 6), "^topk_weights: expected a numeric"),
     (dict(topk_ids=[[None, None]] * 6), "^topk_ids: expected a numeric"),
     (dict(bias1=[[None] * 128] * 4), "^bias1: expected a numeric"), (dict(bias2=[[object()] * 64] * 4), "^bias2: expected a numeric"),
     # strings, booleans, complex numbers: refused under the argument's name before NumPy converts them
     (dict(topk_weights=np.full((6, 2), "0.5")), r"^topk_weights: expected a real \(float or integer\) array, got dtype <U3"),
     (dict(topk_weights=np.ones((6, 2), bool)), "^topk_weights: expected a real .* got dtype bool"),
     (dict(bias1=np.full((4, 128), "1")), "^bias1: expected a real .* got dtype <U1"),
     (dict(bias2=np.zeros((4, 64), np.complex64)), "^bias2: expected a real .* got dtype complex64"),
     (dict(hidden=np.full((6, 64), "x")), "^hidden: expected a real .* got dtype <U1")],
)
def test_bad_input_names_the_argument(change, match, rng):
    p = random_moe_problem(rng, **SMALL)
    kw = dict(zip(["hidden", "w1", "w1_scale", "w2", "w2_scale", "topk_weights", "topk_ids"], p.args()))
    kw["act_dtype"] = "bf16"
    kw.update(change)
    with pytest.raises((ValueError, TypeError), match=match):
        moe_reference(kw.pop("hidden"), kw.pop("w1"), kw.pop("w1_scale"), kw.pop("w2"), kw.pop("w2_scale"),
                      kw.pop("topk_weights"), kw.pop("topk_ids"), **kw)


def test_mxfp4_bit_range_from_codes_equals_the_generic_one(rng):
    from moe_ref.exact import _bit_range
    from moe_ref.reference import _mxfp4_bit_range

    packed = rng.integers(0, 256, (64, 96), dtype=np.uint8)
    scale = rng.integers(0, 252, (64, 6), dtype=np.uint8)  # dequantized values stay finite in fp32
    packed[3], packed[9] = 0, 0x88  # rows of +0 and -0
    low, high = _mxfp4_bit_range(packed, scale)
    want_low, want_high = _bit_range(em.dequantize_mxfp4(packed, scale), 1)
    np.testing.assert_array_equal(low, want_low)
    np.testing.assert_array_equal(high, want_high)


@pytest.mark.parametrize("span", [30, 45, 60, 90, 150, 250])
def test_split_exact_gemm_equals_the_integer_sums(rng, span):
    """Rows of fp32 values whose exponents spread over ``span`` binades (more than float64 holds once
    multiplied and summed): the split tier (exact float64 products of up to MAX_PARTS parts, summed
    through an error-free expansion) and the integer tier give the same fp32 bits, ties, near-ties and
    cancellations included."""
    from moe_ref.exact import _bit_range, exact_round_f32

    n, k, N = 8, 96, 5
    x = (rng.standard_normal((n, k)) * np.exp2(rng.integers(-span, 1, (n, k)))).astype(np.float32)
    x[:3] = 0
    x[0, :3] = [1.0, 2.0**-24, 2.0**-60]  # 1 + 2^-24 + 2^-60: a tie broken by the far bit
    x[1, :3] = [1.0, 2.0**-24, -(2.0**-60)]
    x[2, :4] = [2.0**60, 1.0, -(2.0**60), 2.0**-80]  # cancellation: the float64 sum loses the 1
    w = em.round_to_bf16(rng.standard_normal((N, k)).astype(np.float32))
    w[:, :4] = 1.0
    w64 = w.astype(np.float64)
    bits = _bit_range(w, 1)
    split = exact_round_f32(x, x.astype(np.float64) @ w64.T, bits, w.__getitem__, True, lambda a: a @ w64.T)
    integer = exact_round_f32(x, x.astype(np.float64) @ w64.T, bits, w.__getitem__, True, None)
    np.testing.assert_array_equal(split.view(np.uint32), integer.view(np.uint32))
    assert split[0, 0] == np.float32(1 + 2.0**-23) and split[1, 0] == np.float32(1.0)
    assert split[2, 0] == np.float32(1.0)
    np.testing.assert_array_equal(exact_matmul_f32(x, w).view(np.uint32), integer.view(np.uint32))


def _exact_sum_f32(values) -> np.float32:
    """fp32 of the exact sum of float64 values, through Python fractions (the independent oracle)."""
    from fractions import Fraction

    from moe_ref.exact import round_scaled_int_to_f32

    total = sum(Fraction(float(v)) for v in values)
    if total == 0:
        return np.float32(0.0)
    q = total.denominator.bit_length() - 1  # a power of two
    return round_scaled_int_to_f32(total.numerator, -q)


def test_round_parts_equals_the_exact_rational_sum(rng):
    """``round_parts_f32``: fp32 of the exact sum of float64 parts, bit for bit equal to the rational
    sum rounded by hand, over random parts of any exponent, sums on and next to fp32 midpoints (ties to
    even), cancellations, exact zeros and the overflow threshold (2^128 - 2^103 rounds to inf)."""
    from moe_ref.exact import round_parts_f32

    cases = []
    for _ in range(400):
        n = int(rng.integers(1, 6))
        cases.append(rng.standard_normal(n) * np.exp2(rng.integers(-290, 260, n)))
        base = np.float32(rng.standard_normal() * 2.0 ** int(rng.integers(-148, 126)))
        mid = (float(base) + float(np.nextafter(base, np.float32(np.inf)))) / 2
        far = float(rng.choice([0.0, 1.0, -1.0])) * 2.0 ** int(rng.integers(-600, -160))
        cases.append(np.array([mid, far, 1e30, -1e30]))
    top = 2.0**128 - 2.0**103
    cases += [np.array([top]), np.array([top, -(2.0**-500)]), np.array([-top, 2.0**-500]), np.array([1.0, -1.0]),
              np.array([2.0**-150]), np.array([3 * 2.0**-150]), np.array([2.0**300, -(2.0**300), 2.0**-149])]
    width = max(len(c) for c in cases)
    parts = [np.array([c[j] if j < len(c) else 0.0 for c in cases]) for j in range(width)]
    got = round_parts_f32(parts)
    want = np.array([_exact_sum_f32(c) for c in cases], np.float32)
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))
    assert np.isinf(got[-7]) and got[-6] == np.finfo(np.float32).max and got[-3] == 0


def test_add_rows_adds_every_row_repeated_indices_included():
    """``add_rows``: out[index[i]] += values[i] for each i, so a token routed twice to one expert gets both
    rows (the fast path only where indices are unique); an empty index changes nothing."""
    from moe_ref.reference import add_rows

    out = np.arange(12, dtype=np.float64).reshape(4, 3)
    values = np.array([[1.0, 2.0, 3.0], [10.0, 20.0, 30.0], [100.0, 200.0, 300.0]])
    want = out.copy()
    for i, row in enumerate([2, 0, 2]):
        want[row] += values[i]
    add_rows(out, np.array([2, 0, 2]), values)
    np.testing.assert_array_equal(out, want)
    add_rows(out, np.array([3, 1]), values[:2])
    want[3] += values[0]
    want[1] += values[1]
    np.testing.assert_array_equal(out, want)
    add_rows(out, np.array([], dtype=np.int64), np.zeros((0, 3)))
    np.testing.assert_array_equal(out, want)
