"""``moe_ref.MoESpec``: one record of a call's semantics, validated once, the same through every front door."""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest

import emulation as em
from moe_ref import ACTIVATION_PATHS, MoESpec, MoEWeights, kernel_tolerance, moe_reference, random_moe_problem
from moe_ref.bounded import moe_reference_bounded
from moe_ref.spec import FIELDS, INTERMEDIATE_DTYPES, ROUNDING_DTYPES

BAD = [  # (field, value, exception, the words the message starts with)
    ("activation", "gelu", ValueError, "activation='gelu'"),
    ("gate_mode", "stacked", ValueError, "gate_mode='stacked'"),
    ("alpha", float("nan"), ValueError, "alpha=nan is not valid; expected a finite number"),
    ("alpha", "1.7", TypeError, "alpha: expected a finite number, got str '1.7'"),
    ("limit", -1.0, ValueError, "limit=-1.0"),
    ("limit", float("inf"), ValueError, "limit=inf is not valid"),
    ("scale_mode", "nearest", ValueError, "scale_mode='nearest'"),
    ("doweight_stage1", 1, TypeError, "doweight_stage1: expected a bool, got int 1"),
    ("intermediate_dtype", "fp16", ValueError, "intermediate_dtype='fp16'"),
    ("routing_weight_dtype", "fp16", ValueError, "routing_weight_dtype='fp16'"),
    ("slot_dtype", "bf8", ValueError, "slot_dtype='bf8'"),
]


@pytest.mark.parametrize("field,value,exc,words", BAD, ids=[f"{b[0]}={b[1]!r}" for b in BAD])
def test_each_field_is_validated_naming_it(field, value, exc, words):
    with pytest.raises(exc) as info:
        MoESpec(**{field: value})
    assert str(info.value).startswith(words)


@pytest.mark.parametrize("field,value,exc,words", BAD, ids=[f"{b[0]}={b[1]!r}" for b in BAD])
def test_every_front_door_refuses_what_the_spec_refuses(field, value, exc, words, rng):
    p = random_moe_problem(rng, M=2, E=2, H=32, I=32, topk=1)
    with pytest.raises(exc, match=field):
        moe_reference(*p.args(), act_dtype="bf16", **{field: value})
    with pytest.raises(exc, match=field):
        moe_reference_bounded(*p.args(), act_dtype="bf16", **{field: value})


def test_normalised_once():
    spec = MoESpec(alpha=1, limit=np.float32(7.0), scale_mode="EVEN")
    assert type(spec.alpha) is float and type(spec.limit) is float and spec.scale_mode is em.ScaleMode.EVEN
    assert spec == MoESpec(alpha=1.0, scale_mode=em.ScaleMode.EVEN) and hash(spec) == hash(spec.replace())
    changed = spec.replace(gate_mode="interleave", scale_mode="ceil")  # a changed copy, validated again
    assert changed == MoESpec(alpha=1.0, gate_mode="interleave", scale_mode=em.ScaleMode.CEIL) and spec.gate_mode == "separated"
    with pytest.raises(ValueError, match="^gate_mode='stacked' is not valid"):
        spec.replace(gate_mode="stacked")
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.alpha = 2.0


def test_the_defaults_are_the_contract():
    spec = MoESpec()
    assert (spec.activation, spec.gate_mode, spec.alpha, spec.limit, spec.scale_mode, spec.doweight_stage1) == (
        "swiglu", "separated", 1.702, 7.0, em.ScaleMode.ROUND_UP, False)
    assert (spec.intermediate_dtype, spec.routing_weight_dtype, spec.slot_dtype) == (None, "fp32", "fp32")
    assert set(INTERMEDIATE_DTYPES) == {*ACTIVATION_PATHS, "fp32"} and ROUNDING_DTYPES == ("fp32", "bf16")


@pytest.mark.parametrize("act_dtype", list(ACTIVATION_PATHS))
def test_intermediate_is_the_path_unless_set(act_dtype):
    assert MoESpec().intermediate(act_dtype) == act_dtype
    assert MoESpec(intermediate_dtype="fp32").intermediate(act_dtype) == "fp32"


def test_from_options():
    spec = MoESpec(gate_mode="interleave")
    assert MoESpec.from_options(spec) is spec
    assert MoESpec.from_options(gate_mode="interleave") == spec
    with pytest.raises(TypeError, match=r"unexpected option\(s\) \['gatemode'\]"):
        MoESpec.from_options(gatemode="interleave")
    with pytest.raises(TypeError) as info:
        MoESpec.from_options(spec, alpha=1.0, doweight_stage1=True)
    assert str(info.value) == ("spec and keyword options ['alpha', 'doweight_stage1'] given together; pass one "
                               "(spec.replace(...) changes a spec)")
    with pytest.raises(TypeError, match="spec: expected a MoESpec, got dict"):
        MoESpec.from_options({"alpha": 1.0})
    assert FIELDS == tuple(f.name for f in dataclasses.fields(MoESpec))


OPTIONS = [dict(gate_mode="interleave", scale_mode="even"), dict(alpha=0.05, limit=3.0, doweight_stage1=True),
           dict(activation="silu"), dict(intermediate_dtype="bf16", routing_weight_dtype="bf16", slot_dtype="bf16")]


@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: ",".join(o))
@pytest.mark.parametrize("act_dtype", ["fp4x2", "fp8"])
def test_a_spec_and_its_keywords_mean_the_same_call(options, act_dtype, rng):
    """The reference, its trace's bound and the bounded reference read the record, not their keywords."""
    p = random_moe_problem(rng, M=6, E=3, H=64, I=64, topk=2)
    spec = MoESpec(**options)
    by_kw, trace_kw = moe_reference(*p.args(), act_dtype=act_dtype, return_trace=True, **options)
    by_spec, trace_spec = moe_reference(*p.args(), act_dtype=act_dtype, return_trace=True, spec=spec)
    np.testing.assert_array_equal(by_kw, by_spec)
    assert not np.array_equal(by_spec, moe_reference(*p.args(), act_dtype=act_dtype))  # the options matter
    w = MoEWeights.from_arrays(p.w1, p.w1_scale, p.w2, p.w2_scale)
    bound_kw = kernel_tolerance(trace_kw, w, p.topk_weights, p.topk_ids, act_dtype=act_dtype, **options)
    bound_spec = kernel_tolerance(trace_spec, w, p.topk_weights, p.topk_ids, act_dtype=act_dtype, spec=spec)
    np.testing.assert_array_equal(bound_kw, bound_spec)
    bounded = moe_reference_bounded(*p.args(), act_dtype=act_dtype, spec=spec)
    np.testing.assert_array_equal(bounded.out, by_spec)
    np.testing.assert_array_equal(bounded.bound, bound_spec)


def test_the_readme_names_every_field():
    """The README's paragraph on a call's options names each field of the record, and no other."""
    from pathlib import Path

    text = (Path(__file__).parents[2] / "README.md").read_text()
    para = text[text.index("A call's options ("):].split("\n\n")[0]
    listed = para[para.index("(") + 1:para.index(") are one frozen record")]
    assert set(re.findall(r"`([a-z0-9_]+)`", listed)) == set(FIELDS)
