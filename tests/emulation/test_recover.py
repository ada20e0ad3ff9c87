"""recover_mx: MX bytes back from quantize-dequantize values, exactly where the decode is unique."""

from __future__ import annotations

import numpy as np
import pytest

import emulation as em

from .nasty import random_fp32


@pytest.mark.parametrize("fmt", em.mx.MX_ELEMENT_FORMATS)
@pytest.mark.parametrize("mode", list(em.ScaleMode))
def test_recovered_bytes_decode_to_the_values_and_equal_the_quantizer_where_unique(fmt, mode, rng):
    x = random_fp32(rng, (64, 128), finite=True)
    codes, scale = em.quantize_mx(x, fmt, scale_mode=mode)
    values = em.dequantize_mx(codes, scale, fmt)
    finite = np.isfinite(values).reshape(64, 4, 32).all(-1)
    got_c, got_s, status = em.recover_mx(values, fmt)
    assert np.all(status[finite] > 0)  # every finite decode is an MX decode
    # where recovered, the bytes decode to the same values
    again = em.dequantize_mx(got_c, got_s, fmt)
    same = (again.view(np.uint32) == values.view(np.uint32)).reshape(64, 4, 32).all(-1)
    assert np.all(same[status > 0])
    # where unique and the block's amax is not on the grid's coarser scales, it is the quantizer's own
    unique = status == 1
    np.testing.assert_array_equal(got_s[unique], scale[unique])
    np.testing.assert_array_equal(got_c.reshape(64, 4, 32)[unique], codes.reshape(64, 4, 32)[unique])


def test_blocks_by_status():
    block = lambda *v: np.resize(np.array(v, np.float32), 32)  # noqa: E731
    values = np.stack([
        np.concatenate([block(6.0, 0.5), block(4.0, 2.0), block(0.0, -0.0), block(np.nan)]),
        np.concatenate([block(np.nan, 1.0), block(np.inf, 1.0), block(1.25, 1.0), block(-6.0 * 2.0**-120, 2.0**-121)]),
    ])
    codes, scale, status = em.recover_mx(values, "e2m1")
    np.testing.assert_array_equal(status, [[1, 2, 2, 1], [0, 0, 0, 1]])
    assert scale[0, 0] == 127 and scale[0, 3] == 0xFF and scale[0, 1] == 127 + 2  # coarsest: 4 -> 1 x 2^2
    assert scale[1, 3] == 127 - 120 and codes[1, 96] == 0xF and codes[1, 97] == 0x1  # -6 and 0.5 at 2^-120
    np.testing.assert_array_equal(codes[0, 64:66], [0x0, 0x8])  # the sign of zero is kept


def test_bad_length_names_the_argument():
    with pytest.raises(ValueError, match="values"):
        em.recover_mx(np.zeros((2, 31)), "e2m1")
