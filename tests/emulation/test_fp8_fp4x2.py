"""Contracts of per-token / per-tensor fp8 quantization and fp4x2 packing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import emulation as em

from .nasty import random_fp32


@pytest.mark.parametrize("reciprocal, expected", [(None, 0xFB), (False, 0xFA), (True, 0xFB)])
def test_numerics_md_division_vs_reciprocal_tie(reciprocal, expected):
    """The default (None here: not passed) is the reciprocal, the kernels' way."""
    x = np.array([[6.5, -4.875]], np.float32)
    codes, scale = em.quantize_fp8_per_token(x, **({} if reciprocal is None else {"reciprocal": reciprocal}))
    assert scale[0, 0] == np.float32(6.5) / np.float32(448)
    assert codes[0, 1] == expected and codes[0, 0] == 0x7E


@pytest.mark.parametrize("fmt", ["e4m3fn", "e4m3fnuz"])
@pytest.mark.parametrize("reciprocal", [False, True])
def test_per_token_matches_a_torch_reference(fmt, reciprocal, rng):
    x = random_fp32(rng, (64, 256), finite=True)
    x = np.clip(x, -1e30, 1e30)
    codes, scale = em.quantize_fp8_per_token(x, fmt=fmt, reciprocal=reciprocal)
    xt = torch.from_numpy(x)
    s = xt.abs().amax(dim=-1, keepdim=True) / em.FORMATS[fmt].max_finite
    scaled = xt * (1.0 / s) if reciprocal else xt / s
    scaled = scaled.clamp(-em.FORMATS[fmt].max_finite, em.FORMATS[fmt].max_finite)  # torch may not saturate
    dtype = torch.float8_e4m3fn if fmt == "e4m3fn" else torch.float8_e4m3fnuz
    np.testing.assert_array_equal(scale, s.numpy())
    np.testing.assert_array_equal(codes, scaled.to(dtype).view(torch.uint8).numpy())


def test_zero_and_nonfinite_rows():
    x = np.ones((3, 32), np.float32)
    x[0] = 0
    x[1, 3] = np.nan
    x[2, 7] = np.inf
    codes, scale = em.quantize_fp8_per_token(x)
    assert scale[0, 0] == 0 and np.all(codes[0] == 0)
    assert np.isnan(scale[1, 0]) and np.all(codes[1] == 0x7F)
    assert np.isnan(scale[2, 0]) and np.all(codes[2] == 0x7F)
    assert np.all(np.isnan(em.dequantize_fp8(codes[1:], scale[1:])))


def test_per_tensor(rng):
    x = random_fp32(rng, (16, 64), finite=True)
    codes, scale = em.quantize_fp8_per_tensor(x)
    assert scale.shape == () and scale == np.float32(np.abs(x).max()) / np.float32(448)
    np.testing.assert_array_equal(codes, em.encode(x * (np.float32(1) / scale), "e4m3fn"))


@pytest.mark.parametrize("reciprocal, expected", [(None, 0xFB), (False, 0xFA), (True, 0xFB)])
def test_per_tensor_division_vs_reciprocal_tie(reciprocal, expected):
    """The same tie as per token, one scale for the tensor; the default is the reciprocal (kernels')."""
    x = np.array([[6.5, -4.875], [1.0, 0.0]], np.float32)
    kw = {} if reciprocal is None else {"reciprocal": reciprocal}
    codes, scale = em.quantize_fp8_per_tensor(x, **kw)
    assert scale.dtype == np.float32 and scale == np.float32(6.5) / np.float32(448)
    assert codes[0, 1] == expected and codes[0, 0] == 0x7E


@pytest.mark.parametrize("fmt", ["e4m3fn", "e4m3fnuz"])
@pytest.mark.parametrize("scale", [1.0, 0.1, 3.0, 2.0**-20, np.float32(7.5), np.array([[0.5], [0.1]])])
def test_dequantize_fp8_is_code_times_the_fp32_scale(fmt, scale):
    """Every byte x the scale rounded to fp32 first (0.1 as a Python float is not an fp32 number): one
    fp32 product, float32 out, the scale broadcasting over rows."""
    codes = np.arange(256, dtype=np.uint8).reshape(2, 128)
    got = em.dequantize_fp8(codes, scale, fmt=fmt)
    decoded = em.decode(codes, fmt).astype(np.float64)
    scale_f32 = np.asarray(scale, dtype=np.float32).astype(np.float64)
    with np.errstate(invalid="ignore"):
        expected = (decoded * scale_f32).astype(np.float32)  # exact in float64 (4 x 24 bits), rounded once
    assert got.dtype == np.float32 and got.shape == codes.shape
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("shape", [(3, 0), (0, 8), (2, 3, 0), (0,)])
def test_empty_inputs_per_token(shape):
    codes, scale = em.quantize_fp8_per_token(np.zeros(shape, np.float32))
    assert codes.shape == shape and codes.dtype == np.uint8
    assert scale.shape == shape[:-1] + (1,) and scale.dtype == np.float32 and np.all(scale == 0)


@pytest.mark.parametrize("shape", [(0,), (4, 0)])
def test_empty_input_per_tensor(shape):
    codes, scale = em.quantize_fp8_per_tensor(np.zeros(shape, np.float32))
    assert codes.shape == shape and scale.shape == () and scale.dtype == np.float32 and scale == 0


def test_per_token_rows_of_any_rank():
    """The scale is per row of the last axis at every rank: a 3-D input quantizes as its rows do; one
    element, one dimension."""
    x = random_fp32(np.random.default_rng(4), (2, 3, 64), finite=True)
    codes, scale = em.quantize_fp8_per_token(x)
    rows_codes, rows_scale = em.quantize_fp8_per_token(x.reshape(6, 64))
    assert scale.shape == (2, 3, 1)
    np.testing.assert_array_equal(codes.reshape(6, 64), rows_codes)
    np.testing.assert_array_equal(scale.reshape(6, 1), rows_scale)
    one_codes, one_scale = em.quantize_fp8_per_token(np.array([[5.0]], np.float32))
    assert one_scale[0, 0] == np.float32(5.0) / np.float32(448) and one_codes[0, 0] == 0x7E
    vec_codes, vec_scale = em.quantize_fp8_per_token(np.array([448.0, -224.0], np.float32))
    assert vec_scale.shape == (1,) and vec_scale[0] == 1 and vec_codes.tolist() == [0x7E, 0xF6]
    with pytest.raises(ValueError) as info:
        em.quantize_fp8_per_token(np.float32(1.0))
    assert str(info.value) == "x: expected at least one dimension (tokens along the last axis)"


@pytest.mark.parametrize("quantize", [em.quantize_fp8_per_token, em.quantize_fp8_per_tensor])
def test_nasty_rows_quantize_without_floating_point_warnings(quantize):
    """Zero rows (0 * 1/0), NaN/Inf rows, a subnormal amax whose reciprocal overflows: the policies hold
    and NumPy warns about nothing (a caller running with warnings as errors is not broken)."""
    x = np.ones((5, 32), np.float32)
    x[0] = 0
    x[1, 3] = np.nan
    x[2, 7] = -np.inf
    x[3] = np.float32(1e-40)
    import warnings

    for rows in (x[[0]], x[[1]], x[[2]], x[[3]], x):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            codes, scale = quantize(rows)
        assert codes.dtype == np.uint8 and scale.dtype == np.float32


def test_fp8_rejects_other_formats():
    with pytest.raises(ValueError, match="fmt='e2m1'"):
        em.quantize_fp8_per_token(np.zeros((1, 4), np.float32), fmt="e2m1")


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_fp4x2_low_nibble_is_the_even_element(axis, rng):
    codes = rng.integers(0, 16, size=(6, 8)).astype(np.uint8)
    packed = em.pack_fp4x2(codes, axis=axis)
    moved = np.moveaxis(codes, axis, -1)
    np.testing.assert_array_equal(np.moveaxis(packed, axis, -1), moved[..., ::2] | (moved[..., 1::2] << 4))
    np.testing.assert_array_equal(em.unpack_fp4x2(packed, axis=axis), codes)


@pytest.mark.parametrize("call, error, words", [
    (lambda: em.pack_fp4x2(np.zeros((3,), np.uint8)), ValueError,
     "codes: length 3 along axis 0 is odd; fp4x2 needs pairs"),
    (lambda: em.pack_fp4x2(np.array([16, 0], np.uint8)), ValueError, "codes: e2m1 codes must lie in [0, 15]"),
    (lambda: em.pack_fp4x2(np.array([-1, 0], np.int8)), ValueError, "codes: e2m1 codes must lie in [0, 15]"),
    (lambda: em.pack_fp4x2(np.zeros(2, np.float32)), TypeError,
     "codes: expected an integer array of e2m1 codes, got dtype float32"),
    (lambda: em.unpack_fp4x2(np.zeros(2, np.int32)), TypeError,
     "packed: expected a uint8 array of fp4x2 bytes, got dtype int32"),
])
def test_fp4x2_refusals_name_the_argument_in_these_words(call, error, words):
    with pytest.raises(error) as raised:
        call()
    assert str(raised.value) == words
