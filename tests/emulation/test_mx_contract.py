"""MX block quantization and its recovery, pinned where the broad tests do not look: the exact words
of each refusal, every axis, empty inputs, the wrappers' defaults and pass-through options, scale
bytes at both ends of the e8m0 range, what a failed recovery writes, and no floating-point warnings."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import emulation as em


def _refusal(kind, fn, *args, **kwargs) -> str:
    with pytest.raises(kind) as info:
        fn(*args, **kwargs)
    return str(info.value)


def test_refusals_name_the_argument_exactly():
    assert _refusal(TypeError, em.mx_scale_e8m0, np.array([1, 2]), "e2m1") == (
        "amax: expected a float32, float16 or bfloat16 array (or exact-float32 float64), got dtype int64")
    assert _refusal(ValueError, em.quantize_mx, np.zeros((2, 32), np.float32), "e2m1", ties="up") == (
        "ties='up' is not valid; expected one of ['even', 'away', 'zero']")
    assert _refusal(ValueError, em.dequantize_mx, np.zeros((2, 32), np.uint8), np.zeros(2, np.uint8), "e2m1") == (
        "scale_e8m0: shape (2,) does not match codes (2, 32) (expected the codes' shape with axis 1 divided by 32)")
    assert _refusal(ValueError, em.dequantize_mx, np.zeros((2, 31), np.uint8), np.zeros((2, 1), np.uint8),
                    "e2m1") == "codes: length 31 along axis 1 is not a multiple of 32"
    assert _refusal(ValueError, em.recover_mx, np.zeros((2, 31)), "e2m1") == (
        "values: length 31 along axis 1 is not a multiple of 32")
    assert _refusal(ValueError, em.quantize_mx, np.zeros((33, 2), np.float32), "e2m1", axis=0) == (
        "x: length 33 along axis 0 is not a multiple of 32")


def test_scale_bytes_keep_the_amax_shape():
    amax = np.full((2, 3), 6.0, np.float32)
    got = em.mx_scale_e8m0(amax, "e2m1")
    assert got.shape == (2, 3) and got.dtype == np.uint8 and np.all(got == 127)
    for scalar in (np.float32(6.0), 6.0, np.array(6.0, np.float32)):  # 0-d in, 0-d out (not [1]), every mode
        for mode in em.ScaleMode:
            one = em.mx_scale_e8m0(scalar, "e2m1", mode)
            assert one.shape == () and one == (128 if mode is em.ScaleMode.CEIL else 127), mode  # 6 = 1.5 * 2^2
    assert em.mx_scale_e8m0(np.float32(np.inf), "e2m1").shape == ()


@pytest.mark.parametrize("shape", [(2, 0), (0, 64), (3, 0, 32)])
def test_empty_inputs(shape):
    codes, scale = em.quantize_mx(np.zeros(shape, np.float32), "e4m3fn")
    assert codes.shape == shape and scale.shape == shape[:-1] + (shape[-1] // 32,)
    assert em.dequantize_mx(codes, scale, "e4m3fn").shape == shape


def test_the_wrappers_pass_every_option_on(rng):
    x = rng.standard_normal((64, 96)).astype(np.float32) * 3
    x[0, :4] = [2.5, -2.5, 0.75, 5.0]  # e2m1 ties under scale 1 (amax 5: round_up scale 2^0)
    x[:, 0] = 5.0
    for mode in em.ScaleMode:
        for ties in em.TIE_MODES:
            packed, scale = em.quantize_mxfp4(x, scale_mode=mode, ties=ties)
            codes, scale_mx = em.quantize_mx(x, "e2m1", scale_mode=mode, ties=ties)
            np.testing.assert_array_equal(em.unpack_fp4x2(packed), codes)
            np.testing.assert_array_equal(scale, scale_mx)
            for fmt in ("e4m3fn", "e4m3fnuz"):
                c8, s8 = em.quantize_mxfp8(x.T, fmt=fmt, axis=0, scale_mode=mode, ties=ties)
                want_c, want_s = em.quantize_mx(x.T, fmt, axis=0, scale_mode=mode, ties=ties)
                np.testing.assert_array_equal(c8, want_c)
                np.testing.assert_array_equal(s8, want_s)
                np.testing.assert_array_equal(em.dequantize_mxfp8(c8, s8, fmt=fmt, axis=0),
                                              em.dequantize_mx(want_c, want_s, fmt, axis=0))
    assert em.quantize_mxfp4(x, ties="away")[0][0, 0] != em.quantize_mxfp4(x, ties="even")[0][0, 0]
    c8, s8 = em.quantize_mxfp8(x)  # defaults: e4m3fn, last axis, round_up, ties even
    want_c, want_s = em.quantize_mx(x, "e4m3fn")
    np.testing.assert_array_equal(c8, want_c)
    np.testing.assert_array_equal(s8, want_s)
    np.testing.assert_array_equal(em.dequantize_mxfp8(c8, s8), em.dequantize_mx(want_c, want_s, "e4m3fn"))


@pytest.mark.parametrize("fmt", em.mx.MX_ELEMENT_FORMATS)
def test_recovery_along_any_axis(fmt, rng):
    """Blocks along axis 0 of a 3-D array: codes, scales and status move with the axis."""
    x = rng.standard_normal((64, 3, 5)).astype(np.float32)
    codes, scale = em.quantize_mx(x, fmt, axis=0)
    values = em.dequantize_mx(codes, scale, fmt, axis=0)
    got = em.recover_mx(values, fmt, axis=0)
    moved = em.recover_mx(np.moveaxis(values, 0, -1), fmt)
    assert [a.shape for a in got] == [(64, 3, 5), (2, 3, 5), (2, 3, 5)]
    for mine, last in zip(got, moved):
        np.testing.assert_array_equal(mine, np.moveaxis(last, -1, 0))


def _blocks(*rows):
    return np.concatenate([np.resize(np.asarray(r, np.float64), 32) for r in rows])


def test_recovery_failures_write_zero_bytes_and_status_is_uint8():
    """Status 0 (NaN beside numbers, inf, a value off every grid, a dynamic range no scale holds):
    codes 0 and scale 0, as the docstring says; status is uint8."""
    values = _blocks([np.nan, 1.0], [np.inf, 1.0], [1.3, 1.0], [2.0**100, 2.0**-140], [0.0, -0.0], [6.0, 0.5])
    codes, scale, status = em.recover_mx(values, "e2m1")
    assert status.dtype == np.uint8 and scale.dtype == np.uint8 and codes.dtype == np.uint8
    assert status.tolist() == [0, 0, 0, 0, 2, 1]
    assert scale.tolist() == [0, 0, 0, 0, 0, 127]
    assert not codes[:128].any()
    assert codes[128:130].tolist() == [0x0, 0x8]


@pytest.mark.parametrize("fmt, values, byte", [
    ("e2m1", [6.0 * 2.0**-127, 0.5 * 2.0**-127], 0),     # the finest scale, 2^-127 (fp32 subnormals)
    ("e2m1", [6.0 * 2.0**127, 0.5 * 2.0**127], 254),     # the coarsest, 2^127 (past fp32: float64 values)
    ("e4m3fn", [448.0 * 2.0**-127, 2.0**-9 * 2.0**-127], 0),
])
def test_recovery_at_both_ends_of_the_scale_range(fmt, values, byte):
    codes, scale, status = em.recover_mx(_blocks(values), fmt)
    assert status.tolist() == [1] and scale.tolist() == [byte]
    again = em.decode(codes, fmt).astype(np.float64) * 2.0 ** (byte - 127)
    np.testing.assert_array_equal(again, _blocks(values))


@pytest.mark.parametrize("fmt", em.mx.MX_ELEMENT_FORMATS)
def test_nasty_blocks_raise_no_floating_point_warnings(fmt):
    """NaN, inf, zero, huge and tiny blocks through quantize, dequantize (EVEN/CEIL scales past fp32)
    and recovery, with warnings as errors."""
    x = np.zeros((6, 32), np.float32)
    x[0, 3], x[1, 5], x[2, :] = np.nan, -np.inf, 3.0e38
    x[3, :] = 1e-45
    x[4, 0] = 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for mode in em.ScaleMode:
            codes, scale = em.quantize_mx(x, fmt, scale_mode=mode)
            em.dequantize_mx(codes, scale, fmt)
        em.dequantize_mx(np.full((1, 32), 0x7, np.uint8) if fmt == "e2m1" else np.full((1, 32), 0x7E, np.uint8),
                         np.array([[254]], np.uint8), fmt)
        em.recover_mx(np.concatenate([x.astype(np.float64).ravel(), _blocks([1e300, 1.0]), _blocks([np.nan])]),
                      fmt)


def test_the_mxfp8_wrapper_passes_the_tie_rule_on():
    block = np.zeros((1, 32), np.float32)
    block[0, :2] = [448.0, 1.0625]  # ROUND_UP scale 2^0; 1.0625 lies between the e4m3 values 1 and 1.125
    even, away = em.quantize_mxfp8(block)[0], em.quantize_mxfp8(block, ties="away")[0]
    assert em.decode(even[0, 1], "e4m3fn") == 1.0 and em.decode(away[0, 1], "e4m3fn") == 1.125


@pytest.mark.parametrize("fmt", em.mx.MX_ELEMENT_FORMATS)
def test_nasty_blocks_raise_no_floating_point_flag(fmt):
    """The same nasty blocks with the flags NumPy warns about raising (``np.errstate``: overflow, invalid,
    divide; underflow is silent by default): only the operations the code itself guards may meet them."""
    x = np.zeros((8, 32), np.float32)
    x[0, 3], x[1, 5], x[2, :] = np.nan, -np.inf, 3.0e38
    x[3, :] = 1e-45
    x[4, 0] = 1.0
    x[5, :] = np.inf
    x[6, :] = np.nan
    x[7, :2] = [3.4e38, 1e-45]
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        for mode in em.ScaleMode:
            codes, scale = em.quantize_mx(x, fmt, scale_mode=mode)
            em.dequantize_mx(codes, scale, fmt)
        top = np.full((1, 32), 0x7 if fmt == "e2m1" else 0x7E, np.uint8)
        em.dequantize_mx(top, np.array([[254]], np.uint8), fmt)
        em.dequantize_mx(top, np.array([[255]], np.uint8), fmt)
        em.recover_mx(np.concatenate([x.astype(np.float64).ravel(), _blocks([1e300, 1.0]), _blocks([np.nan]),
                                      _blocks([np.inf]), _blocks([3.4e38, 1e-45]), _blocks([-1e-320, 0.0]),
                                      _blocks([1e300, np.nan])]), fmt)  # NaN beside a huge number: not live


@pytest.mark.parametrize("fmt", em.mx.MX_ELEMENT_FORMATS)
def test_recovery_reads_float32_values_exactly(fmt):
    """Values given as float32 are read at full precision: a value that only rounds to a grid point in
    float32 (2^-149 scaled down by 2 underflows to 0 there) does not make a block recoverable."""
    tiny = np.float32(2.0**-149)
    for big in (4.0, 448.0, 1.0):
        values = _blocks([big, tiny]).astype(np.float32)
        as_f64 = em.recover_mx(values.astype(np.float64), fmt)
        got = em.recover_mx(values, fmt)
        for a, b in zip(got, as_f64):
            np.testing.assert_array_equal(a, b)
    assert em.recover_mx(_blocks([4.0, tiny]).astype(np.float32), "e2m1")[2].tolist() == [0]  # not an MX decode
