"""Each input that once gave a silently wrong answer or a raw exception: now a clear refusal naming
the argument, or the right answer (non-contiguous inputs are handled)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import emulation as em
import moe_kernels as mk
from moe_ref import moe_reference, random_moe_problem, select_activation_dtype

SHAPE = dict(M=6, E=4, H=64, I=32, topk=2)


def _problem(rng):
    return random_moe_problem(rng, **SHAPE)


def test_non_contiguous_topk_ids_give_the_contiguous_answer(rng):
    p = _problem(rng).to_torch()
    wide = torch.zeros((SHAPE["M"], 2 * SHAPE["topk"]), dtype=torch.int32)
    wide[:, ::2] = p.topk_ids
    sliced = wide[:, ::2]
    assert not sliced.is_contiguous()
    args = list(p.args())
    want = mk.fused_moe(*args, arch="gfx950")
    args[6] = sliced
    got = mk.fused_moe(*args, arch="gfx950")
    assert torch.equal(got.view(torch.int16), want.view(torch.int16))
    mask = torch.tensor([1, 0, 1, 1], dtype=torch.int32)
    args_masked = list(p.args())
    want_m = mk.fused_moe(*args_masked, arch="gfx950", expert_mask=mask)
    args_masked[6] = sliced
    assert torch.equal(mk.fused_moe(*args_masked, arch="gfx950", expert_mask=mask).view(torch.int16),
                       want_m.view(torch.int16))


@pytest.mark.parametrize("dtype", [torch.int8, torch.int16, torch.int64, torch.uint8])
def test_every_integer_id_dtype_is_accepted_alike(dtype, rng):
    p = _problem(rng).to_torch()
    args = list(p.args())
    want = mk.fused_moe(*args, arch="gfx950")
    args[6] = p.topk_ids.to(dtype)
    assert torch.equal(mk.fused_moe(*args, arch="gfx950").view(torch.int16), want.view(torch.int16))


@pytest.mark.parametrize("value", ["no", "yes", 1, None])
def test_doweight_stage1_must_be_a_bool(value, rng):
    p = _problem(rng).to_torch()
    with pytest.raises(TypeError, match="doweight_stage1: expected a bool"):
        mk.fused_moe(*p.args(), arch="gfx950", doweight_stage1=value)
    with pytest.raises(TypeError, match="doweight_stage1: expected a bool"):
        moe_reference(*_problem(rng).args(), act_dtype="bf16", doweight_stage1=value)


@pytest.mark.parametrize("option", [dict(activation="gelu"), dict(alpha=float("inf")), dict(limit=-1.0),
                                    dict(scale_mode="nearest"), dict(gatemode="interleave")], ids=str)
def test_kernels_and_reference_refuse_the_same_options(option, rng):
    """One validator (moe_ref.MoESpec): what the reference refuses, the kernels refuse in the same words."""
    p = _problem(rng)
    messages = []
    for call in (lambda: moe_reference(*p.args(), act_dtype="bf16", **option),
                 lambda: mk.plan_moe(*p.to_torch().args(), arch="gfx950", **option),
                 lambda: mk.fused_moe(*p.to_torch().args(), arch="gfx950", **option)):
        with pytest.raises((ValueError, TypeError)) as info:
            call()
        messages.append(str(info.value))
    assert len(set(messages)) == 1 and next(iter(option)) in messages[0], messages


@pytest.mark.parametrize("convention", [dict(intermediate_dtype="fp32"), dict(routing_weight_dtype="bf16"),
                                        dict(slot_dtype="bf16")], ids=str)
def test_kernels_refuse_the_oracles_diagnostic_conventions(convention, rng):
    """The kernels compute the contract; a diagnosis's convention is the reference's alone."""
    with pytest.raises(ValueError, match="spec: the kernels compute the contract"):
        mk.fused_moe(*_problem(rng).to_torch().args(), arch="gfx950", **convention)


@pytest.mark.parametrize("mask", [[1, 0.5, 1, 1], [1, float("nan"), 1, 1], [2, 1, 1, 1]])
def test_expert_mask_entries_are_0_or_1(mask, rng):
    p = _problem(rng)
    with pytest.raises(ValueError, match="expert_mask: entries must be 0 or 1"):
        mk.fused_moe(*p.to_torch().args(), arch="gfx950", expert_mask=torch.tensor(mask))
    with pytest.raises(ValueError, match="expert_mask: entries must be 0 or 1"):
        moe_reference(*p.args(), act_dtype="bf16", expert_mask=np.array(mask))


@pytest.mark.parametrize("scale", [-1, 256, 300])
def test_dequantize_refuses_scale_bytes_outside_0_255(scale):
    packed = np.zeros((1, 16), np.uint8)
    with pytest.raises(ValueError, match="scale_e8m0: values must lie in 0..255"):
        em.dequantize_mxfp4(packed, np.array([[scale]], np.int32))
    assert em.dequantize_mxfp4(packed, np.array([[127]], np.int64)).shape == (1, 32)  # in range: accepted
    with pytest.raises(TypeError, match="scale_e8m0: expected an integer"):
        em.dequantize_mxfp4(packed, np.array([[127.0]]))


@pytest.mark.parametrize("kw, exc, match", [
    (dict(H=48), ValueError, "H=48 is not valid; expected a multiple of 32"),
    (dict(I=40), ValueError, "I=40"), (dict(M=-1), ValueError, "M=-1"), (dict(M=2.0), TypeError, "M: expected an integer"),
    (dict(topk=5), ValueError, "topk=5 is not valid for E=4"), (dict(with_bias="yes"), TypeError, "with_bias"),
])
def test_random_moe_problem_refuses_inconsistent_shapes(kw, exc, match, rng):
    with pytest.raises(exc, match=match):
        random_moe_problem(rng, **{**SHAPE, **kw})


def test_random_moe_problem_needs_a_generator():
    with pytest.raises(TypeError, match="rng: expected a numpy.random.Generator"):
        random_moe_problem(0, **SHAPE)


@pytest.mark.parametrize("env, exc, match", [
    ({"GPTOSS_SWIGLU_MXFP4_BF16_BOUND": 0}, TypeError, "GPTOSS_SWIGLU_MXFP4_BF16_BOUND.*must be strings"),
    (["x"], TypeError, "env: expected a mapping"),
    ({"GPTOSS_SWIGLU_MXFP4_BF16_BOUND": "²"}, ValueError, "GPTOSS_SWIGLU_MXFP4_BF16_BOUND='²' is invalid"),
    ({"GPTOSS_SWIGLU_MXFP4_BF16_BOUND": "١٢"}, ValueError, "ASCII digits"),
    ({"AITER_MOE_FORCE_BF16_ACT": "yes please"}, ValueError, "AITER_MOE_FORCE_BF16_ACT='yes please' is invalid"),
])
def test_env_values_are_ascii_strings(env, exc, match):
    with pytest.raises(exc, match=match):
        select_activation_dtype(300, arch="gfx950", env=env)


@pytest.mark.parametrize("value", ["no", 0])
def test_as_float8_must_be_a_bool(value):
    x = torch.zeros((2, 32), dtype=torch.bfloat16)
    with pytest.raises(TypeError, match="as_float8: expected a bool"):
        mk.quantize_mxfp8(x, as_float8=value)
    with pytest.raises(TypeError, match="as_float8: expected a bool"):
        mk.quantize_fp8_per_token(x, as_float8=value)
