"""Contracts of the one activation-dtype selector (the decision table is enumerated from its data)."""

from __future__ import annotations

import itertools
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from moe_ref import DECISION_TABLE, detect_arch, format_decision_table, select_activation_dtype
from moe_ref.env import ENV_VARS, read_env
from moe_ref.selector import ACTIVATIONS, GATE_MODES, WEIGHT_DTYPES, normalize_arch

RULES = {r.number for r in DECISION_TABLE}

# (M, kwargs, env, expected dtype, expected rule) - at least one case per rule and per override
CASES = [
    (1, dict(arch="gfx950", weight_dtype="fp8"), {}, "fp8", 1),
    (4096, dict(arch="gfx942", weight_dtype="fp8", activation="silu"), {"AITER_MOE_FORCE_BF16_ACT": "1"}, "fp8", 1),
    (1, dict(arch="gfx1250"), {}, "fp4x2", 2),
    (1, dict(arch="gfx1250"), {"AITER_FORCE_A8W4": "1"}, "fp8", 2),
    (4096, dict(arch="gfx1250"), {"AITER_MOE_FORCE_BF16_ACT": "1"}, "fp4x2", 2),
    (255, dict(arch="gfx950"), {}, "bf16", 3),
    (256, dict(arch="gfx950"), {}, "fp4x2", 3),
    (4096, dict(arch="gfx942"), {"AITER_MOE_FORCE_BF16_ACT": "1"}, "bf16", 3),
    (511, dict(arch="gfx950", gate_mode="interleave"), {}, "bf16", 4),
    (512, dict(arch="gfx950", gate_mode="interleave"), {}, "fp8", 4),
    (4096, dict(arch="gfx942", gate_mode="interleave"), {}, "bf16", 4),
    (4096, dict(arch="gfx950", gate_mode="interleave"), {"AITER_MOE_FORCE_BF16_ACT": "true"}, "bf16", 4),
    (4096, dict(arch="gfx950", activation="silu", gate_mode="interleave"), {}, "fp8", 4),
    (1, dict(arch="gfx950", activation="silu"), {}, "fp4x2", 5),
    (4096, dict(arch="gfx942", activation="gelu"), {"AITER_MOE_FORCE_BF16_ACT": "1"}, "fp4x2", 5),
    (4096, dict(arch="gfx950", weight_dtype="bf16", quant_type="no"), {}, "bf16", 6),
]


@pytest.mark.parametrize("M, kwargs, env, dtype, rule", CASES)
def test_decision_cases(M, kwargs, env, dtype, rule):
    d = select_activation_dtype(M, env=env, **kwargs)
    assert (d.dtype, d.rule) == (dtype, rule), d.reason
    assert d.reason.startswith(f"rule {rule}:") and d.reason.endswith(f"-> {dtype}")


def test_every_rule_and_override_is_covered_by_a_case():
    hit_rules, hit_overrides = set(), set()
    for M, kwargs, env, _, _ in CASES:
        d = select_activation_dtype(M, env=env, **kwargs)
        hit_rules.add(d.rule)
        hit_overrides.add((d.rule, d.override))
    assert hit_rules == RULES
    wanted = {(r.number, o.kind) for r in DECISION_TABLE for o in r.overrides} | {(r.number, None) for r in DECISION_TABLE}
    assert wanted <= hit_overrides


@pytest.mark.parametrize(
    "var, gate_mode, default",
    [("GPTOSS_SWIGLU_MXFP4_BF16_BOUND", "separated", 256), ("AITER_MOE_BF16_FP8_BOUND", "interleave", 512)],
)
@pytest.mark.parametrize("bound", [None, 0, 1, 100, 1000])
def test_bounds_at_minus_one_equal_plus_one(var, gate_mode, default, bound):
    env = {} if bound is None else {var: str(bound)}
    b = default if bound is None else bound
    high = "fp4x2" if gate_mode == "separated" else "fp8"
    for M in (b - 1, b, b + 1):
        if M < 0:
            continue
        d = select_activation_dtype(M, arch="gfx950", gate_mode=gate_mode, env=env)
        assert d.dtype == ("bf16" if M < b else high), d.reason
        assert f"M={M} < {var}={b}" in d.reason


def _grid():
    for w, act, gm, arch, M in itertools.product(WEIGHT_DTYPES, ACTIVATIONS, GATE_MODES,
                                                 ("gfx942", "gfx950", "gfx1250", "sm90", "cpu"),
                                                 (0, 1, 255, 256, 511, 512, 8192)):
        yield M, dict(weight_dtype=w, activation=act, gate_mode=gm, arch=arch,
                      quant_type="no" if w == "bf16" else "per_1x32")


def test_force_flag_changes_only_the_swiglu_rules_and_only_to_bf16():
    changed_rules = set()
    for M, kw in _grid():
        off = select_activation_dtype(M, env={}, **kw)
        off_explicit = select_activation_dtype(M, env={"AITER_MOE_FORCE_BF16_ACT": "0"}, **kw)
        on = select_activation_dtype(M, env={"AITER_MOE_FORCE_BF16_ACT": "1"}, **kw)
        assert off.dtype == off_explicit.dtype and off.rule == on.rule
        if on.dtype != off.dtype:
            changed_rules.add(on.rule)
            assert on.dtype == "bf16"
        if on.rule in (3, 4):
            assert on.dtype == "bf16"
    assert changed_rules == {3, 4}


@pytest.mark.parametrize("var", sorted(ENV_VARS))
@pytest.mark.parametrize("value", ["yes please", "2", "", "-1", "1.5", "0x10", "on"])
def test_invalid_environment_values_raise_naming_the_variable(var, value):
    if ENV_VARS[var].kind == "bound" and value == "2":
        value = "two"
    kw = dict(arch="gfx1250") if var == "AITER_FORCE_A8W4" else dict(arch="gfx950", gate_mode="interleave")
    if var == "GPTOSS_SWIGLU_MXFP4_BF16_BOUND":
        kw = dict(arch="gfx950")
    with pytest.raises(ValueError, match=var):
        select_activation_dtype(4096, env={var: value}, **kw)


@pytest.mark.parametrize("value, expected", [("1", True), ("0", False), ("TRUE", True), ("False", False), (" 1 ", True)])
def test_boolean_spellings(value, expected):
    d = select_activation_dtype(4096, arch="gfx950", env={"AITER_MOE_FORCE_BF16_ACT": value})
    assert (d.dtype == "bf16") is expected


def test_legacy_bound_name():
    legacy = {"AITER_BF16_FP8_MOE_BOUND": "100"}
    kw = dict(arch="gfx950", gate_mode="interleave")
    assert select_activation_dtype(100, env=legacy, **kw).dtype == "fp8"
    assert "AITER_BF16_FP8_MOE_BOUND=100" in select_activation_dtype(99, env=legacy, **kw).reason
    both_same = {**legacy, "AITER_MOE_BF16_FP8_BOUND": "100"}
    assert select_activation_dtype(99, env=both_same, **kw).dtype == "bf16"
    # both set and equal: the current name is the one read (and named in the reason), the legacy one only agrees
    assert read_env("AITER_MOE_BF16_FP8_BOUND", both_same) == (100, "AITER_MOE_BF16_FP8_BOUND")
    assert "M=99 < AITER_MOE_BF16_FP8_BOUND=100" in select_activation_dtype(99, env=both_same, **kw).reason
    with pytest.raises(ValueError, match="disagree"):
        select_activation_dtype(99, env={**legacy, "AITER_MOE_BF16_FP8_BOUND": "200"}, **kw)


def test_environment_is_read_at_call_time(monkeypatch):
    monkeypatch.delenv("AITER_MOE_FORCE_BF16_ACT", raising=False)
    assert select_activation_dtype(4096, arch="gfx950").dtype == "fp4x2"
    monkeypatch.setenv("AITER_MOE_FORCE_BF16_ACT", "1")
    assert select_activation_dtype(4096, arch="gfx950").dtype == "bf16"
    monkeypatch.setenv("AITER_MOE_FORCE_BF16_ACT", "yes please")
    with pytest.raises(ValueError, match="AITER_MOE_FORCE_BF16_ACT='yes please'"):
        select_activation_dtype(4096, arch="gfx950")


@pytest.mark.parametrize(
    "kwargs, match",
    [(dict(activation="relu"), "activation='relu'.*swiglu"), (dict(gate_mode="split"), "gate_mode='split'"),
     (dict(weight_dtype="int4"), "weight_dtype='int4'"), (dict(quant_type="per_2x2"), "quant_type='per_2x2'"),
     (dict(quant_type="per_token"), "fp4x2"), (dict(arch=""), "arch=''"), (dict(arch=None), "arch=None"),
     (dict(arch="gfx9999"), "arch='gfx9999' is not a known arch; expected one of gfx90a"), (dict(arch="sm9"), "sm9")],
)
def test_unknown_values_raise_listing_valid_ones(kwargs, match):
    with pytest.raises(ValueError, match=match):
        select_activation_dtype(1, **{"arch": "gfx950", **kwargs})


@pytest.mark.parametrize("M", [-1, 1.5, True, "3"])
def test_bad_m(M):
    with pytest.raises(ValueError, match="M="):
        select_activation_dtype(M, arch="gfx950")


def test_arch_features_are_stripped():
    assert normalize_arch("gfx950:sramecc+:xnack-") == "gfx950"
    assert select_activation_dtype(4096, arch="GFX950:sramecc+", gate_mode="interleave", env={}).dtype == "fp8"


def test_printed_table_is_generated_from_the_data():
    printed = subprocess.run([sys.executable, "-m", "moe_ref"], capture_output=True, text=True, check=True).stdout
    assert printed.strip() == format_decision_table().strip()
    for rule in DECISION_TABLE:
        assert f"| {rule.number} | {rule.describe_when()} |" in printed
    for var in ENV_VARS:
        assert var in printed


@pytest.mark.parametrize("hip, props, expected", [
    ("6.4", dict(gcnArchName="gfx950:sramecc+:xnack-", major=9, minor=5), "gfx950"),
    ("6.4", dict(gcnArchName="gfx942:sramecc+:xnack-", major=9, minor=4), "gfx942"),
    (None, dict(gcnArchName="", major=9, minor=0), "sm90"),
])
def test_detect_arch_on_a_simulated_device(hip, props, expected, monkeypatch):
    """ROCm reports gcnArchName with target features; the arch is its name alone (else every rule with
    an arch condition misfires on a real MI355). CUDA gives sm<major><minor>."""
    import types

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda _: types.SimpleNamespace(**props))
    monkeypatch.setattr(torch.version, "hip", hip)
    assert detect_arch() == expected
    assert select_activation_dtype(4096, arch=detect_arch(), gate_mode="interleave", env={}).dtype == (
        "fp8" if expected == "gfx950" else "bf16")


def test_readme_decision_table_is_the_printed_one():
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    block = readme.split("<!-- decision-table:begin (python -m moe_ref) -->", 1)[1].split("<!-- decision-table:end -->")[0]
    assert block.strip() == format_decision_table().strip(), "README is stale: paste `python -m moe_ref` between the markers"
