"""``moe_oracle.compare`` pinned field by field on hand-computed cases: every number a verdict is made of."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from moe_oracle.compare import compare_output, margin_of


@pytest.mark.parametrize("err, bound, margin", [
    ([], [], 0.0),  # nothing compared: no error
    ([0.0, 0.0], [0.0, 1.0], 0.0),  # 0 / 0 counts 0
    ([0.5, 1.5], [1.0, 2.0], 0.75),  # the largest ratio, not the largest error
    ([3.0, 1.0], [4.0, 0.5], 2.0),
    ([1e-300, 0.0], [0.0, 1.0], np.inf),  # an error where the bound is 0
    ([np.nan, 0.0], [1.0, 1.0], np.inf),  # NaN error
    ([np.inf, 0.0], [np.inf, 1.0], np.inf),  # inf / inf is NaN: counted inf
])
def test_margin_of(err, bound, margin):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no floating-point warning escapes
        got = margin_of(np.array(err, dtype=np.float64), np.array(bound, dtype=np.float64))
    assert got == margin and type(got) is float


def test_every_field_by_hand():
    ideal = np.array([[4.0, -2.0, 1.0, 0.0]])
    ref = np.array([[4.0, -2.0, 1.0, 0.5]])  # the quantized path costs 0.5 at the last element
    out = np.array([[4.0625, -2.0, 1.125, 0.5]])
    bound = np.array([[0.25, 1.0, 0.0625, 0.125]])
    cmp = compare_output(out, ref, ideal, bound)
    scale = 4.0  # max |ideal|
    assert cmp["max_err_ref"] == 0.125 and cmp["rel_err_ref"] == 0.125 / scale
    assert cmp["max_err_ideal"] == 0.5 and cmp["rel_err_ideal"] == 0.5 / scale
    assert cmp["quant_cost_rel"] == 0.5 / scale
    assert cmp["bound_max"] == 1.0
    # ratios 0.25, 0, 2, 0: the worst is element 2, its bound and error read there (not at the largest error)
    assert cmp["margin"] == 2.0 and not cmp["within_tolerance"]
    assert cmp["bound_at_worst"] == 0.0625 and cmp["err_at_worst"] == 0.125
    assert not cmp["at_rounding_step"]
    assert cmp["n_outside"] == 1 and cmp["nan_out"] == 0 and cmp["inf_out"] == 0
    # bf16 ulps of the reference: 0.0625 / 2^-5 = 2 at element 0, 0.125 / 2^-7 = 16 at element 2
    assert cmp["max_err_ulps"] == 16.0
    assert all(type(cmp[k]) is float for k in ("max_err_ref", "rel_err_ref", "margin", "bound_max", "max_err_ulps"))
    assert type(cmp["n_outside"]) is int and type(cmp["within_tolerance"]) is bool


def test_the_worst_element_is_the_largest_ratio_not_the_largest_error():
    ref = np.zeros(3)
    out = np.array([1.0, 0.1, 0.5])
    bound = np.array([10.0, 0.05, 1.0])
    cmp = compare_output(out, ref, ref, bound)
    assert cmp["err_at_worst"] == 0.1 and cmp["bound_at_worst"] == 0.05 and cmp["margin"] == 2.0
    assert cmp["max_err_ref"] == 1.0 and cmp["bound_max"] == 10.0


def test_passing_inside_and_at_the_step():
    ref = np.array([1.0, 2.0])
    inside = compare_output(ref + np.array([0.0, 2.0**-9]), ref, ref, np.array([2.0**-8, 2.0**-7]))
    assert inside["within_tolerance"] and inside["margin"] == 0.25 and not inside["at_rounding_step"]
    assert inside["n_outside"] == 0
    step = compare_output(ref + np.array([0.0, 2.0**-7]), ref, ref, np.array([2.0**-8, 2.0**-7]))
    assert step["within_tolerance"] and step["margin"] == 1.0 and step["at_rounding_step"]
    exact = compare_output(ref, ref, ref, np.zeros(2))  # no error, no bound: exact, not at a step
    assert exact["within_tolerance"] and exact["margin"] == 0.0 and not exact["at_rounding_step"]
    assert exact["err_at_worst"] == 0.0 and exact["max_err_ulps"] == 0.0


def test_the_scale_floor_when_the_ideal_is_zero():
    zero = np.zeros(2)
    cmp = compare_output(np.array([1e-40, 0.0]), zero, zero, np.ones(2))
    assert cmp["rel_err_ref"] == 1e-40 / 1e-30 and cmp["rel_err_ideal"] == 1e-40 / 1e-30


def test_nan_and_inf_outputs_are_counted_and_never_pass():
    ref = np.array([1.0, 1.0, 1.0, 1.0])
    out = np.array([np.nan, np.inf, -np.inf, 1.0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cmp = compare_output(out, ref, ref, np.full(4, 0.5))
    assert cmp["nan_out"] == 1 and cmp["inf_out"] == 2 and cmp["n_outside"] == 3
    assert cmp["margin"] == np.inf and not cmp["within_tolerance"]
    assert np.isnan(cmp["err_at_worst"])  # the first element ranked inf: the NaN one
    assert cmp["max_err_ref"] == np.inf  # the largest non-NaN error
    assert cmp["max_err_ulps"] == np.inf


def test_all_nan_output():
    ref = np.ones(2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cmp = compare_output(np.full(2, np.nan), ref, ref, np.ones(2))
    assert cmp["max_err_ref"] == 0.0 and cmp["max_err_ideal"] == 0.0 and cmp["max_err_ulps"] == 0.0
    assert cmp["nan_out"] == 2 and cmp["n_outside"] == 2 and cmp["margin"] == np.inf and not cmp["within_tolerance"]
    assert cmp["err_at_worst"] != cmp["err_at_worst"]  # NaN: the worst element is a NaN one
    assert cmp["bound_at_worst"] == 1.0


def test_nan_first_is_the_worst_element():
    ref = np.zeros(3)
    cmp = compare_output(np.array([0.5, np.nan, 0.75]), ref, ref, np.array([1.0, 2.0, 1.0]))
    assert cmp["bound_at_worst"] == 2.0  # element 1: NaN ranks above every finite ratio
    assert cmp["max_err_ref"] == 0.75


def test_a_tiny_bound_still_ranks():
    # bounds below 1e-300 are floored there for the ranking only: a 0 bound with an error ranks over a larger one
    ref = np.zeros(2)
    cmp = compare_output(np.array([1e-290, 1e-200]), ref, ref, np.array([0.0, 1e-150]))
    assert cmp["bound_at_worst"] == 0.0 and cmp["err_at_worst"] == 1e-290 and cmp["margin"] == np.inf


def test_empty_outputs():
    empty = np.zeros((0, 4))
    cmp = compare_output(empty, empty, empty, empty)
    assert cmp["margin"] == 0.0 and cmp["within_tolerance"] and cmp["n_outside"] == 0
    for key in ("max_err_ref", "rel_err_ref", "max_err_ideal", "rel_err_ideal", "quant_cost_rel", "bound_max",
                "bound_at_worst", "err_at_worst", "max_err_ulps"):
        assert cmp[key] == 0.0, key
    assert not cmp["at_rounding_step"] and cmp["nan_out"] == 0 and cmp["inf_out"] == 0


def test_negative_errors_are_magnitudes():
    ref = np.array([2.0, -2.0])
    cmp = compare_output(np.array([1.5, -1.0]), ref, ref, np.array([1.0, 2.0]))
    assert cmp["max_err_ref"] == 1.0 and cmp["margin"] == 0.5 and cmp["err_at_worst"] == 0.5
    assert cmp["max_err_ideal"] == 1.0 and cmp["quant_cost_rel"] == 0.0


def test_an_infinite_error_and_a_nan_rank_alike_first_come():
    """An infinite output and a NaN both rank infinite: the first of them is the worst element."""
    ref = np.zeros(2)
    cmp = compare_output(np.array([np.inf, np.nan]), ref, ref, np.array([1.0, 2.0]))
    assert cmp["bound_at_worst"] == 1.0 and cmp["err_at_worst"] == np.inf
    later = compare_output(np.array([np.nan, np.inf]), ref, ref, np.array([1.0, 2.0]))
    assert later["bound_at_worst"] == 1.0 and np.isnan(later["err_at_worst"])
    # an error where the bound is 0 ranks below a NaN (its ratio is floored at 1e-300, finite)
    zero = compare_output(np.array([1.0, np.nan]), ref, ref, np.array([0.0, 1.0]))
    assert zero["bound_at_worst"] == 1.0 and np.isnan(zero["err_at_worst"]) and zero["margin"] == np.inf
