"""The selector's whole answer, pinned: every field of the Decision and its reason word for word, on
each path through the table (each rule's default, each override firing, each knob from its default,
its name and its legacy name), and the validation of every knob on every call."""

from __future__ import annotations

import os

import pytest

from moe_ref import select_activation_dtype
from moe_ref.selector import detect_arch, normalize_arch

# (M, keywords) -> (dtype, rule, override, reason)
CASES = [
    ((5, dict(arch="gfx950", weight_dtype="fp8")), ("fp8", 1, None, "rule 1: weight_dtype=fp8 -> fp8")),
    ((5, dict(arch="gfx1250")), ("fp4x2", 2, None, "rule 2: AITER_FORCE_A8W4=0 (default) -> fp4x2")),
    ((5, dict(arch="gfx1250", env={"AITER_FORCE_A8W4": "1"})), ("fp8", 2, "flag", "rule 2: AITER_FORCE_A8W4=1 -> fp8")),
    ((5, dict(arch="gfx950")),
     ("bf16", 3, "m_below", "rule 3: M=5 < GPTOSS_SWIGLU_MXFP4_BF16_BOUND=256 (default) is true -> bf16")),
    ((300, dict(arch="gfx950")),
     ("fp4x2", 3, None, "rule 3: AITER_MOE_FORCE_BF16_ACT=0 (default); M=300 < GPTOSS_SWIGLU_MXFP4_BF16_BOUND=256 "
                        "(default) is false -> fp4x2")),
    ((300, dict(arch="gfx950", env={"AITER_MOE_FORCE_BF16_ACT": "true"})),
     ("bf16", 3, "flag", "rule 3: AITER_MOE_FORCE_BF16_ACT=1 -> bf16")),
    ((300, dict(arch="gfx950", env={"GPTOSS_SWIGLU_MXFP4_BF16_BOUND": "400"})),
     ("bf16", 3, "m_below", "rule 3: M=300 < GPTOSS_SWIGLU_MXFP4_BF16_BOUND=400 is true -> bf16")),
    ((600, dict(arch="gfx950", gate_mode="interleave")),
     ("fp8", 4, None, "rule 4: AITER_MOE_FORCE_BF16_ACT=0 (default); arch=gfx950 in {gfx950}; M=600 < "
                      "AITER_MOE_BF16_FP8_BOUND=512 (default) is false -> fp8")),
    ((600, dict(arch="gfx942", gate_mode="interleave")),
     ("bf16", 4, "arch_not_in", "rule 4: arch=gfx942 not in {gfx950} -> bf16")),
    ((100, dict(arch="gfx950", gate_mode="interleave")),
     ("bf16", 4, "m_below", "rule 4: M=100 < AITER_MOE_BF16_FP8_BOUND=512 (default) is true -> bf16")),
    ((100, dict(arch="gfx950", gate_mode="interleave", env={"AITER_BF16_FP8_MOE_BOUND": "50"})),
     ("fp8", 4, None, "rule 4: AITER_MOE_FORCE_BF16_ACT=0 (default); arch=gfx950 in {gfx950}; M=100 < "
                      "AITER_BF16_FP8_MOE_BOUND=50 is false -> fp8")),
    ((5, dict(arch="gfx950", activation="silu")), ("fp4x2", 5, None, "rule 5: weight_dtype=fp4x2 -> fp4x2")),
    ((5, dict(arch="gfx950", weight_dtype="bf16", quant_type="no")), ("bf16", 6, None, "rule 6: weight_dtype=bf16 -> bf16")),
]


@pytest.mark.parametrize(("call", "want"), CASES, ids=[f"rule{w[1]}-{w[2]}-M{c[0]}" for c, w in CASES])
def test_every_field_and_the_reason_word_for_word(call, want):
    M, kw = call
    kw = {"env": {}, **kw}
    d = select_activation_dtype(M, **kw)
    assert (d.dtype, d.rule, d.override, d.reason) == want
    assert (d.M, d.arch) == (M, normalize_arch(kw["arch"]))


@pytest.mark.parametrize("name", ["AITER_FORCE_A8W4", "GPTOSS_SWIGLU_MXFP4_BF16_BOUND", "AITER_MOE_BF16_FP8_BOUND"])
def test_every_knob_of_the_given_env_is_validated_on_every_call(name, monkeypatch):
    """Rule 1 reads no knob; a bad value in the env handed to the call is still an error naming it (and
    the process environment, clean here, is not what is read)."""
    for var in list(os.environ):
        if var.startswith(("AITER_", "GPTOSS_")):
            monkeypatch.delenv(var)
    with pytest.raises(ValueError, match=name):
        select_activation_dtype(5, arch="gfx950", weight_dtype="fp8", env={name: "maybe"})


@pytest.mark.parametrize("arch", [":sramecc+", " :xnack-", ""])
def test_an_arch_with_no_name_is_not_valid(arch):
    with pytest.raises(ValueError, match="is not valid; expected one of gfx90a"):
        normalize_arch(arch)


def test_no_gpu_is_cpu(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert detect_arch() == "cpu"


class _Props:
    major, minor, gcnArchName = 9, 0, "gfx942:sramecc+:xnack-"


def _fake_gpu(monkeypatch, hip: str | None):
    import torch

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 3)
    asked = []
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: asked.append(device) or _Props())
    monkeypatch.setattr(torch.version, "hip", hip)
    return asked


@pytest.mark.parametrize(("hip", "want"), [(None, "sm90"), ("6.4.0", "gfx942")])
def test_the_current_device_is_asked_and_named(monkeypatch, hip, want):
    asked = _fake_gpu(monkeypatch, hip)
    assert detect_arch() == want and asked == [3]


def test_the_interpreter_wins_over_a_visible_gpu(monkeypatch):
    _fake_gpu(monkeypatch, None)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert detect_arch() == "cpu"


def test_no_gpu_without_the_interpreter_is_cpu(monkeypatch):
    import torch

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert detect_arch() == "cpu"


def test_no_torch_is_cpu(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "torch", None)
    assert detect_arch() == "cpu"


def test_texts_of_several_values():
    """The table's texts in general, not only for today's one-valued rules: several allowed values, several
    archs (rules a future table may hold)."""
    from moe_ref.selector import Override, Rule, _fire, known_archs_text

    rule = Rule(9, ((("arch", ("gfx942", "gfx950")), ("gate_mode", ("interleave",))), (("weight_dtype", ("bf16",)),)),
                "bf16")
    assert rule.describe_when() == "(arch in {gfx942, gfx950} and gate_mode=interleave) or (weight_dtype=bf16)"
    override = Override("arch_not_in", "bf16", archs=("gfx942", "gfx950"))
    assert override.describe() == "arch not in {gfx942, gfx950} -> bf16"
    assert _fire(override, 8, "gfx90a", {}) == (True, "arch=gfx90a not in {gfx942, gfx950}")
    assert _fire(override, 8, "gfx942", {}) == (False, "arch=gfx942 in {gfx942, gfx950}")
    assert known_archs_text() == ("gfx90a, gfx942, gfx950, gfx1100, gfx1101, gfx1200, gfx1201, gfx1250, sm<NN> "
                                  "(NVIDIA, e.g. sm90, sm100) or cpu")
