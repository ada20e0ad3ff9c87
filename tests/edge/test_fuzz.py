"""Standing fuzz test of the public edge: valid problems damaged one way at a time. Property: either a
TypeError/ValueError whose message names the damaged argument, or a result equal, bit for bit, to the
reference on the well-formed equivalent. Seeded from the run's logged base seed; MOE_ORACLE_FUZZ_EXAMPLES
sets the number of examples per damage kind (3 in the CPU suite; ``nox -s fuzz`` runs 100)."""

from __future__ import annotations

import os
from collections import Counter

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

import emulation as em
import moe_kernels as mk
from moe_ref import moe_reference, random_moe_problem

EXAMPLES = int(os.environ.get("MOE_ORACLE_FUZZ_EXAMPLES", "3"))  # per damage kind
OUTCOMES: Counter = Counter()

# damage -> (argument it names when it is an error, or None when the damaged call must still be right)
LAYER_DAMAGES = {
    "ids sliced": None, "ids column-major": None, "ids int8": None, "ids int64": None, "weights sliced": None,
    "hidden sliced": None, "hidden NaN/Inf token": None, "M = 0": None, "mask 0/1 ints": None,
    "ids float": "topk_ids", "ids out of range": "topk_ids", "ids 1-D": "topk_ids", "hidden float32": "hidden",
    "hidden 1-D": "hidden", "weights float64": "topk_weights", "weights wrong shape": "topk_weights",
    "w1 row dropped": "w1", "w2_scale wrong dtype": "w2_scale", "bias1 wrong shape": "bias1",
    "mask 0.5": "expert_mask", "mask NaN": "expert_mask", "doweight 'no'": "doweight_stage1",
    "scale mode typo": "scale_mode", "gate mode typo": "gate_mode", "arch typo": "arch",
    "env not strings": "AITER_MOE_FORCE_BF16_ACT", "env unicode digits": "GPTOSS_SWIGLU_MXFP4_BF16_BOUND",
    "two devices": "inputs",
}


def _damage(kind: str, args: list, kw: dict, rng: np.random.Generator):
    """Apply one damage to (args, kw) in place; returns the (args, kw) of the well-formed equivalent."""
    hidden, w1, w1_scale, w2, w2_scale, tw, ids = args
    good_args, good_kw = list(args), dict(kw)
    M, topk = ids.shape
    if kind == "ids sliced":
        wide = torch.zeros((M, 2 * topk), dtype=ids.dtype)
        wide[:, 1::2] = ids
        args[6] = wide[:, 1::2]
    elif kind == "ids column-major":
        args[6] = ids.t().contiguous().t()
    elif kind in ("ids int8", "ids int64"):
        args[6] = ids.to(torch.int8 if kind == "ids int8" else torch.int64)
    elif kind == "weights sliced":
        wide = torch.zeros((M, topk + 3), dtype=tw.dtype)
        wide[:, 2:2 + topk] = tw
        args[5] = wide[:, 2:2 + topk]
    elif kind == "hidden sliced":
        wide = torch.zeros((M, 2 * hidden.shape[1]), dtype=hidden.dtype)
        wide[:, ::2] = hidden
        args[0] = wide[:, ::2]
    elif kind == "hidden NaN/Inf token":
        if M:
            h = hidden.clone()
            h[int(rng.integers(M)), int(rng.integers(h.shape[1]))] = float(rng.choice([np.nan, np.inf, -np.inf]))
            args[0] = good_args[0] = h
    elif kind == "M = 0":
        for i in (0, 5, 6):
            args[i] = good_args[i] = args[i][:0]
    elif kind == "mask 0/1 ints":
        mask = torch.from_numpy((rng.random(w1.shape[0]) < 0.7).astype(np.int64))
        kw["expert_mask"], good_kw["expert_mask"] = mask, mask.bool()
    elif kind == "ids float":
        args[6] = ids.float()
    elif kind == "ids out of range":
        bad = ids.clone()
        bad[0, 0] = int(rng.choice([-1, w1.shape[0], 10**6]))
        args[6] = bad
    elif kind == "ids 1-D":
        args[6] = ids.reshape(-1)
    elif kind == "hidden float32":
        args[0] = hidden.float()
    elif kind == "hidden 1-D":
        args[0] = hidden.reshape(-1)
    elif kind == "weights float64":
        args[5] = tw.double()
    elif kind == "weights wrong shape":
        args[5] = tw[:, :1]
    elif kind == "w1 row dropped":
        args[1] = w1[:, 1:]
    elif kind == "w2_scale wrong dtype":
        args[4] = w2_scale.to(torch.int32)
    elif kind == "bias1 wrong shape":
        kw["bias1"] = torch.zeros((w1.shape[0], 3))
    elif kind == "mask 0.5":
        kw["expert_mask"] = torch.full((w1.shape[0],), 0.5)
    elif kind == "mask NaN":
        kw["expert_mask"] = torch.tensor([1.0, float("nan")] + [1.0] * (w1.shape[0] - 2))
    elif kind == "doweight 'no'":
        kw["doweight_stage1"] = "no"
    elif kind == "scale mode typo":
        kw["scale_mode"] = "round-up"
    elif kind == "gate mode typo":
        kw["gate_mode"] = "interleaved"
    elif kind == "arch typo":
        kw["arch"] = "gfx9050"
    elif kind == "env not strings":
        kw["env"] = {"AITER_MOE_FORCE_BF16_ACT": 1}
    elif kind == "env unicode digits":
        kw["env"] = {"GPTOSS_SWIGLU_MXFP4_BF16_BOUND": "١٢"}
    elif kind == "two devices":
        args[5] = tw.to("meta")
    return good_args, good_kw


def _bits(t: torch.Tensor) -> np.ndarray:
    return t.view(torch.int16).numpy()


@pytest.mark.parametrize("kind", sorted(LAYER_DAMAGES))
def test_fuzz_layer_edge(kind, base_seed):
    @seed(base_seed)
    @settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(M=st.sampled_from([1, 3, 7]), gate=st.sampled_from(["separated", "interleave"]),
           data_seed=st.integers(0, 2**32 - 1))
    def check(M, gate, data_seed):
        rng = np.random.default_rng(data_seed)
        p = random_moe_problem(rng, M=M, E=4, H=64, I=32, topk=2, with_bias=True)
        pt = p.to_torch()
        args, kw = list(pt.args()), dict(arch="gfx950", gate_mode=gate, **pt.biases())
        good_args, good_kw = _damage(kind, args, kw, rng)
        names = LAYER_DAMAGES[kind]
        if names is None:
            got = mk.fused_moe(*args, **kw)
            want = mk.fused_moe(*good_args, **good_kw)
            np.testing.assert_array_equal(_bits(got), _bits(want), err_msg=kind)
            ref = moe_reference(*good_args, act_dtype="bf16" if good_args[0].shape[0] < 256 else None,
                                **{k: v for k, v in good_kw.items() if k != "arch"})
            np.testing.assert_array_equal(got.float().numpy(), ref.float().numpy(), err_msg=f"{kind}: vs reference")
            OUTCOMES[(kind, "right answer")] += 1
            return
        with pytest.raises((TypeError, ValueError)) as info:
            mk.fused_moe(*args, **kw)
        assert names in str(info.value), f"{kind}: the message does not name {names}: {info.value}"
        OUTCOMES[(kind, "refused")] += 1

    check()
    print(f"fuzz fused_moe [{kind}]: {OUTCOMES[(kind, 'right answer')] + OUTCOMES[(kind, 'refused')]} examples")


QUANT_DAMAGES = {"x sliced": None, "x transposed copy": None, "x NaN/Inf/zero blocks": None, "x float16": "x",
                 "x int": "x", "x 1-D": "x", "K not a multiple of 32": "x", "scale mode typo": "scale_mode",
                 "fmt typo": "fmt", "as_float8 'yes'": "as_float8"}


@pytest.mark.parametrize("kind", sorted(QUANT_DAMAGES))
@pytest.mark.parametrize("quantizer", ["mxfp4", "mxfp8", "fp8_per_token"])
def test_fuzz_quantizer_edge(quantizer, kind, base_seed):
    kernel = {"mxfp4": mk.quantize_mxfp4, "mxfp8": mk.quantize_mxfp8, "fp8_per_token": mk.quantize_fp8_per_token}[quantizer]
    outcomes: Counter = Counter()

    def emulated(x, **kw):
        x = x.float().numpy()
        if quantizer == "mxfp4":
            return em.quantize_mxfp4(x, **kw)
        if quantizer == "mxfp8":
            return em.quantize_mxfp8(x, **kw)
        return em.quantize_fp8_per_token(x, **kw)

    @seed(base_seed)
    @settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(rows=st.integers(1, 9), blocks=st.integers(1, 4), data_seed=st.integers(0, 2**32 - 1), bf16=st.booleans())
    def check(rows, blocks, data_seed, bf16):
        rng = np.random.default_rng(data_seed)
        x = torch.from_numpy((rng.standard_normal((rows, 32 * blocks)) * 2.0 ** rng.uniform(-10, 10)).astype(np.float32))
        x = x.bfloat16() if bf16 else x
        kw = {} if quantizer == "fp8_per_token" else {"scale_mode": str(rng.choice(["round_up", "even", "ceil"]))}
        good = x
        if kind == "x sliced":
            wide = torch.zeros((rows, 2 * x.shape[1]), dtype=x.dtype)
            wide[:, 1::2] = x
            x = wide[:, 1::2]
        elif kind == "x transposed copy":
            x = x.t().contiguous().t()
        elif kind == "x NaN/Inf/zero blocks":
            x = x.clone()
            x[0, :32] = 0
            x[-1, int(rng.integers(x.shape[1]))] = float(rng.choice([np.nan, np.inf, -np.inf]))
            good = x
        elif kind == "x float16":
            x = x.half()
        elif kind == "x int":
            x = x.to(torch.int32)
        elif kind == "x 1-D":
            x = x.reshape(-1)
        elif kind == "K not a multiple of 32":
            x = x[:, :-1] if quantizer != "fp8_per_token" else x.to(torch.int32)
        elif kind == "scale mode typo":
            kw["scale_mode"] = "nearest" if quantizer != "fp8_per_token" else None
            if quantizer == "fp8_per_token":
                kw = {"fmt": "e4m3"}
        elif kind == "fmt typo":
            kw["fmt"] = "e5m3" if quantizer != "mxfp4" else None
            if quantizer == "mxfp4":
                kw = {"scale_mode": "round_upp"}
        elif kind == "as_float8 'yes'":
            if quantizer == "mxfp4":
                kw = {"scale_mode": 3}
            else:
                kw["as_float8"] = "yes"
        names = QUANT_DAMAGES[kind]
        if quantizer == "mxfp4" and kind in ("fmt typo", "as_float8 'yes'"):
            names = "scale_mode"
        if quantizer == "fp8_per_token" and kind == "scale mode typo":
            names = "fmt"
        if quantizer == "fp8_per_token" and kind == "K not a multiple of 32":
            names = "x"
        if names is None:
            q, s = kernel(x, **kw)
            want_q, want_s = emulated(good, **kw)
            np.testing.assert_array_equal(q.numpy(), want_q, err_msg=kind)
            np.testing.assert_array_equal(s.numpy().view(np.uint8), np.asarray(want_s).view(np.uint8), err_msg=kind)
            outcomes[(kind, "right answer")] += 1
            return
        with pytest.raises((TypeError, ValueError)) as info:
            kernel(x, **kw)
        assert names in str(info.value), f"{kind}: the message does not name {names}: {info.value}"
        outcomes[(kind, "refused")] += 1

    check()
    print(f"fuzz {quantizer} [{kind}]: {dict(outcomes)}")
