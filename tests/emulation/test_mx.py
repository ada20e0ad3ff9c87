"""Contracts of MX block quantization (scale rules, element rounding, policies, layout)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import emulation as em
from emulation import TIE_MODES, ScaleMode, decode, dequantize_mx, encode, mx_scale_e8m0, quantize_mx

from .nasty import random_fp32

MODES = list(ScaleMode)
ELEMENTS = ["e2m1", "e4m3fn", "e4m3fnuz"]


def _scale_by_formula(amax: float, fmt: str, mode: ScaleMode) -> int:
    """Independent derivation of the scale byte with Python floats (math.frexp, exact)."""
    f = em.FORMATS[fmt]
    if not math.isfinite(amax):
        return 0xFF
    if mode is ScaleMode.ROUND_UP:
        ratio = float(np.float32(amax) / np.float32(f.max_finite))
        if ratio == 0:
            e = -127
        elif ratio < 2.0**-126:
            e = -126
        else:
            m, ex = math.frexp(ratio)
            e = ex - 1 if m == 0.5 else ex
    elif amax == 0:
        e = -127
    else:
        m, ex = math.frexp(amax)  # amax = m * 2^ex, m in [0.5, 1)
        floor_e = ex - 1
        if mode is ScaleMode.ROUND_DOWN:
            e = floor_e - f.emax
        elif mode is ScaleMode.CEIL:
            e = (floor_e if m == 0.5 else ex) - f.emax
        else:  # EVEN: mantissa rounded to 1 + mbits bits, half up
            e = floor_e + (2 * m >= 2 - 2.0 ** -(f.man_bits + 1)) - f.emax
    return int(np.clip(e, -127, 127) + 127)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("fmt", ELEMENTS)
def test_scale_rules_match_their_definition(mode, fmt, rng):
    amax = np.abs(random_fp32(rng, (20000,), nasty_fraction=0.2))
    amax = np.concatenate([amax, np.float32([0, 6.5, 7.5, 6.0, 448, 464, 240, 2.0**-130, 1e-45])])
    got = mx_scale_e8m0(amax, fmt, mode)
    want = np.array([_scale_by_formula(float(a), fmt, mode) for a in amax], dtype=np.uint8)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize(
    "amax, mode, scale, first_code",
    [(6.5, "even", 127, 0x7), (6.5, "round_up", 128, 0x5), (7.5, "even", 128, None), (7.5, "round_down", 127, None)],
)
def test_numerics_md_scale_examples(amax, mode, scale, first_code):
    block = np.zeros((1, 32), np.float32)
    block[0, 0] = amax
    codes, s = quantize_mx(block, "e2m1", scale_mode=mode)
    assert s[0, 0] == scale
    if first_code is not None:
        assert codes[0, 0] == first_code


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("fmt", ELEMENTS)
def test_block_policies_zero_nan_inf(mode, fmt):
    x = np.ones((4, 64), np.float32)
    x[0, :32] = 0.0
    x[1, :32] = -0.0
    x[2, 5] = np.nan
    x[3, 40] = -np.inf
    codes, scale = quantize_mx(x, fmt, scale_mode=mode)
    assert scale[0, 0] == 0 and scale[1, 0] == 0
    assert np.all(codes[0, :32] == 0)
    neg_zero = em.FORMATS[fmt].negative_zero or 0
    assert np.all(codes[1, :32] == neg_zero)
    assert scale[2, 0] == 0xFF and np.all(codes[2, :32] == 0)
    assert scale[3, 1] == 0xFF and np.all(codes[3, 32:] == 0)
    assert scale[2, 1] != 0xFF and scale[3, 0] != 0xFF  # neighbours untouched
    deq = dequantize_mx(codes, scale, fmt)
    assert np.all(np.isnan(deq[2, :32])) and np.all(np.isnan(deq[3, 32:]))
    np.testing.assert_array_equal(deq[2, 32:], 1.0)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("fmt", ELEMENTS)
@pytest.mark.parametrize("ties", TIE_MODES)
def test_elements_are_encode_of_x_over_scale(mode, fmt, ties, rng):
    x = random_fp32(rng, (64, 128), finite=True)
    codes, scale = quantize_mx(x, fmt, scale_mode=mode, ties=ties)
    s = decode(scale, "e8m0").astype(np.float64)
    scaled = (x.reshape(64, 4, 32).astype(np.float64) / s[..., None]).astype(np.float32)
    want = encode(scaled, fmt, ties=ties).reshape(64, 128)
    np.testing.assert_array_equal(codes, want)


@pytest.mark.parametrize("axis", [0, 1, 2, -1])
def test_any_axis_equals_moving_it_last(axis, rng):
    x = random_fp32(rng, (32, 64, 96), finite=True)
    packed, scale = em.quantize_mxfp4(x, axis=axis)
    p_last, s_last = em.quantize_mxfp4(np.moveaxis(x, axis, -1))
    np.testing.assert_array_equal(np.moveaxis(packed, axis, -1), p_last)
    np.testing.assert_array_equal(np.moveaxis(scale, axis, -1), s_last)
    back = em.dequantize_mxfp4(packed, scale, axis=axis)
    np.testing.assert_array_equal(np.moveaxis(back, axis, -1), em.dequantize_mxfp4(p_last, s_last))


def test_mxfp8_wrappers_and_formats(rng):
    x = random_fp32(rng, (8, 64), finite=True)
    for fmt in ("e4m3fn", "e4m3fnuz"):
        codes, scale = em.quantize_mxfp8(x, fmt=fmt)
        c2, s2 = quantize_mx(x, fmt)
        np.testing.assert_array_equal(codes, c2)
        np.testing.assert_array_equal(em.dequantize_mxfp8(codes, scale, fmt=fmt), dequantize_mx(c2, s2, fmt))


def test_errors_name_the_argument():
    with pytest.raises(ValueError, match="not a multiple of 32"):
        em.quantize_mxfp4(np.zeros((2, 48), np.float32))
    with pytest.raises(ValueError, match="scale_mode='nearest'"):
        em.quantize_mxfp4(np.zeros((2, 32), np.float32), scale_mode="nearest")
    with pytest.raises(ValueError, match="not an MX element format"):
        quantize_mx(np.zeros((2, 32), np.float32), "e5m2")
    with pytest.raises(ValueError, match="axis=3"):
        em.quantize_mxfp4(np.zeros((2, 32), np.float32), axis=3)
    with pytest.raises(ValueError, match="scale_e8m0: shape"):
        em.dequantize_mxfp4(np.zeros((2, 16), np.uint8), np.zeros((2, 2), np.uint8))
    assert em.quantize_mxfp4(np.zeros((2, 32), np.float32), scale_mode=ScaleMode.EVEN)[1].shape == (2, 1)


def test_empty_input():
    packed, scale = em.quantize_mxfp4(np.zeros((0, 64), np.float32))
    assert packed.shape == (0, 32) and scale.shape == (0, 2)


def test_dequantized_values_can_exceed_fp32():
    # EVEN and CEIL may pick a scale whose saturated elements exceed fp32's range: 1.75 * 2^127 ->
    # scale 2^126, element 3.5 -> 4 (tie to even), 4 * 2^126 = 2^128 -> inf once dequantized to fp32.
    x = np.full((1, 32), 1.75 * 2.0**127, np.float32)
    codes, scale = quantize_mx(x, "e2m1", scale_mode="even")
    assert scale[0, 0] == 126 + 127 and codes[0, 0] == 0x6
    assert np.isinf(dequantize_mx(codes, scale, "e2m1")[0, 0])


# ---- hypothesis properties -------------------------------------------------------------------

# Bounded so that dequantized values stay finite in fp32 (see test_dequantized_values_can_exceed_fp32).
finite_f32 = st.floats(width=32, min_value=-(2.0**120), max_value=2.0**120)
blocks = hnp.arrays(np.float32, (2, 32), elements=finite_f32)


@settings(max_examples=300, deadline=None)
@given(x=blocks, mode=st.sampled_from(MODES), fmt=st.sampled_from(ELEMENTS))
def test_sign_symmetry(x, mode, fmt):
    c_pos, s_pos = quantize_mx(x, fmt, scale_mode=mode)
    c_neg, s_neg = quantize_mx(-x, fmt, scale_mode=mode)
    np.testing.assert_array_equal(s_pos, s_neg)
    np.testing.assert_array_equal(dequantize_mx(c_neg, s_neg, fmt), -dequantize_mx(c_pos, s_pos, fmt))


@settings(max_examples=300, deadline=None)
@given(x=blocks, mode=st.sampled_from(MODES), fmt=st.sampled_from(ELEMENTS))
def test_requantizing_dequantized_values_is_the_identity(x, mode, fmt):
    once = dequantize_mx(*quantize_mx(x, fmt, scale_mode=mode), fmt)
    twice = dequantize_mx(*quantize_mx(once, fmt, scale_mode=mode), fmt)
    np.testing.assert_array_equal(once, twice)


@settings(max_examples=300, deadline=None)
@given(x=blocks, mode=st.sampled_from(MODES), fmt=st.sampled_from(ELEMENTS))
def test_error_within_half_a_step_unless_saturated(x, mode, fmt):
    f = em.FORMATS[fmt]
    codes, scale = quantize_mx(x, fmt, scale_mode=mode)
    s = decode(scale, "e8m0").astype(np.float64)[..., None]
    xb = x.reshape(2, 1, 32).astype(np.float64)
    deq = dequantize_mx(codes, scale, fmt).reshape(2, 1, 32).astype(np.float64)
    scaled = np.abs(xb) / s
    # step of the element grid at |x|/s: 2^(max(floor(log2 v), emin) - mbits)
    with np.errstate(divide="ignore"):
        e = np.maximum(np.floor(np.log2(np.where(scaled > 0, scaled, 1.0))), f.emin)
    half_step = 0.5 * np.exp2(e - f.man_bits) * s
    saturated = scaled > f.max_finite
    ok = (np.abs(deq - xb) <= half_step) | saturated
    assert ok.all()
    assert np.all(np.abs(deq[saturated]) == f.max_finite * np.broadcast_to(s, xb.shape)[saturated])


@settings(max_examples=200, deadline=None)
@given(x=hnp.arrays(np.float32, (1, 32), elements=finite_f32), fmt=st.sampled_from(ELEMENTS))
def test_monotonic_within_a_block(x, fmt):
    codes, scale = quantize_mx(x, fmt)
    order = np.argsort(x[0], kind="stable")
    deq = dequantize_mx(codes, scale, fmt)[0][order]
    assert np.all(np.diff(deq.astype(np.float64)) >= 0)
