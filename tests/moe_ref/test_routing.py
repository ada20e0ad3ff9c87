"""Contracts of routing: softmax top-k and moe_align_block_size (vs brute force)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.special
import torch

from moe_ref import detect_arch, moe_align_block_size, softmax_topk


@pytest.mark.parametrize("renormalize", [True, False])
def test_softmax_topk_against_scipy(renormalize, rng):
    logits = rng.standard_normal((33, 16)).astype(np.float32)
    w, ids = softmax_topk(logits, 4, renormalize=renormalize)
    p = scipy.special.softmax(logits.astype(np.float64), axis=1)
    want_ids = np.argsort(-p, axis=1, kind="stable")[:, :4]
    np.testing.assert_array_equal(ids, want_ids)
    want = np.take_along_axis(p, want_ids, 1)
    if renormalize:
        want = want / want.sum(1, keepdims=True)
    np.testing.assert_allclose(w, want, rtol=1e-6)
    assert w.dtype == np.float32 and ids.dtype == np.int32


def test_softmax_topk_torch_in_torch_out_and_ties():
    w, ids = softmax_topk(torch.zeros(2, 8), 3)
    assert isinstance(ids, torch.Tensor) and ids.tolist() == [[0, 1, 2], [0, 1, 2]]
    assert torch.allclose(w, torch.full((2, 3), 1 / 3))
    with pytest.raises(ValueError, match="topk=9"):
        softmax_topk(np.zeros((2, 8), np.float32), 9)


def _brute_force_align(ids, block_size, E, mask):
    flat = ids.reshape(-1)
    sorted_ids, experts = [], []
    for e in range(E):
        if mask is not None and not mask[e]:
            continue
        run = [i for i in range(flat.size) if flat[i] == e]
        if not run:
            continue
        pad = (-len(run)) % block_size
        run += [flat.size] * pad
        sorted_ids += run
        experts += [e] * (len(run) // block_size)
    return np.array(sorted_ids, np.int32), np.array(experts, np.int32), len(sorted_ids)


@pytest.mark.parametrize("block_size", [1, 4, 16, 64])
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("M", [0, 1, 7, 50])
def test_align_matches_brute_force(block_size, masked, M, rng):
    E, topk = 8, 3
    ids = np.array([rng.choice(E, topk, replace=False) for _ in range(M)], np.int32).reshape(M, topk)
    mask = (rng.random(E) < 0.6).astype(np.int32) if masked else None
    got = moe_align_block_size(ids, block_size, E, expert_mask=mask)
    want = _brute_force_align(ids, block_size, E, mask)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])
    assert got[2] == want[2] and got[2] % block_size == 0


def test_align_errors_and_torch():
    with pytest.raises(ValueError, match="topk_ids: expert ids"):
        moe_align_block_size(np.array([[0, 9]]), 4, 8)
    with pytest.raises(TypeError, match="topk_ids"):
        moe_align_block_size(np.array([[0.0]]), 4, 8)
    s, e, n = moe_align_block_size(torch.tensor([[1, 0]], dtype=torch.int32), 2, 4)
    assert s.tolist() == [1, 2, 0, 2] and e.tolist() == [0, 1] and n == 4


def test_detect_arch_on_this_machine():
    expected = "cpu" if not torch.cuda.is_available() else None
    if expected:
        assert detect_arch() == "cpu"
    else:
        assert detect_arch().startswith(("sm", "gfx"))


@pytest.mark.parametrize("mask, error", [([1, 0.5, 1, 1], ValueError), ([1, float("nan"), 1, 1], ValueError),
                                         ([1, 2, 1, 1], ValueError), (["a", "b", "c", "d"], TypeError)])
def test_the_align_takes_the_mask_rule_of_every_entry_point(mask, error):
    """moe_align_block_size refuses what the reference and the kernels refuse (0 / 1 or bool only)."""
    with pytest.raises(error, match="expert_mask"):
        moe_align_block_size(np.zeros((2, 1), np.int32), 16, 4, expert_mask=np.array(mask))


def _softmax_topk_fp32_by_hand(x: np.ndarray, topk: int):
    """The router in fp32, step by step: shift by each row's max, exp, divide by the row's fp32 sum."""
    x = x.astype(np.float32)
    w, ids = [], []
    for row in x:
        p = np.exp(row - row.max())
        p = p / np.float32(p.sum(dtype=np.float32))
        order = sorted(range(row.size), key=lambda e: (-p[e], e))[:topk]  # ties: lower expert first
        sel = p[order]
        w.append(sel / np.float32(sel.sum(dtype=np.float32)))
        ids.append(order)
    return np.array(w, np.float32), np.array(ids, np.int32)


def test_softmax_topk_is_fp32_step_by_step_whatever_the_input_dtype(rng):
    """float64 logits are rounded to fp32 first; each row is shifted by its own max (rows 1000 apart
    neither overflow nor underflow); 64 tied experts keep the lower ids first (a stable order)."""
    x = np.concatenate([rng.normal(0, 3, (3, 64)), rng.normal(1000, 3, (2, 64)), rng.integers(0, 3, (4, 64)),
                        np.zeros((1, 64))])  # three values over 64 experts: ties a quicksort reorders
    w, ids = softmax_topk(x, 32)
    want_w, want_ids = _softmax_topk_fp32_by_hand(x, 32)
    np.testing.assert_array_equal(ids, want_ids)
    np.testing.assert_array_equal(w, want_w)
    assert w.dtype == np.float32 and ids.dtype == np.int32 and ids[-1].tolist() == list(range(32))


def test_routing_refusals_name_the_argument():
    with pytest.raises(ValueError, match=r"^logits: expected shape \[M, E\], got \(4,\)$"):
        softmax_topk(np.zeros(4), 1)
    with pytest.raises(TypeError, match=r"^logits: expected a real \(float or integer\) array, got dtype <U6$"):
        softmax_topk("logits", 1)
    with pytest.raises(TypeError, match=r"^logits: expected a real \(float or integer\) array, got dtype complex128$"):
        softmax_topk(np.zeros((2, 4), complex), 1)
    with pytest.raises(TypeError, match=r"^logits: expected a numeric array or tensor, got dict$"):
        softmax_topk({"a": 1}, 1)
    with pytest.raises(TypeError, match=r"^topk_ids: expected an integer array, got dtype <U3$"):
        moe_align_block_size("ids", 4, 8)
    with pytest.raises(TypeError, match=r"^topk_ids: expected an integer array, got dtype bool$"):
        moe_align_block_size(np.array([[True]]), 4, 8)
    with pytest.raises(TypeError, match=r"^topk_ids: expected a numeric array or tensor, got dict$"):
        moe_align_block_size({"a": 1}, 4, 8)
    with pytest.raises(TypeError, match=r"^expert_mask: expected a numeric array or tensor, got dict$"):
        moe_align_block_size(np.array([[0]]), 4, 8, expert_mask={"a": 1})
    with pytest.raises(ValueError, match=r"^topk_ids: expert ids must lie in \[0, 7\]$"):
        moe_align_block_size(np.array([[0, 8]]), 4, 8)  # id == E: one past the last expert
    with pytest.raises(ValueError, match=r"^block_size=0 is not valid; expected >= 1$"):
        moe_align_block_size(np.array([[0]]), 0, 8)
    with pytest.raises(ValueError, match=r"^expert_mask: expected shape \[8\], got \(4,\)$"):
        moe_align_block_size(np.array([[0]]), 4, 8, expert_mask=np.ones(4, np.int32))


def test_align_outputs_are_int32_and_torch_in_torch_out():
    s, e, n = moe_align_block_size(np.array([[3, 0], [3, 1]]), 4, 8)
    assert s.dtype == np.int32 and e.dtype == np.int32 and n == 12
    s, e, _ = moe_align_block_size(torch.tensor([[3, 0], [3, 1]]), 4, 8)
    assert isinstance(s, torch.Tensor) and isinstance(e, torch.Tensor)
    assert s.dtype == torch.int32 and e.dtype == torch.int32
