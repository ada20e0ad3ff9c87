"""The documented answers for edge values that are not errors (NUMERICS.md section 8)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import emulation as em
import moe_kernels as mk
from moe_ref import moe_reference, random_moe_problem

FORCE_MX = {"GPTOSS_SWIGLU_MXFP4_BF16_BOUND": "0"}  # the fp4x2 path at small M (separated SwiGLU, gfx950)


@pytest.mark.parametrize("env, path", [({}, "a16w4"), (FORCE_MX, "a4w4")])
@pytest.mark.parametrize("special", [np.nan, np.inf, -np.inf])
def test_a_nan_or_inf_token_poisons_its_own_outputs_only(env, path, special, rng):
    p = random_moe_problem(rng, M=5, E=4, H=64, I=32, topk=2, with_bias=True)
    p.hidden[2, int(rng.integers(64))] = special
    pt = p.to_torch()
    out, run = mk.fused_moe(*pt.args(), **pt.biases(), arch="gfx950", env=env, return_trace=True)
    assert run.plan.path.name == path
    out = out.float().numpy()
    ref = moe_reference(*p.args(), **p.biases(), act_dtype=run.plan.act_dtype).astype(np.float32)
    assert not np.isfinite(out[2]).any() and not np.isfinite(ref[2]).any()
    others = [0, 1, 3, 4]
    np.testing.assert_array_equal(out[others], ref[others])
    assert np.isfinite(out[others]).all()


def test_a_zero_token_is_an_ordinary_token(rng):
    p = random_moe_problem(rng, M=4, E=4, H=64, I=32, topk=2, with_bias=True)
    p.hidden[1] = 0.0
    pt = p.to_torch()
    for env in ({}, FORCE_MX):
        out, run = mk.fused_moe(*pt.args(), **pt.biases(), arch="gfx950", env=env, return_trace=True)
        ref = moe_reference(*p.args(), **p.biases(), act_dtype=run.plan.act_dtype)
        np.testing.assert_array_equal(out.float().numpy(), ref)
    codes, scale = mk.quantize_fp8_per_token(torch.zeros((2, 64)))
    assert (codes == 0).all() and (scale == 0).all()


@pytest.mark.parametrize("mode, finite", [("round_up", False), ("ceil", False), ("even", False), ("round_down", True)])
def test_a_finite_block_past_fp32_dequantizes_to_inf(mode, finite):
    x = np.full((1, 32), 3.4e38, np.float32)
    q, s = em.quantize_mxfp4(x, scale_mode=mode)
    assert np.isfinite(em.dequantize_mxfp4(q, s)).all() == finite
    kq, ks = mk.quantize_mxfp4(torch.from_numpy(x), scale_mode=mode)
    assert np.array_equal(kq.numpy(), q) and np.array_equal(ks.numpy(), s)


@pytest.mark.parametrize("name, value", [("alpha", float("nan")), ("alpha", float("inf")), ("limit", float("nan")),
                                         ("limit", -0.5), ("limit", -float("inf"))])
def test_swiglu_parameters_outside_the_contract_are_refused(name, value, rng):
    """Both sides refuse through one check (moe_ref.check_swiglu_params): a non-finite alpha or limit, and a
    negative limit (its clamp interval [-limit, limit] would be empty)."""
    p = random_moe_problem(rng, M=2, E=4, H=64, I=32, topk=2)
    with pytest.raises(ValueError, match=f"{name}=.* expected a finite number"):
        mk.fused_moe(*p.to_torch().args(), arch="gfx950", **{name: value})
    with pytest.raises(ValueError, match=f"{name}=.* expected a finite number"):
        moe_reference(*p.args(), act_dtype="bf16", **{name: value})
