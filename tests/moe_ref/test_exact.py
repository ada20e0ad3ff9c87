"""``moe_ref.exact`` against exact rational arithmetic: every dot product of ``exact_matmul_f32`` and
every sum of ``round_parts_f32`` / ``round_scaled_int_to_f32`` equals the fp32 nearest (ties to even,
inf past fp32's range) to the exact value computed with ``fractions.Fraction``, on inputs built to
reach each of its three tiers (rows that fit float64, rows split into parts, cells summed with
integers), midpoints between fp32 neighbours, cancellation across 200 bits, and fp32's overflow edge."""

from __future__ import annotations

import math
import warnings
from fractions import Fraction

import numpy as np
import pytest

from moe_ref.exact import (
    accumulation_bits,
    exact_matmul_f32,
    exact_round_f32,
    round_parts_f32,
    round_scaled_int_to_f32,
    row_bits,
)


def f32_nearest(q: Fraction) -> float:
    """The fp32 nearest to the rational ``q``, ties to even; +-inf from 2^128 - 2^103 up (the oracle)."""
    if q == 0:
        return 0.0
    sign, a = (-1.0 if q < 0 else 1.0), abs(q)
    e = a.numerator.bit_length() - a.denominator.bit_length()
    while Fraction(2) ** e > a:
        e -= 1
    while Fraction(2) ** (e + 1) <= a:
        e += 1
    ulp = Fraction(2) ** (max(e, -126) - 23)
    n, rest = divmod(a, ulp)
    if rest > ulp / 2 or (rest == ulp / 2 and n % 2 == 1):
        n += 1
    value = n * ulp
    return sign * math.inf if value >= 2**128 else sign * float(value)


def exact_dots(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    xs = [[Fraction(float(v)) for v in row] for row in x]
    ws = [[Fraction(float(v)) for v in row] for row in w]
    return np.array([[f32_nearest(sum(a * b for a, b in zip(r, c))) for c in ws] for r in xs], np.float32)


def _assert_same(got, want):
    np.testing.assert_array_equal(np.asarray(got, np.float32).view(np.uint32) & 0x7FFFFFFF,
                                  np.asarray(want, np.float32).view(np.uint32) & 0x7FFFFFFF)
    np.testing.assert_array_equal(np.sign(got), np.sign(want))


def _wide(rng, shape, low, high, bits=24):
    """fp32 values of random sign, ``bits`` significant bits, exponents spread over [low, high)."""
    mant = rng.integers(1 << (bits - 1), 1 << bits, size=shape)
    exps = rng.integers(low, high, size=shape)
    return (np.ldexp(mant.astype(np.float64), exps - bits + 1) * rng.choice([-1, 1], size=shape)).astype(np.float32)


@pytest.mark.parametrize("span", ["narrow", "split", "integers"])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_every_tier_equals_exact_rational_arithmetic(span, seed, monkeypatch):
    """narrow: tier 1 (the float64 product is exact); split: rows spanning ~200 bits, weights narrow
    (tier 2: parts); integers: weights spanning 60 bits leave no room for parts (tier 3)."""
    rng = np.random.default_rng(seed)
    K = 24
    x = _wide(rng, (6, K), -4, 4, bits=8) if span == "narrow" else _wide(rng, (6, K), -100, 100)
    w = _wide(rng, (5, K), -30, 30) if span == "integers" else _wide(rng, (5, K), -2, 2, bits=8)
    x[0, :] = 0.0  # a row of zeros
    x[1, K // 2:] = 0.0
    need = accumulation_bits(x, w)
    assert (need > 53).any() == (span != "narrow")
    import moe_ref.exact as exact

    calls = {"parts": 0, "integers": 0}
    for name, key in (("round_parts_f32", "parts"), ("round_scaled_int_to_f32", "integers")):
        real = getattr(exact, name)
        monkeypatch.setattr(exact, name, lambda *a, _real=real, _key=key: (calls.__setitem__(_key, calls[_key] + 1),
                                                                           _real(*a))[1])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = exact_matmul_f32(x, w)
        again = exact_matmul_f32(x.astype(np.float64), w.astype(np.float64), w_bits=row_bits(w))
    assert got.dtype == np.float32 and got.shape == (6, 5)
    assert (calls["parts"] > 0, calls["integers"] > 0) == {"narrow": (False, False), "split": (True, False),
                                                            "integers": (False, True)}[span], calls
    _assert_same(got, exact_dots(x, w))
    _assert_same(again, got)
    # from a float64 product and float64 rows, without a matmul for parts: every wide cell by integers
    product = x.astype(np.float64) @ w.astype(np.float64).T
    _assert_same(exact_round_f32(x.astype(np.float64), product, row_bits(w), w.__getitem__), got)


def _midpoint_rows():
    """Rows whose exact dot with ones lands on fp32 midpoints after cancelling 2^100 (tier 2 or 3)."""
    one, big, half_ulp = 1.0, 2.0**100, 2.0**-24
    rows = [
        [big, -big, one, half_ulp],                    # 1 + 2^-24: tie, to even 1.0
        [big, -big, one + 2.0**-23, half_ulp],         # tie between odd 1+2^-23 and 1+2^-22: up
        [big, -big, one, half_ulp, 2.0**-100],         # just past the midpoint: up
        [big, -big, one, half_ulp, -(2.0**-100)],      # just below: down
        [-big, big, -one, -half_ulp],                  # negative tie: to even -1.0
        [big, -big],                                   # exact zero
    ]
    return np.array([r + [0.0] * (8 - len(r)) for r in rows], np.float32)


def test_midpoints_after_cancellation_round_to_even():
    x = _midpoint_rows()
    w = np.ones((1, 8), np.float32)
    got = exact_matmul_f32(x, w)[:, 0]
    want = [1.0, 1.0 + 2.0**-22, 1.0 + 2.0**-23, 1.0, -1.0, 0.0]
    np.testing.assert_array_equal(got, np.array(want, np.float32))
    _assert_same(got[:, None], exact_dots(x, w))
    wide_w = np.ones((1, 8), np.float32)
    wide_w[0, 7] = 2.0**60  # weights spanning 61 bits: the cells go to integers (tier 3)
    _assert_same(exact_matmul_f32(x, wide_w), exact_dots(x, wide_w))


def test_round_parts_f32_on_expansions():
    """Parts summing to midpoints, to the overflow edge and to zero; and random wide parts."""
    F32_MAX = float(np.finfo(np.float32).max)
    cases = [
        ([2.0**60, -(2.0**60), 1.0, 2.0**-24], 1.0),
        ([2.0**60, 1.0 + 2.0**-23, -(2.0**60), 2.0**-24], 1.0 + 2.0**-22),
        ([1.0, 2.0**-24, 2.0**-80], 1.0 + 2.0**-23),
        ([-1.0, -(2.0**-24), 2.0**-80], -1.0),
        ([F32_MAX, 2.0**103], math.inf),                 # max + half its ulp: a tie, up to 2^128: inf
        ([F32_MAX, 2.0**103, -(2.0**-900)], F32_MAX),     # just below the overflow edge
        ([-F32_MAX, -(2.0**103)], -math.inf),
        ([3.0, -3.0, 2.0**-1000, -(2.0**-1000)], 0.0),
        ([2.0**-149, 2.0**-151], 2.0**-149),
    ]
    parts = [np.array([c[0][k] if k < len(c[0]) else 0.0 for c in cases]) for k in range(4)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = round_parts_f32(parts)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, np.array([c[1] for c in cases], np.float32))
    rng = np.random.default_rng(7)
    wide = [np.ldexp(rng.standard_normal(200), rng.integers(-60, 60, 200)) for _ in range(5)]
    want = [f32_nearest(sum(Fraction(float(p[i])) for p in wide)) for i in range(200)]
    _assert_same(round_parts_f32(wide), np.array(want, np.float32))


@pytest.mark.parametrize("n, q", [(0, 5), (1, 0), (-1, 0), (3, -1), ((1 << 24) + 1, 0), ((1 << 24) + 3, 0),
                                  (-((1 << 25) + 2), -3), (1, -149), (1, -150), (3, -151), (1, -160),
                                  ((1 << 24) - 1, 104), (1 << 24, 104), (1, 1000), (-1, 2000), (7, 120),
                                  (12345678901234567890123, -50)])
def test_round_scaled_int_to_f32(n, q):
    got = round_scaled_int_to_f32(n, q)
    assert isinstance(got, np.float32)
    want = np.float32(f32_nearest(Fraction(n) * Fraction(2) ** q))
    assert got.view(np.uint32) & 0x7FFFFFFF == want.view(np.uint32) & 0x7FFFFFFF and np.sign(got) == np.sign(want)


def test_exact_round_f32_keeps_the_product_where_it_must():
    """No columns, no rows, non-finite inputs: the float64 product's own fp32, as documented."""
    x = np.array([[1.0, np.inf]], np.float32)
    w = np.ones((2, 2), np.float32)
    product = x.astype(np.float64) @ w.T.astype(np.float64)
    with np.errstate(invalid="ignore"):
        got = exact_round_f32(x, product, row_bits(w), w.__getitem__)
    np.testing.assert_array_equal(got, product.astype(np.float32))
    no_bits = (np.zeros(3, np.int32), np.zeros(3, np.int32))
    empty = exact_round_f32(np.zeros((2, 0), np.float32), np.zeros((2, 3)), no_bits, None)
    assert empty.shape == (2, 3) and empty.dtype == np.float32 and not empty.any()


def test_accumulation_bits_by_hand():
    """Bits of the widest partial sum: high exponents + ceil(log2 K) - lowest bits; 0 for zero rows."""
    x = np.array([[1.0, 2.0**-10, 0.0], [0.0, 0.0, 0.0], [2.0**20, 2.0**20, 2.0**20]], np.float32)
    w = np.array([[1.0, 1.0, 1.0], [2.0**30, 1.0, 2.0**-5]], np.float32)
    got = accumulation_bits(x, w)
    # row 0: x bits [-10, 1), w row 0 [0, 1), row 1 [-5, 31); K=3: +2
    np.testing.assert_array_equal(got, [[1 + 1 + 2 - (-10), 1 + 31 + 2 - (-10 - 5)], [0, 0], [21 + 1 + 2 - 20, 21 + 31 + 2 - 15]])


@pytest.mark.parametrize("span", ["narrow", "split", "integers"])
def test_any_float_input_is_taken_as_its_fp32(span):
    """The functions take array-likes of any float dtype as their fp32 values (the cast is part of the
    contract, not the caller's): float64 inputs that are not fp32 values, in each tier, give exactly
    what their fp32 casts give; bit ranges likewise."""
    rng = np.random.default_rng(7)
    lows = {"narrow": (-4, 4), "split": (-60, 60), "integers": (-140, 120)}[span]
    x32, w32 = _wide(rng, (3, 16), *lows), _wide(rng, (4, 16), -8, 8)
    # 0.3 ulp off: not fp32 values (the cast rounds them back), yet far enough to move a float64 dot's rounding
    x64 = x32 + 0.3 * np.spacing(x32).astype(np.float64)
    w64 = w32 + 0.3 * np.spacing(w32).astype(np.float64)
    assert not np.array_equal(x64, x32) and np.array_equal(x64.astype(np.float32), x32)
    want = exact_dots(x32, w32)
    _assert_same(exact_matmul_f32(x64, w64), want)
    _assert_same(exact_matmul_f32(x64.tolist(), w64.tolist()), want)
    for a64, a32 in ((x64, x32), (w64, w32)):
        for got, expected in zip(row_bits(a64), row_bits(a32)):
            np.testing.assert_array_equal(got, expected)
            assert got.dtype.kind == "i"  # bit positions are integers (and the zero-row sentinel an int32 max)
    np.testing.assert_array_equal(accumulation_bits(x64, w64), accumulation_bits(x32, w32))
    # a tie: x's fp32 dot is 1 + 2^-24 exactly (to even: 1); 0.4 ulp more in x, uncast, would round it up
    tie_x, tie_w = np.array([[1.0 + 0.4 * 2.0**-23, 1.0]]), np.array([[1.0, 2.0**-24]])
    assert exact_matmul_f32(tie_x, tie_w)[0, 0] == 1.0 == exact_matmul_f32(tie_x.tolist(), tie_w.tolist())[0, 0]
    assert exact_matmul_f32(tie_w, tie_x)[0, 0] == 1.0  # the same on the weights' side
    product = x32.astype(np.float64) @ w32.astype(np.float64).T
    _assert_same(exact_round_f32(x64, product, row_bits(w32), w32.__getitem__, True,
                                 lambda a: np.asarray(a, np.float64) @ w32.astype(np.float64).T), want)


def test_non_finite_and_overflowing_products_raise_no_warning():
    """inf * 0 (NaN), an fp32 overflow of a finite exact sum and an inf input pass through without a
    NumPy RuntimeWarning reaching the caller (non-finite values are reported as such, not warned about)."""
    x = np.array([[np.inf, 1.0], [3e38, 3e38], [1.0, 2.0]], np.float32)
    w = np.array([[0.0, 1.0], [3e38, 1.0]], np.float32)
    with np.errstate(invalid="ignore", over="ignore"):
        product = x.astype(np.float64) @ w.astype(np.float64).T
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = exact_matmul_f32(x, w)
        rounded = exact_round_f32(x, product, row_bits(w), w.__getitem__, False)
    assert np.isnan(got[0, 0]) and np.isinf(got[0, 1]) and got[1, 0] == np.float32(3e38) and np.isinf(got[1, 1])
    assert got[2, 0] == 2.0
    np.testing.assert_array_equal(np.isnan(rounded), np.isnan(got))


def test_tier_boundaries_by_hand():
    """Rows at the edges of the tiers, each against exact arithmetic: [2^53, 1, -2^53] . [1, 1, 1] is 1,
    while float64 in order gives 0 (2^53 + 1 rounds to 2^53): the row's 54 bits exceed the room of 53
    - 1 - ceil(log2 3) = 50, whatever the tiers' margins; a zero weight row (no bits: its sentinel
    must not enter the room) and a zero x row; tier 3 without a ``matmul`` (integers only)."""
    x = np.array([[2.0**53, 1.0, -(2.0**53)], [0.0, 0.0, 0.0], [1.0, 2.0**-30, 3.0]], np.float32)
    w = np.array([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [1.0, 1.0, -1.0]], np.float32)
    want = exact_dots(x, w)
    assert want[0, 0] == 1.0 and (x.astype(np.float64) @ w.astype(np.float64).T)[0, 0] == 0.0
    _assert_same(exact_matmul_f32(x, w), want)
    product = x.astype(np.float64) @ w.astype(np.float64).T
    _assert_same(exact_round_f32(x, product, row_bits(w), w.__getitem__), want)  # no matmul: tier 3 for row 0
    bits = accumulation_bits(x, w)
    assert (bits[:, 1] == 0).all() and (bits[1] == 0).all()  # zero rows need no bits
    assert bits[0, 0] == 54 + 1 + 2 and bits[2, 2] == 2 + 1 + 2 + 30  # h_x + h_w + ceil(log2 3) - l_x - l_w
    assert accumulation_bits(np.array([[3.0]], np.float32), np.array([[1.0]], np.float32))[0, 0] == 3  # K=1: + 0


def test_bits_in_the_lowest_normal_binade_and_overflow_without_warnings():
    """Values in [2^-126, 2^-125) carry their implicit bit (1.5 * 2^-126: bits 2^-127 .. 2^-126, so
    (lowest, highest + 1) = (-127, -125)); a subnormal has none (2^-149: (-149, -148)). An integer sum
    past fp32's range rounds to inf without a NumPy warning."""
    x = np.array([[1.5 * 2.0**-126], [2.0**-149], [1.0 + 2.0**-23]], np.float32)
    low, high = row_bits(x)
    np.testing.assert_array_equal(low, [-127, -149, -23])
    np.testing.assert_array_equal(high, [-125, -148, 1])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert round_scaled_int_to_f32(1, 200) == np.inf and round_scaled_int_to_f32(-3, 127) == -np.inf


def test_round_parts_f32_of_one_part_is_its_rounding():
    """One part (no expansion to grow): its own fp32 rounding, ties to even, overflow to inf."""
    part = np.array([1.5, 2.0**-149, 1.0 + 2.0**-24, 1.0 + 3 * 2.0**-24, 2.0**129, -(2.0**-151)])
    got = round_parts_f32([part])
    np.testing.assert_array_equal(got, np.array([1.5, 2.0**-149, 1.0, 1.0 + 2.0**-22, np.inf, -0.0], np.float32))
    assert got.dtype == np.float32


def test_round_parts_f32_exact_zero_is_plus_zero():
    """An exact zero sum is +0 whatever the parts' zeros (an accumulator that starts at +0), and a sum
    that rounds to zero keeps its sign."""
    got = round_parts_f32([np.array([-0.0, -0.0, 3.0, -(2.0**-151)]), np.array([-0.0, 0.0, -3.0, 0.0])])
    np.testing.assert_array_equal(np.signbit(got), [False, False, False, True])
    np.testing.assert_array_equal(got, np.zeros(4, np.float32))
    assert not np.signbit(round_parts_f32([np.array([-0.0])]))[0]


_F32_MAX = float(np.finfo(np.float32).max)


@pytest.mark.parametrize("exact_sum, guess, want", [
    ([1.0, 2.0**-24], 1.0 + 2.0**-23, 1.0),                        # a tie, guess on the odd side: to even
    ([-1.0, -(2.0**-24)], -(1.0 + 2.0**-23), -1.0),
    ([1.0, 3 * 2.0**-24], 1.0 + 2.0**-23, 1.0 + 2.0**-22),           # a tie, odd guess below it: up to even
    ([1.0, 2.0**-24], 1.0, 1.0),                                   # an even guess on a tie stays
    ([1.0, 2.0**-24, 2.0**-80], 1.0, 1.0 + 2.0**-23),              # just past the tie: the odd neighbour
    ([1.0], 1.0 + 2.0**-21, 1.0),                                  # 4 ulps above: several passes
    ([1.0], 1.0 - 2.0**-22, 1.0),                                  # 8 ulps below (the binade below)
    ([_F32_MAX, 2.0**103], _F32_MAX, math.inf),                    # the overflow edge is a tie: up to inf
    ([-_F32_MAX, -(2.0**103)], -_F32_MAX, -math.inf),
    ([_F32_MAX, 2.0**102], math.inf, _F32_MAX),                    # below the edge: inf moves back
    ([2.0**200], math.inf, math.inf),                              # far past the edge: inf stays
    ([-(2.0**200)], -math.inf, -math.inf),
    ([2.0**200], _F32_MAX, math.inf),
    ([2.0**-150], 2.0**-149, 0.0),                                 # half the least subnormal: to even (0)
    ([2.0**-150, 2.0**-160], 0.0, 2.0**-149),
])
def test_settle_f32_from_a_wrong_guess(exact_sum, guess, want):
    """``settle_f32`` moves a guess a few ulps off (or on the wrong side of a tie, or of the overflow
    edge) to the nearest fp32 of the exact sum, ties to even."""
    from moe_ref.exact import _grow, settle_f32

    expansion = [np.array([exact_sum[0]])]
    for part in exact_sum[1:]:
        expansion = _grow(expansion, np.array([part]))
    assert f32_nearest(sum(Fraction(v) for v in exact_sum)) == want  # the case is what it says
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = settle_f32(expansion, np.array([guess], np.float32))
        from_f64 = settle_f32(expansion, np.array([guess]))  # a float64 guess is taken as its fp32
    assert got.dtype == np.float32 and from_f64.dtype == np.float32
    _assert_same(got, np.array([want], np.float32))
    _assert_same(from_f64, np.array([want], np.float32))


def test_settle_f32_refuses_a_guess_too_far():
    """A guess that does not settle in 64 passes is an error, never a wrong value."""
    from moe_ref.exact import settle_f32

    with pytest.raises(AssertionError, match="^settle_f32 did not settle$"):
        settle_f32([np.array([1.0])], np.array([2.0], np.float32))


@pytest.mark.parametrize("room", [1, 7, 24])
def test_split_rows_parts_hold_their_bits(room):
    """Part j of ``split_rows`` holds the bits of its row from 2^(low + j room) to 2^(low + (j + 1) room)
    (the last the rest), and the parts sum to the row exactly."""
    from moe_ref.exact import split_rows

    rng = np.random.default_rng(room)
    x = _wide(rng, (6, 9), -40, 40)
    x[1] = np.float32(2.0**-149) * np.arange(9)  # subnormals
    x[2, :] = 0
    x[2, 3] = -(2.0**5 + 2.0**-10)
    low, high = row_bits(x)
    low = np.where(low > high, 0, low)  # the zero row's empty range
    n = max(1, -(-int((high - low).max()) // room))
    parts = split_rows(x, low, room, n)
    assert len(parts) == n
    for r in range(x.shape[0]):
        for c in range(x.shape[1]):
            assert sum(Fraction(float(p[r, c])) for p in parts) == Fraction(float(x[r, c]))
            for j, p in enumerate(parts):
                v = Fraction(float(p[r, c]))
                unit = Fraction(2) ** (int(low[r]) + j * room)
                assert (v / unit).denominator == 1, (r, c, j)  # no bit below its range
                if j < n - 1:
                    assert abs(v) < unit * 2**room, (r, c, j)  # none above it
