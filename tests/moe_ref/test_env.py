"""The selector's knobs read directly: the bound points, a non-string value, a bad legacy value named by
its own name."""

from __future__ import annotations

import pytest

from moe_ref.env import ENV_VARS, bound_points, read_env


def test_bound_points_are_both_sides_of_each_default_bound():
    bounds = sorted(v.default for v in ENV_VARS.values() if v.kind == "bound")
    assert bounds == [256, 512]
    assert bound_points() == (255, 256, 511, 512)


def test_a_non_string_value_is_a_type_error_naming_the_variable_and_the_type():
    with pytest.raises(TypeError, match=r"AITER_FORCE_A8W4.*must be strings, got str -> int"):
        read_env("AITER_FORCE_A8W4", {"AITER_FORCE_A8W4": 1})


def test_a_bad_legacy_value_is_named_by_the_legacy_name():
    with pytest.raises(ValueError, match="AITER_BF16_FP8_MOE_BOUND"):
        read_env("AITER_MOE_BF16_FP8_BOUND", {"AITER_BF16_FP8_MOE_BOUND": "lots"})
