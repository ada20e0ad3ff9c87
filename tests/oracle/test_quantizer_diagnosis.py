"""How ``moe_oracle.quantizers`` reads a convention off a quantizer, pinned: the candidate ranking and
its words, the scale-exponent candidates at the ends of the e8m0 range, the tie relabelling, what the
interpreter attribution is handed, the policies' text, the per-token rows, the device and the name a
quantizer is run and reported under, the data it is given, and that no NumPy floating-point flag
escapes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import emulation as em
from moe_oracle import quantizers
from moe_oracle.contract import ContractError
from moe_oracle.inputs import BLOCK_KINDS, division_tie_values, quantizer_input
from moe_oracle.quantizers import _mx_candidates, check_quantizer, convention, tie_kinds

from .planted import _dequant, _fake, _mxfp4, _mxfp8, _nan_block_scale_254, _per_tensor, _per_token, _post, _t

KINDS = ("quantize_mxfp4", "quantize_mxfp8", "quantize_fp8_per_token", "quantize_fp8_per_tensor",
         "quantize_dequantize_mxfp4", "dequantize_mxfp4")


def _ok(*bits):
    return np.array([bits], bool)


def test_ties_between_candidates_go_to_the_expected_then_plain_ones():
    kinds = np.array([["ordinary", "ties", "ordinary"]])
    every = _ok(1, 1, 1)
    scored = [("b with the scale exponent +1, ties even", every), ("a, nibbles swapped", every), ("c", every),
              ("d", every)]
    assert convention(scored, kinds, "z")[0] == "c"  # plain before nibbles swapped before exponent-shifted
    assert convention(scored, kinds, "d")[0] == "d"  # the expected one first
    assert convention(scored[:2], kinds, "z")[0] == "a, nibbles swapped"  # a nibble reading before a shifted scale
    assert convention([("e", _ok(1, 0, 1)), ("f", _ok(1, 1, 1))], kinds, "e")[0] == "f"  # fewer misses first


def test_the_words_of_a_convention_and_the_blocks_it_still_misses():
    kinds = np.array([["ordinary", "ties", "zero", "zero", "subnormal", "huge", "nan_inf", "ordinary"]])
    ok = _ok(1, 1, 0, 0, 0, 0, 0, 1)
    best, follows, closest, missed = convention([("c", ok)], kinds, "c")
    assert best == "c" and follows == "c (except blocks: subnormal 1, huge 1, zero 2, nan_inf 1)"
    assert closest == "c (0 of 3 ordinary/tie blocks differ; also subnormal 1, huge 1, zero 2, nan_inf 1)"
    assert missed == {"ordinary": 0, "ties": 0, "zero": 2, "subnormal": 1, "huge": 1, "nan_inf": 1}
    assert convention([("c", _ok(1, 1, 1, 1, 1, 0, 1, 1))], kinds, "c")[1] == "c (except blocks: huge 1)"
    best, follows, closest, missed = convention([("c", _ok(0, 1, 1, 1, 1, 1, 1, 0))], kinds, "x")
    assert follows is None and closest == "c (2 of 3 ordinary/tie blocks differ)"
    assert missed == {k: 2 if k == "ordinary" else 0 for k in BLOCK_KINDS}
    assert convention([("c", ok | True)], kinds, "c")[1:3] == ("c", "c (0 of 3 ordinary/tie blocks differ)")


def _shifted(offset, ties="even"):
    """A quantizer whose e8m0 scale is the round_up one + ``offset`` (kept in [0, 254]), its codes encoded at
    that scale."""
    def fn(x, scale_mode="round_up"):
        x = x.float().numpy()
        _, scale = em.quantize_mx(x, "e2m1", scale_mode="round_up")
        shifted = np.clip(scale.astype(np.int32) + offset, 0, 254)
        with np.errstate(over="ignore", invalid="ignore"):
            scaled = (x.reshape(x.shape[0], -1, 32) * np.ldexp(np.float32(1), 127 - shifted)[..., None]).astype(np.float32)
        return _t(em.pack_fp4x2(em.encode(scaled, "e2m1", ties=ties).reshape(x.shape)), shifted.astype(np.uint8))
    return fn


@pytest.mark.parametrize("offset", [-1, 1])
@pytest.mark.parametrize("ties", ["even", "away"])
def test_a_scale_exponent_off_by_one_is_named_with_its_sign(offset, ties):
    """Every block kind included (zero blocks at scale 0x00, NaN blocks at 0xFF: the shifted scale stays
    within [0, 254])."""
    check = check_quantizer(_shifted(offset, ties), "quantize_mxfp4", seed=7)
    assert check.follows == f"round_up with the scale exponent {offset:+d}, ties {ties}"
    assert check.best == check.follows and all(n == 0 for n in check.best_differing.values())


def test_the_shifted_candidates_stay_in_the_scale_range():
    x = np.zeros((1, 96), np.float32)
    x[0, 32:64] = np.nan  # scale 0xFF
    x[0, 64:96] = 4.0  # scale 127 (round_up: 2^(floor(log2 4) - 2))
    for name, _, scale in _mx_candidates(x, "e2m1"):
        want = {"-1": [0, 254, 126], "+1": [1, 254, 128]}.get(name.split("exponent ")[-1][:2], [0, 255, 127])
        assert scale.dtype == np.uint8 and scale.tolist() == [want], name


def test_blocks_with_an_element_on_a_midpoint_are_ties():
    x = np.full((1, 128), 1.0, np.float32)
    x[0, ::32] = 4.0  # every block: scale 2^0 under round_up (amax 4)
    x[0, 33] = 0.25  # block 1: a midpoint (0 | 0.5)
    x[0, 70] = 2.5  # block 2: a midpoint (2 | 3)
    x[0, 100] = 3.0  # block 3: on the grid
    scale = np.full((1, 4), 127, np.uint8)
    kinds = np.array([["ordinary", "ordinary", "ordinary", "zero"]], object)
    assert tie_kinds(x, "e2m1", scale, kinds).tolist() == [["ordinary", "ties", "ties", "zero"]]
    kinds[0, 1] = "huge"  # only ordinary blocks are relabelled
    assert tie_kinds(x, "e2m1", scale, kinds).tolist() == [["ordinary", "huge", "ties", "zero"]]


def test_the_expected_convention_wins_where_every_mode_agrees():
    """Values on the e2m1 grid, amax 4 in every block: every scale mode and tie rule gives the same bytes,
    so what it follows is the one asked for."""
    rng = np.random.default_rng(1)
    x = (rng.choice([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0], (4, 64)) * rng.choice([-1, 1], (4, 64))).astype(np.float32)
    x[:, ::32] = 4.0
    for mode, ties in (("ceil", "zero"), ("even", "away"), ("round_down", "even")):
        check = check_quantizer(_mxfp4(mode=mode, ties=ties), "quantize_mxfp4", scale_mode=mode, ties=ties, x=x)
        assert check.passed and check.follows == check.best == f"{mode}, ties {ties}"


def test_two_kinds_of_differing_blocks_in_one_diagnosis():
    check = check_quantizer(_post(_mxfp4(ties="away"), _nan_block_scale_254), "quantize_mxfp4", seed=7)
    d = check.differing
    assert d["ties"] > 0 and d["huge"] > 0 and d["nan_inf"] > 0 and d["ordinary"] == d["zero"] == d["subnormal"] == 0
    n_bad = check.bytes_total - check.bytes_equal
    assert check.policies == {"nan_inf blocks": "scale byte(s) ['0xfe'], codes ['0x0'] (contract: scale 0xFF, codes 0)"}
    assert check.diagnosis() == (
        f"{n_bad} of {check.bytes_total} bytes differ from round_up, ties even; differing blocks by kind: ties: "
        f"{d['ties']}, huge: {d['huge']}, nan_inf: {d['nan_inf']}; follows round_up, ties away (except blocks: nan_inf {d['nan_inf']}) bit "
        f"for bit on ordinary and tie blocks; nan_inf blocks: scale byte(s) ['0xfe'], codes ['0x0'] (contract: scale "
        f"0xFF, codes 0)")
    assert check.best_differing == {k: d["nan_inf"] if k == "nan_inf" else 0 for k in BLOCK_KINDS}


def test_a_policy_lists_the_first_six_codes_it_saw():
    def zero_blocks_noisy(x, scale_mode="round_up"):
        q, s = em.quantize_mxfp4(x.float().numpy())
        codes = em.unpack_fp4x2(q)
        zero = np.repeat(np.abs(x.float().numpy().reshape(x.shape[0], -1, 32)).max(-1) == 0, 32, axis=1)
        codes = np.where(zero, np.arange(codes.shape[1]) % 9, codes).astype(np.uint8)
        return _t(em.pack_fp4x2(codes), s)

    check = check_quantizer(zero_blocks_noisy, "quantize_mxfp4", seed=7)
    assert check.policies == {"zero blocks": "scale byte(s) ['0x0'], codes ['0x0', '0x1', '0x2', '0x3', '0x4', "
                                             "'0x5'] (contract: scale 0x00, codes +-0)"}


def test_what_the_interpreter_attribution_is_handed_for_mxfp8(monkeypatch):
    """Its own scales and the contract's scaling, over the ordinary and tie blocks whose scale is right."""
    seen = []
    monkeypatch.setattr(quantizers, "explained_by_interpreter", lambda *a: seen.append(a) or "NOTE")
    x_in = quantizer_input(np.random.default_rng(2), 16, 128, "e4m3fn")
    x_in[0, 96:128] = 1.0  # an ordinary block with no element on a midpoint (amax 1: every value on the grid)
    x = torch.from_numpy(x_in).bfloat16().float().numpy()
    codes, scale = em.quantize_mxfp8(x)
    kinds = tie_kinds(x, "e4m3fn", scale, quantizers.classify_blocks(x))
    core = np.isin(kinds, ["ordinary", "ties"])
    assert kinds[0, 3] == "ordinary" and (kinds == "ties").any()
    rows, cols = np.nonzero(core)
    bad = codes.copy()
    bad[rows[0], cols[0] * 32 + 3] ^= 1  # a code of a core block
    off = scale.copy()
    off[rows[1], cols[1]] += 1  # a core block whose scale is wrong: left out
    nan_blocks = np.nonzero(kinds == "nan_inf")
    bad[nan_blocks[0][0], nan_blocks[1][0] * 32] ^= 2  # a non-core block's code: left out
    check = check_quantizer(lambda x_t, scale_mode="round_up", fmt="e4m3fn": _t(bad, off), "quantize_mxfp8", x=x_in)
    assert check.notes == ("NOTE",) and check.diagnosis().endswith("; NOTE")
    (pre, got, want, fmt), = seen
    keep = core.copy()
    keep[rows[1], cols[1]] = False
    el = np.repeat(keep, 32, axis=1)
    with np.errstate(over="ignore", invalid="ignore"):
        scaled = (x * np.repeat(np.ldexp(np.float32(1), 127 - off.astype(np.int32)), 32, axis=1)).astype(np.float32)
    assert fmt == "e4m3fn" and pre.dtype == np.float32
    assert np.array_equal(pre, scaled[el]) and np.array_equal(got, bad[el]) and np.array_equal(want, codes[el])
    seen.clear()
    monkeypatch.setattr(quantizers, "explained_by_interpreter", lambda *a: seen.append(a) or None)
    assert check_quantizer(lambda x_t, scale_mode="round_up", fmt="e4m3fn": _t(bad, off), "quantize_mxfp8",
                           x=x_in).notes == ()
    check_quantizer(_mxfp4(), "quantize_mxfp4", seed=1)
    assert len(seen) == 1  # fp4 codes: no cast to attribute


def test_what_the_interpreter_attribution_is_handed_per_token(monkeypatch):
    seen = []
    monkeypatch.setattr(quantizers, "explained_by_interpreter", lambda *a: seen.append(a) or "NOTE")
    x = quantizer_input(np.random.default_rng(3), 16, 64, "e4m3fnuz", per_row=True)
    x = torch.from_numpy(x).bfloat16().float().numpy()
    codes, scale = em.quantize_fp8_per_token(x, fmt="e4m3fnuz")
    own = scale.copy()
    own[9] *= 2  # its own scale on one row: the attribution sees x * (1/its scale)
    check = check_quantizer(lambda x_t, fmt="e4m3fn": _t(codes, own), "quantize_fp8_per_token", fmt="e4m3fnuz", x=x)
    assert check.notes == ("NOTE",) and check.diagnosis().endswith("; NOTE")
    (pre, got, want, fmt), = seen
    ordinary = np.isfinite(x).all(1) & (np.abs(x).max(1) > 0)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        want_pre = (x * (np.float32(1) / own)).astype(np.float32)[ordinary]
    assert fmt == "e4m3fnuz" and pre.dtype == np.float32 and np.array_equal(pre, want_pre, equal_nan=True)
    assert np.array_equal(got, codes[ordinary]) and np.array_equal(want, codes[ordinary])
    monkeypatch.setattr(quantizers, "explained_by_interpreter", lambda *a: None)
    assert check_quantizer(lambda x_t, fmt="e4m3fn": _t(codes, own), "quantize_fp8_per_token", x=x).notes == ()


def test_per_token_rows_that_no_convention_reproduces():
    x = quantizer_input(np.random.default_rng(4), 16, 64, "e4m3fn", per_row=True)
    x = torch.from_numpy(x).bfloat16().float().numpy()

    def one_row_off(x_t, fmt="e4m3fn"):
        codes, scale = em.quantize_fp8_per_token(x_t.float().numpy(), fmt=fmt)
        codes[12, 5] ^= 1
        return _t(codes, scale)

    check = check_quantizer(one_row_off, "quantize_fp8_per_token", x=x)
    ordinary = int((np.isfinite(x).all(1) & (np.abs(x).max(1) > 0)).sum())
    assert check.follows is None and check.closest == f"x * (1/s) (1 of {ordinary} rows differ)"
    assert check.differing == {"ordinary": 1, "zero": 0, "nan_inf": 0}


@pytest.mark.parametrize("kind", KINDS)
def test_the_quantizer_runs_on_the_device_asked_for(kind, monkeypatch):
    """The device as parsed (a meta device stands in for the GPU this machine may lack)."""
    asked = []
    monkeypatch.setattr("moe_oracle.quantizers.parse_device", lambda d: asked.append(d) or "meta")

    def where(*tensors, **kw):
        raise RuntimeError(f"ran on {tensors[0].device.type}")

    with pytest.raises(RuntimeError, match="^ran on meta$"):
        check_quantizer(where, kind, device="cuda:1", seed=1)
    assert asked == ["cuda:1"]


@pytest.mark.parametrize("kind", KINDS)
def test_a_wrong_return_is_reported_under_its_name(kind):
    def returns_a_list(*tensors, **kw):
        return [1, 2, 3]

    with pytest.raises(ContractError) as info:
        check_quantizer(returns_a_list, kind, seed=1)
    name = "test_a_wrong_return_is_reported_under_its_name.<locals>.returns_a_list"
    wanted = "a floating tensor [M, K] values" if kind in KINDS[4:] else "a pair (codes, scale)"
    assert str(info.value).startswith(f"{name} returned a list of 3; the contract says {wanted}")


def test_the_data_it_is_given():
    seen = []

    def spy(x_t, scale_mode="round_up"):
        seen.append(x_t.float().numpy())
        return tuple(torch.from_numpy(a) for a in em.quantize_mxfp4(x_t.float().numpy()))

    check = check_quantizer(spy, "quantize_mxfp4")
    assert check.seed == 0 and seen[0].shape == (32, 256)  # the defaults
    check_quantizer(spy, "quantize_mxfp4", seed=0)
    check_quantizer(spy, "quantize_mxfp4", seed=1)
    assert np.array_equal(seen[0], seen[1], equal_nan=True) and not np.array_equal(seen[1], seen[2], equal_nan=True)
    want = torch.from_numpy(quantizer_input(np.random.default_rng(0), 32, 256, "e2m1")).bfloat16().float().numpy()
    assert np.array_equal(seen[0], want, equal_nan=True)
    x64 = np.ones((4, 32))
    x64[0, 0] = 1 + 2.0**-8 + 2.0**-30  # as fp32 a tie of bf16 (to 1.0); as fp64 above it (to 1 + 2^-7)
    check_quantizer(spy, "quantize_mxfp4", x=x64)
    assert seen[-1][0, 0] == 1.0  # given data is fp32 first, then the input dtype


def test_per_tensor_data_of_one_scale():
    exponents = set()
    for seed in range(120):
        x = division_tie_values(np.random.default_rng(seed), (8, 64), "e4m3fn", zeros=True)
        mags = np.abs(x[x != 0])
        k = np.log2(mags.max() / 6.5)
        exponents.add(int(k))
        assert k == int(k) and (x > 0).any() and (x < 0).any() and (x == 0).any() and len(set(mags)) > 3
        assert np.array_equal(x.astype(np.float32), x) and (mags.max() == mags).sum() >= 1
    assert exponents == set(range(-10, 10))
    no_zeros = division_tie_values(np.random.default_rng(0), (300,), "e4m3fn")
    assert no_zeros.shape == (300,) and (no_zeros != 0).all()
    seen = []

    def spy(x_t, fmt="e4m3fn"):
        seen.append(x_t.float().numpy())
        return _per_tensor()(x_t, fmt=fmt)

    assert check_quantizer(spy, "quantize_fp8_per_tensor", seed=4, M=4, K=64).passed
    check_quantizer(spy, "quantize_fp8_per_tensor", seed=4, M=4, K=64)
    want = division_tie_values(np.random.default_rng(4), (4, 64), "e4m3fn", zeros=True).astype(np.float32)
    assert np.array_equal(seen[0], want) and np.array_equal(seen[1], want) and (want == 0).any()


@pytest.mark.parametrize("make, kind, fmt", [
    (lambda: _post(_mxfp4(), _nan_block_scale_254), "quantize_mxfp4", None),
    (lambda: _mxfp8(ties="away"), "quantize_mxfp8", "e4m3fnuz"),
    (lambda: _per_token(reciprocal=False), "quantize_fp8_per_token", "e4m3fn"),
    (lambda: _per_tensor(reciprocal=False), "quantize_fp8_per_tensor", "e4m3fn"),
    (lambda: _fake(exponent_off=1), "quantize_dequantize_mxfp4", None),
    (lambda: _dequant("inf"), "dequantize_mxfp4", None),
])
def test_no_floating_point_flag_escapes(make, kind, fmt):
    """NaN, Inf and huge blocks scaled, divided and cast inside: every flag is handled where it arises."""
    fn = make()
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        check = check_quantizer(fn, kind, fmt=fmt, seed=3)
    assert not check.passed


def test_fp64_values_beyond_fp32_read_as_inf_without_a_warning():
    def wide(codes_fp4x2, scale_e8m0):  # a float64 decode: 6 x 2^127 does not fit fp32
        return torch.from_numpy(em.dequantize_mxfp4(codes_fp4x2.numpy(), scale_e8m0.numpy()).astype(np.float64) *
                                np.where(np.repeat(scale_e8m0.numpy(), 32, axis=1) == 0xFE, 4.0, 1.0))

    with np.errstate(over="raise"):
        check = check_quantizer(wide, "dequantize_mxfp4")
    assert not check.passed and check.differing["ordinary"] == 1 and "inf" in check.closest


@pytest.mark.parametrize("kind, scale", [("quantize_mxfp8", np.uint8(0)), ("quantize_fp8_per_token", np.float32(0)),
                                         ("quantize_fp8_per_token", np.float32(1e-45))])
def test_no_flag_escapes_from_a_scale_that_is_nonsense(kind, scale):
    """Scale byte 0 (2^127 x x overflows), per-token scale 0 (1/0, 0 x inf) or 1e-45 (1/s overflows)."""
    def bogus(x_t, scale_mode="round_up", fmt="e4m3fn"):
        x = x_t.float().numpy()
        codes, s = em.quantize_mxfp8(x) if kind == "quantize_mxfp8" else em.quantize_fp8_per_token(x)
        return _t(codes, np.full_like(s, scale))

    with np.errstate(over="raise", invalid="raise", divide="raise"):
        check = check_quantizer(bogus, kind, seed=5)
    assert not check.passed


_CORRECT = {"quantize_mxfp4": _mxfp4, "quantize_mxfp8": _mxfp8, "quantize_fp8_per_token": _per_token,
            "quantize_fp8_per_tensor": _per_tensor, "quantize_dequantize_mxfp4": _fake}


def _writing(correct, write):
    """``correct``, then a write to the tensor it was handed (its signature kept: the oracle reads it)."""
    import functools

    @functools.wraps(correct)
    def fn(x, *args, **kwargs):
        out = correct(x, *args, **kwargs)
        if write == "one element":
            x[1, 3] = 1.5 if float(x[1, 3]) != 1.5 else 2.5
        if write == "+0 to -0":  # equal values, other bits
            zero = (x == 0) & ~torch.signbit(x)
            assert bool(zero.any())
            x[zero] = -0.0
        return out
    return fn


@pytest.mark.parametrize("input_dtype", ["bfloat16", "float32"])  # float32 on the CPU: no conversion copy
@pytest.mark.parametrize("write", [None, "one element", "+0 to -0"])
@pytest.mark.parametrize("kind", _CORRECT)
def test_a_quantizer_that_writes_to_its_input_fails(kind, write, input_dtype):
    """The bytes it returns are still right (it was handed a copy: the oracle's data is unchanged), the
    write alone fails it, named first."""
    check = check_quantizer(_writing(_CORRECT[kind](), write), kind, input_dtype=input_dtype, seed=3)
    assert check.bytes_equal == check.bytes_total and check.wrote_input == (write is not None)
    if write is None:
        assert check.verdict == "PASS" and quantizers.WROTE_INPUT not in check.diagnosis()
    else:
        assert check.verdict == "FAIL" and not check.passed
        assert check.diagnosis().startswith(f"{quantizers.WROTE_INPUT}; bit-exact under ")


def test_the_copy_a_write_is_judged_against_is_made_on_the_host(monkeypatch):
    """Not beside the input on its device: a read past the input's end would land in that copy, where
    --memcheck cannot see it (its GPU test, test_memcheck, failed so on an H100). Here: no tensor is
    cloned (a clone stays on the tensor's device) while the quantizer's input is watched."""
    cloned = []
    real_clone = torch.Tensor.clone
    monkeypatch.setattr(torch.Tensor, "clone", lambda t, *a, **k: cloned.append(t.shape) or real_clone(t, *a, **k))
    check = check_quantizer(_writing(_CORRECT["quantize_mxfp4"](), "one element"), "quantize_mxfp4", seed=3)
    assert check.wrote_input and cloned == []


def test_a_write_is_named_before_the_bytes_that_differ():
    fn = _writing(_mxfp4(ties="away"), "one element")
    check = check_quantizer(fn, "quantize_mxfp4", seed=3)
    assert check.verdict == "FAIL" and check.bytes_equal < check.bytes_total
    assert check.diagnosis().startswith(f"{quantizers.WROTE_INPUT}; {check.bytes_total - check.bytes_equal} of ")
    assert check.follows == "round_up, ties away"  # judged on the data it was given, not on what it wrote


@pytest.mark.parametrize("write", [None, "codes", "scales"])
def test_a_dequantizer_that_writes_to_its_codes_or_scales_fails(write):
    correct = _dequant()

    def fn(codes_fp4x2, scale_e8m0):
        out = correct(codes_fp4x2, scale_e8m0)
        if write == "codes":
            codes_fp4x2[3, 1] ^= 0x11
        if write == "scales":
            scale_e8m0[7, 0] = 0
        return out

    check = check_quantizer(fn, "dequantize_mxfp4")
    assert check.bytes_equal == check.bytes_total and check.wrote_input == (write is not None)
    assert check.verdict == ("PASS" if write is None else "FAIL")
    assert check.diagnosis().startswith(f"{quantizers.WROTE_INPUT}; bit-exact" if write else "bit-exact")
