"""Contracts of per-token / per-tensor fp8 quantization and fp4x2 packing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import emulation as em

from .nasty import random_fp32


@pytest.mark.parametrize("reciprocal, expected", [(False, 0xFA), (True, 0xFB)])
def test_numerics_md_division_vs_reciprocal_tie(reciprocal, expected):
    x = np.array([[6.5, -4.875]], np.float32)
    codes, scale = em.quantize_fp8_per_token(x, reciprocal=reciprocal)
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
