"""The reference under every option of a call (``MoESpec``), against an independent per-pair loop that
reads the contract (moe_ref.reference's docstring) step by step: every intermediate of the trace bit for
bit and in fp32, the output in bf16, the ideal path in float64; each option shown to change the result,
so that a reference ignoring it cannot pass."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import emulation as em
from moe_ref import MoESpec, gated_activation, moe_reference, random_moe_problem
from moe_ref.reference import forward, prepare_call

from .naive import naive_pairs

PATHS = ["bf16", "fp4x2", "fp8"]
SHAPE = dict(M=16, E=4, H=64, I=64, topk=3)  # three slots: their sum has an order
MASK = np.array([1, 1, 0, 1])
OPTIONS = [
    {},
    {"scale_mode": "round_down"},
    {"scale_mode": "even"},
    {"activation": "silu"},
    {"alpha": 1.25, "limit": 3.0},
    {"doweight_stage1": True},
    {"gate_mode": "interleave"},
    {"intermediate_dtype": "fp32"},
    {"intermediate_dtype": "fp4x2"},
    {"routing_weight_dtype": "bf16"},
    {"slot_dtype": "bf16"},
]


def _problem(rng):
    """Random problem with biases; hidden row 0's first block has amax 1.9921875 (bf16), whose MX scale
    differs between round_up and round_down for fp4x2 and fp8 alike (row 0's second block and row 1's
    first: between round_up and even); row 2 is [1, 2^-24, 2^-60, 0, ...]
    and every w1 row starts [1, 1, 1]: its stage-1 dots are 1 + 2^-24 + 2^-60, which rounds to 1 + 2^-23
    exactly and to 1 through float64 (on the bf16 path, which keeps the row's 61 bits)."""
    p = random_moe_problem(rng, **SHAPE, with_bias=True)
    p.hidden[0, :32] = np.clip(p.hidden[0, :32], -1.5, 1.5)
    p.hidden[0, 5] = -1.9921875
    p.hidden[0, 32:], p.hidden[1, :32] = np.clip(p.hidden[0, 32:], -1.5, 1.5), np.clip(p.hidden[1, :32], -1.5, 1.5)
    p.hidden[0, 40], p.hidden[1, 7] = 3.25, 1.875  # amaxes whose scale differs between round_up and even (fp4x2, fp8)
    p.hidden[2] = 0
    p.hidden[2, :3] = [1.0, 2.0**-24, 2.0**-60]
    one = 0x2  # e2m1 code of 1.0
    p.w1[:, :, 0] = one | one << 4
    p.w1[:, :, 1] = (p.w1[:, :, 1] & 0xF0) | one
    p.w1_scale[:, :, 0] = 127  # 2^0
    return p


@pytest.mark.parametrize("act_dtype", PATHS)
@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "default")
def test_emulated_paths_equal_the_contract_read_pair_by_pair(act_dtype, options, rng):
    p = _problem(rng)
    spec = MoESpec(**options)
    out, trace = moe_reference(*p.args(), act_dtype=act_dtype, expert_mask=MASK, return_trace=True, spec=spec,
                               **p.biases())
    stages, out_f32 = naive_pairs(p, act_dtype, spec, mask=MASK)
    live = [(t, k) for t in range(SHAPE["M"]) for k in range(SHAPE["topk"]) if MASK[p.topk_ids[t, k]]]
    np.testing.assert_array_equal(trace.pairs, np.array(live).reshape(-1, 2))
    for name, want in stages.items():
        got = getattr(trace, name)
        assert got.dtype == np.float32, name
        np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32), err_msg=name)
    assert trace.out_f32.dtype == np.float32 and out.dtype == np.float32
    np.testing.assert_array_equal(trace.out_f32.view(np.uint32), out_f32.view(np.uint32))
    np.testing.assert_array_equal(out.view(np.uint32), em.round_to_bf16(out_f32).view(np.uint32))
    if options:  # the option is seen: the default's result differs
        default = moe_reference(*p.args(), act_dtype=act_dtype, expert_mask=MASK, **p.biases())
        visible = not np.array_equal(out, default)
        if options.get("intermediate_dtype") == act_dtype or (act_dtype == "bf16" and "scale_mode" in options):
            assert not visible  # the path's own quantization; bf16 has no scales
        else:
            assert visible


def _naive_ideal(p, spec: MoESpec):
    """The ideal path per pair in float64: no quantization, hidden as given, routing weights as given."""
    out = np.zeros(p.hidden.shape, np.float64)
    for t in range(p.hidden.shape[0]):
        a = p.hidden[t:t + 1].astype(np.float64)
        for k in range(p.topk_ids.shape[1]):
            e = int(p.topk_ids[t, k])
            if not MASK[e]:
                continue
            wt = float(p.topk_weights[t, k])
            g = a @ em.dequantize_mxfp4(p.w1[e], p.w1_scale[e]).astype(np.float64).T + p.bias1[e]
            h = gated_activation(g, activation=spec.activation, gate_mode=spec.gate_mode, alpha=spec.alpha,
                                 limit=spec.limit) * (wt if spec.doweight_stage1 else 1.0)
            y = h @ em.dequantize_mxfp4(p.w2[e], p.w2_scale[e]).astype(np.float64).T + p.bias2[e]
            out[t] += y[0] * (1.0 if spec.doweight_stage1 else wt)
    return out


@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "default")
def test_ideal_path_is_the_float64_contract(options, rng):
    """float64 throughout, hidden not rounded to bf16, the rounding conventions and scale modes ignored."""
    p = _problem(rng)
    p.hidden[1] += np.float32(2.0**-12)  # not bf16: the ideal takes it as given
    spec = MoESpec(**options)
    got = moe_reference(*p.args(), act_dtype=None, expert_mask=MASK, spec=spec, **p.biases())
    want = _naive_ideal(p, spec)
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12 * np.abs(want).max())
    moot = {"scale_mode", "intermediate_dtype", "routing_weight_dtype", "slot_dtype"}
    if set(options) <= moot:
        default = moe_reference(*p.args(), act_dtype=None, expert_mask=MASK, **p.biases())
        np.testing.assert_array_equal(got, default)


@pytest.mark.parametrize("act_dtype", [None, *PATHS])
def test_forward_keeps_the_stages_it_is_asked_for(act_dtype, rng):
    """``forward``: (a_q, out, stages) with the four [P, .] stages where ``keep_stages`` (float64 on the
    ideal path, fp32 on the emulated ones), else (stage2,) on the emulated paths and () on the ideal."""
    p = _problem(rng)
    call = prepare_call(*p.args(), act_dtype=act_dtype, expert_mask=MASK, **p.biases())
    dtype = np.float64 if act_dtype is None else np.float32
    P, I = call.tokens.size, SHAPE["I"]  # noqa: E741
    a_q, out, stages = forward(call, act_dtype, keep_stages=True)
    assert [s.shape for s in stages] == [(P, 2 * I), (P, I), (P, I), (P, SHAPE["H"])]
    assert all(s.dtype == dtype for s in stages) and out.dtype == dtype and a_q.dtype == dtype
    _, out_lean, lean = forward(call, act_dtype)
    np.testing.assert_array_equal(out_lean, out)
    if act_dtype is None:
        assert lean == ()
        by_pair = np.zeros_like(out)
        np.add.at(by_pair, call.tokens, stages[3])
        np.testing.assert_allclose(by_pair, out, rtol=1e-13, atol=1e-13 * np.abs(out).max())
    else:
        assert len(lean) == 1
        np.testing.assert_array_equal(lean[0], stages[3])


def test_float64_inputs_are_taken_as_their_fp32(rng):
    """float64 hidden and routing weights are rounded to fp32 first (hidden then to bf16: the double
    rounding torch's float64 -> bfloat16 conversion does too, measured: 1 + 2^-8 + 2^-30 -> 1.0)."""
    p = _problem(rng)
    hidden64 = p.hidden.astype(np.float64)
    hidden64[3, :4] = [1 + 2.0**-8 + 2.0**-30, -(1 + 2.0**-8 + 2.0**-30), 3 * 2.0**-9 + 2.0**-40, 1e-3]
    weights64 = p.topk_weights.astype(np.float64)
    weights64[:, 0] = 1 + 2.0**-8 + 2.0**-30  # the fp32 is a bf16 tie (to 1); the float64 is above it
    as32 = (hidden64.astype(np.float32), *p.args()[1:5], weights64.astype(np.float32), p.topk_ids)
    for act_dtype in PATHS:
        for options in ({}, {"routing_weight_dtype": "bf16"}):
            got = moe_reference(hidden64, *p.args()[1:5], weights64, p.topk_ids, act_dtype=act_dtype, **options)
            want = moe_reference(*as32, act_dtype=act_dtype, **options)
            np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))
    call = prepare_call(hidden64, *p.args()[1:5], weights64, p.topk_ids.astype(np.int32), act_dtype="bf16")
    assert call.topk_weights.dtype == np.float32 and call.topk_ids.dtype == np.int64


def test_an_overflowing_slot_sum_is_inf_quietly(rng):
    """Two slots of 2^127 each sum past fp32's range: +inf (bf16 inf), and no RuntimeWarning leaks."""
    p = random_moe_problem(rng, M=4, E=2, H=32, I=32, topk=2)
    p.topk_ids[:] = [0, 1]
    p.topk_weights[:] = 1.0
    w2 = np.zeros_like(p.w2)  # stage 2 gives 0: each slot is its bias, 2^127
    bias2 = np.full((2, 32), 2.0**127, np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out, trace = moe_reference(p.hidden, p.w1, p.w1_scale, w2, p.w2_scale, p.topk_weights, p.topk_ids,
                                   act_dtype="bf16", bias2=bias2, return_trace=True)
    assert np.all(trace.stage2 == np.float32(2.0**127))
    assert np.all(np.isposinf(trace.out_f32)) and np.all(np.isposinf(out))
