"""The gated activations (``moe_ref.activation``) against their definitions, computed here independently:
SwiGLU and SiLU-gated in float64 and fp32 (operation by operation, as the module docstring orders them),
the gate layouts on any number of leading axes, and the parameter checks' edges and words."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from moe_ref.activation import check_swiglu_params, gated_activation, split_gate_up


def _by_hand(gate: float, up: float, activation: str, alpha=1.702, limit=7.0) -> float:
    if activation == "swiglu":
        gate, up = min(gate, limit), min(max(up, -limit), limit)
        return gate / (1 + math.exp(-alpha * gate)) * (up + 1)
    return gate / (1 + math.exp(-gate)) * up


@pytest.mark.parametrize("activation", ["swiglu", "silu"])
def test_float64_is_the_definition(activation, rng):
    gate, up = rng.uniform(-12, 12, 64), rng.uniform(-12, 12, 64)
    got = gated_activation(np.concatenate([gate, up])[None], activation=activation, gate_mode="separated")[0]
    want = [_by_hand(g, u, activation) for g, u in zip(gate, up)]
    np.testing.assert_allclose(got, want, rtol=1e-14, atol=1e-300)
    assert got.dtype == np.float64


@pytest.mark.parametrize("activation", ["swiglu", "silu"])
def test_fp32_rounds_each_step_in_order(activation, rng):
    """fp32: z = alpha*gate; e = exp(-z); s = 1/(1+e); out = (gate*s) * (up+1) (SiLU-gated: alpha 1, no
    clamp, times up), each rounded to fp32; exp is NumPy's float32 exp (the one step a GPU may differ in)."""
    f = np.float32
    gate, up = rng.uniform(-12, 12, 256).astype(f), rng.uniform(-12, 12, 256).astype(f)
    got = gated_activation(np.concatenate([gate, up])[None], activation=activation, gate_mode="separated")[0]
    if activation == "swiglu":
        g, u = np.minimum(gate, f(7.0)), np.clip(up, f(-7.0), f(7.0))
        s = f(1) / (f(1) + np.exp(-(f(1.702) * g)))
        want = (g * s) * (u + f(1))
    else:
        s = f(1) / (f(1) + np.exp(-gate))
        want = (gate * s) * up
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, want.astype(f))


def test_gate_layouts_on_any_leading_axes(rng):
    x = rng.standard_normal((2, 3, 8))
    gate, up = split_gate_up(x, "separated")
    np.testing.assert_array_equal(gate, x[..., :4])
    np.testing.assert_array_equal(up, x[..., 4:])
    gate, up = split_gate_up(x, "interleave")
    np.testing.assert_array_equal(gate, x[..., 0::2])
    np.testing.assert_array_equal(up, x[..., 1::2])


def test_refusals_name_what_is_wrong():
    with pytest.raises(ValueError, match=r"^gate_mode='both' is not valid; expected one of \['separated', 'interleave'\]$"):
        split_gate_up(np.zeros((1, 4)), "both")
    with pytest.raises(ValueError, match=r"^activation='gelu' is not supported by the reference; expected 'swiglu' or 'silu'$"):
        gated_activation(np.zeros((1, 4)), activation="gelu", gate_mode="separated")
    with pytest.raises(ValueError, match=r"^alpha=nan is not valid"):
        check_swiglu_params(float("nan"), 7.0)
    with pytest.raises(ValueError, match=r"^limit=inf is not valid"):
        check_swiglu_params(1.0, float("inf"))
    with pytest.raises(ValueError, match=r"^limit=-0.5 is not valid; expected a finite number >= 0"):
        check_swiglu_params(1.0, -0.5)


def test_limit_zero_and_below_one_are_accepted():
    """The clamp [-limit, limit] is not empty for any limit >= 0: 0 and 0.5 are parameters."""
    assert check_swiglu_params(1, 0) == (1.0, 0.0)
    assert check_swiglu_params(-2.5, 0.5) == (-2.5, 0.5)


@pytest.mark.parametrize("activation", ["swiglu", "silu"])
def test_exp_overflow_is_silent(activation):
    """A very negative gate overflows exp(-z) to inf: the activation is -0 there, without a warning."""
    x = np.array([[-1000.0, -200.0, 2.0, 3.0]], np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = gated_activation(x, activation=activation, gate_mode="separated", alpha=1.0)
    assert np.all(out == 0) and np.all(np.signbit(out))
