"""The validation rules (``emulation.validate``), pinned one by one: what each accepts and returns, and
the exact words of each refusal (the argument's name, what was expected, what came)."""

from __future__ import annotations

import numpy as np
import pytest

from emulation import validate as v


@pytest.mark.parametrize("value, expected", [(True, True), (False, False), (np.bool_(True), True),
                                             (np.bool_(False), False)])
def test_check_bool_returns_the_python_bool(value, expected):
    got = v.check_bool(value, "flag")
    assert got is expected


@pytest.mark.parametrize("check, value, words", [
    (v.check_bool, "no", "flag: expected a bool, got str 'no'"),
    (v.check_bool, 1, "flag: expected a bool, got int 1"),
    (v.check_int, 1.5, "flag: expected an integer, got float 1.5"),
    (v.check_int, True, "flag: expected an integer, got bool True"),
    (v.check_finite_number, "x", "flag: expected a finite number, got str 'x'"),
    (v.check_finite_number, True, "flag: expected a finite number, got bool True"),
    (v.check_finite_number, None, "flag: expected a finite number, got NoneType None"),
])
def test_type_refusals_name_the_argument_and_the_type(check, value, words):
    with pytest.raises(TypeError) as info:
        check(value, "flag")
    assert str(info.value) == words


def test_check_int_bounds_and_returns_int():
    assert v.check_int(np.int64(32), "n", minimum=32, multiple_of=32) == 32
    assert type(v.check_int(np.int32(7), "n")) is int
    with pytest.raises(ValueError, match=r"^n=31 is not valid; expected an integer >= 32$"):
        v.check_int(31, "n", minimum=32)
    with pytest.raises(ValueError, match=r"^n=48 is not valid; expected a multiple of 32$"):
        v.check_int(48, "n", multiple_of=32)


@pytest.mark.parametrize("value", [0, 3, -2.5, np.float32(1.25), np.int8(-4)])
def test_check_finite_number_returns_a_float(value):
    got = v.check_finite_number(value, "alpha")
    assert type(got) is float and got == float(value)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf, np.float32("nan")])
def test_check_finite_number_refuses_nan_and_inf(value):
    with pytest.raises(ValueError, match=r"^alpha=.* is not valid; expected a finite number$"):
        v.check_finite_number(value, "alpha")


def test_check_mapping_of_str_words():
    env = {"A": "1"}
    assert v.check_mapping_of_str(env) is env
    with pytest.raises(TypeError) as info:
        v.check_mapping_of_str([("A", "1")])
    assert str(info.value) == "env: expected a mapping of variable -> string (like os.environ), got list"
    with pytest.raises(TypeError) as info:
        v.check_mapping_of_str({"A": 1}, "environ")
    assert str(info.value) == "environ: 'A'=1: environment names and values must be strings, got str -> int"
    with pytest.raises(TypeError) as info:
        v.check_mapping_of_str({2: "x"})
    assert str(info.value) == "env: 2='x': environment names and values must be strings, got int -> str"


@pytest.mark.parametrize("dtype", [np.int16, np.int32, np.int64, np.uint16, np.uint64])
def test_check_byte_range_accepts_0_and_255_in_any_integer_dtype(dtype):
    got = v.check_byte_range(np.array([0, 1, 254, 255], dtype=dtype), "scale_e8m0")
    assert got.dtype == np.uint8 and got.tolist() == [0, 1, 254, 255]


def test_check_byte_range_keeps_uint8_without_a_copy():
    codes = np.arange(256, dtype=np.uint8)
    got = v.check_byte_range(codes, "codes")
    assert got is codes or np.shares_memory(got, codes)


@pytest.mark.parametrize("values, words", [([-1, 3], "[-1, 3]"), ([0, 256], "[0, 256]")])
def test_check_byte_range_refuses_out_of_range(values, words):
    with pytest.raises(ValueError) as info:
        v.check_byte_range(np.array(values, dtype=np.int32), "codes")
    assert str(info.value) == f"codes: values must lie in 0..255 (bytes), got {words}"
    with pytest.raises(TypeError) as info:
        v.check_byte_range(np.array([1.0]), "codes")
    assert str(info.value) == "codes: expected an integer (uint8) array, got dtype float64"


@pytest.mark.parametrize("dtype", [np.int8, np.uint8, np.int64, np.float32, np.float64])
def test_check_mask_values_turns_0_1_numbers_into_the_same_bools(dtype):
    got = v.check_mask_values(np.array([[1, 0, 1], [0, 0, 1]], dtype=dtype))
    assert got.dtype == bool and got.tolist() == [[True, False, True], [False, False, True]]
    as_bool = np.array([True, False])
    assert v.check_mask_values(as_bool) is as_bool


def test_check_mask_values_words():
    with pytest.raises(ValueError) as info:
        v.check_mask_values(np.array([0.5, 2, 1, 3, 4, 5, 0]))
    assert str(info.value) == "expert_mask: entries must be 0 or 1 (or bool), got [0.5, 2.0, 3.0, 4.0]"
    with pytest.raises(TypeError) as info:
        v.check_mask_values(np.array(["1"]), "mask")
    assert str(info.value) == "mask: expected a bool or 0/1 numeric array, got dtype <U1"
