"""``moe_oracle._tensors``: an implementation's tensors as NumPy, bit-for-bit comparison, and the inputs
kept and put back around a call."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from moe_oracle._tensors import Kept, same_bits, to_numpy


def test_same_bits_is_about_bytes_not_values():
    x = torch.tensor([0.0, 1.5, float("nan")], dtype=torch.bfloat16)
    assert same_bits(x, x.clone())  # a NaN equals itself (torch.equal: no)
    assert not torch.equal(x, x.clone())
    signed = x.clone()
    signed[0] = -0.0
    assert not same_bits(x, signed) and bool((x == signed)[0])  # -0 is not +0 (torch: equal values)
    assert not same_bits(x, x[:2]) and not same_bits(x.reshape(3, 1), x)  # shapes
    m = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    assert same_bits(m.t(), m.t().contiguous()) and not same_bits(m.t(), m.reshape(3, 2))  # by element, any strides
    assert same_bits(torch.empty(2, 3, device="meta"), torch.empty(2, 3, device="meta"))  # no bytes to compare
    assert not same_bits(torch.empty(2, 3, device="meta"), torch.empty(3, 2, device="meta"))


def test_kept_puts_back_in_place_and_names_in_the_given_order():
    a, b, c = torch.zeros(4), torch.ones(2, dtype=torch.int32), torch.full((3,), 7, dtype=torch.uint8)
    kept = Kept({"a": a, "b": b, "c": c})
    kept.put_back()
    assert kept.written == []
    c[0] = 9
    a[1] = -0.0
    kept.put_back()
    assert kept.written == ["a", "c"] and torch.equal(c, torch.full((3,), 7, dtype=torch.uint8))
    assert not torch.signbit(a).any()
    b.neg_()
    kept.put_back()
    b.neg_()  # undone by the next call: it was still a write
    b.neg_()
    kept.put_back()
    assert kept.written == ["a", "b", "c"] and torch.equal(b, torch.ones(2, dtype=torch.int32))


@pytest.mark.parametrize("dtype, values, want", [
    (torch.float8_e4m3fn, [1.0, -0.0, 448.0], np.array([0x38, 0x80, 0x7E], np.uint8)),  # its bytes, not values
    (torch.float8_e4m3fnuz, [1.0, 240.0], np.array([0x40, 0x7F], np.uint8)),
    (torch.uint8, [0, 255], np.array([0, 255], np.uint8)),  # 1-byte integers and bools as they are
    (torch.int8, [-1, 127], np.array([-1, 127], np.int8)),
    (torch.bool, [True, False], np.array([True, False])),
    (torch.bfloat16, [1.5, -0.0], np.array([1.5, -0.0], np.float32)),  # 16-bit floats widened exactly
    (torch.float16, [65504.0], np.array([65504.0], np.float32)),
    (torch.float32, [0.1], np.array([0.1], np.float32)),
    (torch.float64, [0.1], np.array([0.1], np.float64)),
    (torch.int32, [-7], np.array([-7], np.int32)),
])
def test_to_numpy_by_dtype(dtype, values, want):
    got = to_numpy(torch.tensor(values, dtype=torch.float64).to(dtype))
    assert got.dtype == want.dtype and got.tobytes() == want.tobytes()


def test_to_numpy_of_arrays_parameters_and_views():
    a = np.arange(6, dtype=np.int16).reshape(2, 3)
    assert to_numpy(a) is a and to_numpy([1, 2]).tolist() == [1, 2]  # not a tensor: as it is
    p = torch.nn.Parameter(torch.ones(2))  # a torch type from a submodule (torch.nn.parameter), needing grad
    assert to_numpy(p).tolist() == [1.0, 1.0]
    t = torch.arange(6, dtype=torch.float32).reshape(2, 3).t()
    assert to_numpy(t).tolist() == t.tolist() and to_numpy(t).flags.c_contiguous
