"""``moe_oracle._tensors``: bit-for-bit comparison and the inputs kept and put back around a call."""

from __future__ import annotations

import torch

from moe_oracle._tensors import Kept, same_bits


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
