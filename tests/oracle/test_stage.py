"""``moe_oracle.stage`` pinned directly: its reference and bound re-derived by hand, and each verdict and
note of ``check_stage`` reached by a stage implementation built for it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import emulation as em
from moe_oracle import stage
from moe_oracle.stage import check_stage
from moe_ref import MoEWeights, random_moe_problem
from moe_ref.products import products_for
from moe_ref.tolerance import _accumulation_bound, bf16_output_bound

from .planted import _stage

SHAPE = dict(M=6, E=4, K=64, N=64, topk=2)


def _problem(seed, M=6, E=4, K=64, N=64, topk=2):
    return random_moe_problem(np.random.default_rng([seed, M, E, K, N, topk]), M=M, E=E, H=K, I=N // 2, topk=topk)


@pytest.mark.parametrize("mul", [False, True])
def test_reference_and_bound_by_hand(mul):
    p = _problem(3)
    ref, bound, ref_f32, fp32_bound = stage._reference(p, mul, None)
    a = em.round_to_bf16(p.hidden)
    w = em.dequantize_mxfp4(p.w1, p.w1_scale).astype(np.float64)  # [E, N, K]
    products = products_for(MoEWeights.from_arrays(p.w1, p.w1_scale, p.w2, p.w2_scale))
    M, topk = p.topk_ids.shape
    for t in range(M):
        for k in range(topk):
            e = int(p.topk_ids[t, k])
            g64 = w[e] @ a[t].astype(np.float64)
            g = g64.astype(np.float32)  # the exact sum, rounded once
            b = _accumulation_bound(products, np.abs(a[t:t + 1]).astype(np.float64), e, "w1", SHAPE["K"], None)[0]
            b = b + 2.0**-24 * np.abs(g)  # the fp32 result's own rounding
            if mul:
                g = (g * p.topk_weights[t, k]).astype(np.float32)
                b = b * p.topk_weights[t, k] + 2.0**-24 * np.abs(g)
            np.testing.assert_array_equal(ref_f32[t, k], g)
            np.testing.assert_allclose(fp32_bound[t, k], b, rtol=1e-12, atol=0)
    np.testing.assert_array_equal(ref, em.round_to_bf16(ref_f32))
    np.testing.assert_array_equal(bound, bf16_output_bound(ref_f32, fp32_bound))
    assert ref.shape == (M, topk, SHAPE["N"]) and ref_f32.dtype == np.float32
    assert np.all(fp32_bound > 0)


def test_the_mma_step_is_asked_for_off_the_cpu_only(monkeypatch):
    seen = []
    real = stage._reference
    monkeypatch.setattr(stage, "_reference", lambda p, mul, mma_k, device=None: seen.append(mma_k) or real(p, mul, mma_k, device))
    check_stage(_stage(), **SHAPE, mul_routed_weight=True, seed=1, guard_bands=False)
    assert seen == [None]
    seen.clear()
    shape = (SHAPE["M"], SHAPE["topk"], SHAPE["N"])
    check_stage(_returning(np.zeros(shape)), **SHAPE, mul_routed_weight=True, seed=1, guard_bands=False)
    assert seen == [None, None]  # the other convention's reference too


def _row(fn, mul=True, **kw):
    return check_stage(fn, **SHAPE, mul_routed_weight=mul, seed=5, **kw)


def test_a_correct_stage_passes_with_its_row():
    row = _row(_stage())
    assert row["verdict"] == "PASS" and row["diagnosis"].startswith("within the bound (margin ")
    assert {k: row[k] for k in ("M", "E", "K", "N", "topk", "mul_routed_weight", "seed")} == {
        **SHAPE, "mul_routed_weight": True, "seed": 5}
    assert 0 <= row["margin"] <= 1 and row["max_err"] >= 0
    assert set(row) == {"M", "E", "K", "N", "topk", "mul_routed_weight", "seed", "max_err", "margin", "verdict",
                        "diagnosis"}
    assert _row(_stage(), mul=False)["verdict"] == "PASS"


def test_the_other_weight_convention_is_named():
    correct = _stage()

    def ignores_the_flag(hidden, w, w_scale, topk_weights, topk_ids, *, mul_routed_weight, out=None):
        return correct(hidden, w, w_scale, topk_weights, topk_ids, mul_routed_weight=not mul_routed_weight, out=out)

    for mul in (True, False):
        row = _row(ignores_the_flag, mul=mul)
        assert row["verdict"] == "FAIL" and row["margin"] > 1
        assert row["diagnosis"].startswith("outside the bound (margin ")
        assert f"matches the reference with mul_routed_weight={not mul}" in row["diagnosis"]


def test_an_unrelated_error_names_no_convention():
    correct = _stage()

    def doubled(hidden, w, w_scale, topk_weights, topk_ids, *, mul_routed_weight, out=None):
        return correct(hidden, w, w_scale, topk_weights, topk_ids, mul_routed_weight=mul_routed_weight) * 2

    row = _row(doubled)
    assert row["verdict"] == "FAIL" and "matches the reference" not in row["diagnosis"]
    assert row["diagnosis"].startswith("outside the bound (margin ") and row["margin"] > 1


def _skips_the_last_slot(computed_nan=False, accepts_out=True):
    correct = _stage()

    def run(hidden, w, w_scale, topk_weights, topk_ids, *, mul_routed_weight, out=None):
        res = correct(hidden, w, w_scale, topk_weights, topk_ids, mul_routed_weight=mul_routed_weight)
        if out is None:
            res[-1, -1] = float("nan")
            return res
        if computed_nan:
            res[-1, -1] = float("nan")
            out.copy_(res)
        else:
            out[:-1] = res[:-1]
            out[-1, :-1] = res[-1, :-1]  # the last slot of the last token is never written
        return out

    if accepts_out:
        return run

    def no_out(hidden, w, w_scale, topk_weights, topk_ids, *, mul_routed_weight):
        return run(hidden, w, w_scale, topk_weights, topk_ids, mul_routed_weight=mul_routed_weight)

    return no_out


def test_unwritten_outputs():
    row = _row(_skips_the_last_slot(), guard_bands=False)
    N = SHAPE["N"]
    total = SHAPE["M"] * SHAPE["topk"] * N
    assert row["verdict"] == "FAIL"
    assert f"{N} of {total} outputs never written (NaN from the poisoned buffer)" in row["diagnosis"]
    assert "outputs change with the buffer's prior contents" not in row["diagnosis"]  # unwritten is not "changed"
    assert "NaN where the reference is finite" not in row["diagnosis"]
    assert "matches the reference" not in row["diagnosis"]  # no convention search on unwritten outputs
    assert row["max_err"] != row["max_err"] or row["max_err"] >= 0


@pytest.mark.parametrize("accepts_out", [True, False])
def test_computed_nan(accepts_out):
    row = _row(_skips_the_last_slot(computed_nan=True, accepts_out=accepts_out), guard_bands=False)
    total = SHAPE["M"] * SHAPE["topk"] * SHAPE["N"]
    note = f"{SHAPE['N']} of {total} outputs are NaN where the reference is finite"  # the last pair's row
    assert row["verdict"] == "FAIL" and note in row["diagnosis"]
    assert ("(NaN with a zero-filled buffer too: computed, not unwritten)" in row["diagnosis"]) == accepts_out
    assert "never written" not in row["diagnosis"]
    assert row["margin"] == np.inf


def test_outputs_that_depend_on_the_buffer():
    correct = _stage()

    def accumulates(hidden, w, w_scale, topk_weights, topk_ids, *, mul_routed_weight, out=None):
        res = correct(hidden, w, w_scale, topk_weights, topk_ids, mul_routed_weight=mul_routed_weight)
        out[0, 0, 0] = res[0, 0, 0] + 1 if out[0, 0, 0] == 0 else res[0, 0, 0]  # reads the zero-filled buffer
        out[0, 0, 1:] = res[0, 0, 1:]
        out[0, 1:] = res[0, 1:]
        out[1:] = res[1:]
        return out

    row = _row(accumulates, guard_bands=False)
    assert row["verdict"] == "FAIL" and "1 outputs change with the buffer's prior contents" in row["diagnosis"]
    assert row["margin"] <= 1 and row["diagnosis"].startswith("within the bound")


def test_a_wrong_shape_is_an_error():
    correct = _stage()

    def flat(hidden, w, w_scale, topk_weights, topk_ids, *, mul_routed_weight, out=None):
        return correct(hidden, w, w_scale, topk_weights, topk_ids, mul_routed_weight=mul_routed_weight).reshape(-1, SHAPE["N"])

    with pytest.raises(ValueError) as info:
        _row(flat)
    assert str(info.value) == "moe_gemm_stage returned shape [12, 64], expected [6, 2, 64]"


def test_guard_bands_run_only_when_asked(monkeypatch):
    calls = []
    monkeypatch.setattr(stage, "guard_band_check", lambda run, inputs, got: calls.append(sorted(inputs)) or [])
    _row(_stage(), guard_bands=False)
    assert calls == []
    _row(_stage())
    assert calls == [["hidden", "topk_ids", "topk_weights", "w", "w_scale"]]


def test_a_read_outside_the_inputs_fails_even_within_the_bound(monkeypatch):
    monkeypatch.setattr(stage, "guard_band_check", lambda run, inputs, got: ["reads outside its inputs: planted"])
    row = _row(_stage())
    assert row["verdict"] == "FAIL" and row["margin"] <= 1 and "reads outside its inputs: planted" in row["diagnosis"]
    monkeypatch.setattr(stage, "guard_band_check", lambda run, inputs, got: ["a note that is no read outside"])
    row = _row(_stage())
    assert row["verdict"] == "PASS" and "a note that is no read outside" in row["diagnosis"]


def test_the_interpreter_verdict(monkeypatch):
    """Outputs outside the bound that the interpreter's own bf16 cast explains: INTERP, not FAIL (and
    FAIL again when something else is wrong too)."""
    monkeypatch.setattr(stage, "bf16_explained_by_interpreter", lambda *a: "attributed to the interpreter")
    correct = _stage()

    def off(hidden, w, w_scale, topk_weights, topk_ids, *, mul_routed_weight, out=None):
        return correct(hidden, w, w_scale, topk_weights, topk_ids, mul_routed_weight=mul_routed_weight) * 1.5

    row = _row(off, guard_bands=False)
    assert row["verdict"] == "INTERP" and row["diagnosis"].endswith("attributed to the interpreter")
    monkeypatch.setattr(stage, "guard_band_check", lambda run, inputs, got: ["reads outside its inputs: planted"])
    assert _row(off)["verdict"] == "FAIL"
    seen = []
    monkeypatch.setattr(stage, "bf16_explained_by_interpreter", lambda *a: seen.append(a) or None)
    row = _row(_skips_the_last_slot(), guard_bands=False)
    assert seen == [] and row["verdict"] == "FAIL"  # unwritten outputs are never the interpreter's


@pytest.mark.parametrize("write", ["w_scale", "topk_weights and hidden", "toggles w", "+0 to -0"])
def test_a_stage_that_writes_to_its_inputs_fails_named(write, monkeypatch):
    """Within the bound, yet FAIL: it changed what it was handed (bit for bit; a write undone by the second
    run still shows), named in the inputs' order; INTERP never covers it; its inputs are put back."""
    correct = _stage()

    def writes(hidden, w, w_scale, topk_weights, topk_ids, *, mul_routed_weight, out=None):
        if write == "toggles w":
            w.bitwise_not_()  # twice: the bytes it started with
            w = w.bitwise_not()
        got = correct(hidden, w, w_scale, topk_weights, topk_ids, mul_routed_weight=mul_routed_weight)
        if write == "w_scale":
            w_scale[0, 0, 0] += 1
        if write == "topk_weights and hidden":
            topk_weights.mul_(2.0)
            hidden[0, 0] = hidden[0, 0] + 1
        if write == "+0 to -0":
            hidden[0, :] = 0.0 if not bool(torch.signbit(hidden[0, 0])) else -0.0
            hidden[0, :] = -hidden[0, :]
        return got

    named = {"w_scale": "w_scale", "topk_weights and hidden": "hidden, topk_weights", "toggles w": "w",
             "+0 to -0": "hidden"}[write]
    monkeypatch.setattr(stage, "bf16_explained_by_interpreter", lambda *a: "attributed to the interpreter")
    row = _row(writes, guard_bands=False)
    assert row["verdict"] == "FAIL" and row["margin"] <= 1
    assert row["diagnosis"].split("; ")[:2] == [f"within the bound (margin {row['margin']:.3g})",
                                               f"it wrote to its inputs: {named}"]


def test_the_max_error_of_an_all_nan_output():
    def nan_everywhere(hidden, w, w_scale, topk_weights, topk_ids, *, mul_routed_weight, out=None):
        return torch.full((SHAPE["M"], SHAPE["topk"], SHAPE["N"]), float("nan"), dtype=torch.bfloat16)

    row = _row(nan_everywhere, guard_bands=False)
    assert np.isnan(row["max_err"]) and row["verdict"] == "FAIL" and row["margin"] == np.inf


def test_the_same_seed_draws_the_same_problem():
    correct = _stage()

    def doubled(hidden, w, w_scale, topk_weights, topk_ids, *, mul_routed_weight, out=None):
        return correct(hidden, w, w_scale, topk_weights, topk_ids, mul_routed_weight=mul_routed_weight) * 2

    one, two = _row(doubled, guard_bands=False), _row(doubled, guard_bands=False)
    assert one == two and one["max_err"] > 0
    assert check_stage(doubled, **SHAPE, mul_routed_weight=True, seed=6, guard_bands=False)["max_err"] != one["max_err"]


def test_the_device_reaches_the_references_and_the_buffers(monkeypatch):
    """Off the CPU (a meta device stands in: no data needed), both references are asked with the MMA's
    16-product step and the device, and the output buffers are made there."""
    seen, buffers = [], []
    real = stage._reference
    monkeypatch.setattr(stage, "_reference", lambda p, mul, mma_k, device=None: seen.append((mul, mma_k, str(device)))
                        or real(p, mul, None, None))
    shape = (SHAPE["M"], SHAPE["topk"], SHAPE["N"])

    def zeros(hidden, w, w_scale, topk_weights, topk_ids, *, mul_routed_weight, out=None):
        buffers.append((out.device.type, out.dtype, tuple(out.shape)))
        return torch.zeros(shape, dtype=torch.bfloat16)  # wrong: the other convention's reference is tried too

    row = check_stage(zeros, **SHAPE, mul_routed_weight=True, seed=2, device="meta", guard_bands=False)
    assert row["verdict"] == "FAIL"
    assert seen == [(True, 16, "meta"), (False, 16, "meta")]
    assert buffers == [("meta", torch.bfloat16, shape)] * 2


def _controlled(monkeypatch, *, main_bound=1.0, alt=None, alt_bound=1.0):
    """check_stage against a reference of zeros (bf16 and fp32 bound ``main_bound``) and, for the other
    weight convention, values ``alt`` with bound ``alt_bound``."""
    shape = (SHAPE["M"], SHAPE["topk"], SHAPE["N"])
    asked = []

    def fake(p, mul, mma_k, device=None):
        asked.append(mul)
        if len(asked) == 1:
            z = np.zeros(shape)
            return z, np.full(shape, main_bound), z.astype(np.float32), np.full(shape, main_bound)
        a = np.zeros(shape) if alt is None else alt
        return a, np.full(shape, alt_bound), a.astype(np.float32), np.full(shape, alt_bound)

    monkeypatch.setattr(stage, "_reference", fake)
    return shape, asked


def _returning(values):
    def fn(hidden, w, w_scale, topk_weights, topk_ids, *, mul_routed_weight, out=None):
        return torch.from_numpy(np.asarray(values, np.float32)).to(torch.bfloat16)
    return fn


def test_the_verdict_at_margin_one_and_just_above(monkeypatch):
    shape, asked = _controlled(monkeypatch)
    at = np.zeros(shape)
    at[0, 0, 0] = 1.0  # err == bound: margin exactly 1
    row = _row(_returning(at), guard_bands=False)
    assert row["verdict"] == "PASS" and row["margin"] == 1.0 and row["diagnosis"] == "within the bound (margin 1)"
    assert asked == [True]  # no convention search at margin 1
    past = np.zeros(shape)
    past[0, 0, 0] = 1.5
    asked.clear()
    row = _row(_returning(past), guard_bands=False)
    assert row["verdict"] == "FAIL" and row["margin"] == 1.5 and row["diagnosis"] == "outside the bound (margin 1.5)"
    assert asked == [True, False]


@pytest.mark.parametrize("alt_err, named", [(1.0, True), (1.5, False)])
def test_the_other_convention_is_named_up_to_margin_one(monkeypatch, alt_err, named):
    shape = (SHAPE["M"], SHAPE["topk"], SHAPE["N"])
    got = np.full(shape, 4.0)
    _controlled(monkeypatch, alt=got - alt_err, alt_bound=1.0)
    row = _row(_returning(got), guard_bands=False)
    note = "matches the reference with mul_routed_weight=False"
    assert row["verdict"] == "FAIL" and (note in row["diagnosis"].split("; ")) == named


def test_the_interpreter_is_asked_about_the_outputs_outside_only(monkeypatch):
    shape, _ = _controlled(monkeypatch)
    got = np.zeros(shape)
    got[0, 0, 0], got[0, 0, 1], got[1, 1, 2] = 1.0, 2.0, 0.5  # at the bound, outside, inside
    masks = []
    monkeypatch.setattr(stage, "bf16_explained_by_interpreter", lambda r, b, g, outside: masks.append(outside) or None)
    _row(_returning(got), guard_bands=False)
    want = np.zeros(shape, bool)
    want[0, 0, 1] = True
    assert len(masks) == 1 and np.array_equal(masks[0], want)


def test_the_exact_notes_and_their_separator(monkeypatch):
    shape, _ = _controlled(monkeypatch)

    def nan_row(hidden, w, w_scale, topk_weights, topk_ids, *, mul_routed_weight, out=None):
        res = torch.zeros(shape, dtype=torch.bfloat16)
        res[0, 0] = float("nan")
        if out is not None:
            out.copy_(res)
            return out
        return res

    total, n = int(np.prod(shape)), SHAPE["N"]
    row = _row(nan_row, guard_bands=False)
    assert row["diagnosis"] == (f"outside the bound (margin inf); {n} of {total} outputs are NaN where the reference is "
                                "finite (NaN with a zero-filled buffer too: computed, not unwritten)")

    def nan_row_no_out(hidden, w, w_scale, topk_weights, topk_ids, *, mul_routed_weight):
        return nan_row(hidden, w, w_scale, topk_weights, topk_ids, mul_routed_weight=mul_routed_weight)

    row = _row(nan_row_no_out, guard_bands=False)
    assert row["diagnosis"] == f"outside the bound (margin inf); {n} of {total} outputs are NaN where the reference is finite"


def test_no_out_buffer_means_nothing_is_unwritten():
    """Without an ``out`` parameter nothing can be left unwritten: a NaN in one call and not the next is a
    computed NaN, not an unwritten output."""
    correct = _stage()
    calls = []

    def flaky(hidden, w, w_scale, topk_weights, topk_ids, *, mul_routed_weight):
        res = correct(hidden, w, w_scale, topk_weights, topk_ids, mul_routed_weight=mul_routed_weight)
        calls.append(1)
        if len(calls) == 1:
            res[0, 0, 0] = float("nan")
        return res

    row = _row(flaky, guard_bands=False)
    total = SHAPE["M"] * SHAPE["topk"] * SHAPE["N"]
    assert row["diagnosis"].split("; ")[1:] == [f"1 of {total} outputs are NaN where the reference is finite"]


def test_an_all_nan_output_raises_no_warning():
    import warnings

    def nan_everywhere(hidden, w, w_scale, topk_weights, topk_ids, *, mul_routed_weight, out=None):
        return torch.full((SHAPE["M"], SHAPE["topk"], SHAPE["N"]), float("nan"), dtype=torch.bfloat16)

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        row = _row(nan_everywhere, guard_bands=False)
    assert np.isnan(row["max_err"])


@pytest.mark.parametrize("mma_k", [None, 16])
def test_the_bound_follows_the_mma_step(mma_k):
    p = _problem(3)
    _, _, _, fp32_bound = stage._reference(p, False, mma_k)
    a = em.round_to_bf16(p.hidden)
    w = em.dequantize_mxfp4(p.w1, p.w1_scale).astype(np.float64)
    products = products_for(MoEWeights.from_arrays(p.w1, p.w1_scale, p.w2, p.w2_scale))
    t, k = 0, 0
    e = int(p.topk_ids[t, k])
    g = (w[e] @ a[t].astype(np.float64)).astype(np.float32)
    want = _accumulation_bound(products, np.abs(a[t:t + 1]).astype(np.float64), e, "w1", SHAPE["K"], mma_k)[0]
    np.testing.assert_allclose(fp32_bound[t, k], want + 2.0**-24 * np.abs(g), rtol=1e-12, atol=0)
    other = _accumulation_bound(products, np.abs(a[t:t + 1]).astype(np.float64), e, "w1", SHAPE["K"],
                                16 if mma_k is None else None)[0]
    assert not np.allclose(want, other)  # the step matters here
