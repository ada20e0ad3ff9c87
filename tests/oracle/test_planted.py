"""The engine flags every planted bug with the right diagnosis, and passes the correct ones."""

from __future__ import annotations

import pytest

from moe_oracle import assert_conforms, check_moe, check_quantizer

from .planted import LAYERS, QUANTIZERS, STAGES

# both sides of the separated bound, the forced env, one interleave case (a16w4 at gfx942)
LAYER_MATRIX = {"shapes": [{"E": 4, "H": 64, "I": 32, "topk": 2}], "M": [8, 256], "archs": ["gfx950"],
                "envs": [{}, {"AITER_MOE_FORCE_BF16_ACT": "1"}], "gate_modes": ["separated"], "scale_modes": ["round_up", "even"]}


@pytest.mark.parametrize("planted", QUANTIZERS, ids=[p.name for p in QUANTIZERS])
@pytest.mark.parametrize("input_dtype", ["bfloat16", "float32"])
def test_quantizer_bugs_are_diagnosed(planted, input_dtype, base_seed):
    fmt = None if planted.kind in ("quantize_mxfp4", "quantize_dequantize_mxfp4", "dequantize_mxfp4") else "e4m3fn"
    check = check_quantizer(planted.fn, planted.kind, scale_mode="round_up", fmt=fmt, input_dtype=input_dtype,
                            seed=base_seed)
    if not planted.diagnosis:
        assert_conforms(check)
        return
    assert check.verdict == "FAIL"
    assert planted.diagnosis in check.diagnosis(), check.diagnosis()


@pytest.mark.parametrize("planted", LAYERS, ids=[p.name for p in LAYERS])
def test_layer_bugs_are_diagnosed(planted, base_seed):
    rows = check_moe(planted.fn, {**LAYER_MATRIX, "seed": base_seed % 2**31})
    if not planted.diagnosis:
        assert_conforms(rows)
        assert all("matches the" in r["diagnosis"][0] for r in rows)
        return
    failing = [r for r in rows if r["verdict"] == "FAIL"]
    assert failing, "the bug went unnoticed"
    assert any(planted.diagnosis in "; ".join(r["diagnosis"]) for r in failing), [r["diagnosis"] for r in failing]
    with pytest.raises(AssertionError, match="moe-oracle: .* checks fail"):
        assert_conforms(rows)


def test_a_layer_that_writes_its_weights_does_not_corrupt_the_next_cases(base_seed):
    """The layer's tensors are uploaded once per layer (``references.on_device``): what an
    implementation wrote to them is put back after each run, so every later case still runs on the
    true weights (each case: its output matches, and the write is named)."""
    correct = LAYERS[0].fn

    def writes_w1(hidden, w1, w1_scale, w2, w2_scale, topk_weights, topk_ids, *, gate_mode="separated", bias1=None,
                  bias2=None, scale_mode="round_up", arch="gfx950", env=None):
        out = correct(hidden, w1, w1_scale, w2, w2_scale, topk_weights, topk_ids, gate_mode=gate_mode, bias1=bias1,
                      bias2=bias2, scale_mode=scale_mode, arch=arch, env=env)
        w1.add_(1)  # not undone by the second run of the case
        return out

    rows = check_moe(writes_w1, {**LAYER_MATRIX, "seed": base_seed % 2**31})
    assert len(rows) > 1
    for r in rows:
        notes = "; ".join(r["diagnosis"])
        assert r["verdict"] == "FAIL" and "matches the" in r["diagnosis"][0] and "wrote to its inputs: w1" in notes, notes


@pytest.mark.parametrize("planted", STAGES, ids=[p.name for p in STAGES])
@pytest.mark.parametrize("K", [64, 288])  # one K tile; several with a partial last one (288 % 128 = 32)
def test_stage_bugs_are_diagnosed(planted, K, base_seed):
    from moe_oracle.stage import check_stage

    row = check_stage(planted.fn, M=8, E=4, K=K, N=64, topk=2, mul_routed_weight=True, seed=base_seed)
    if not planted.diagnosis:
        assert row["verdict"] == "PASS", row
        return
    assert row["verdict"] == "FAIL" and planted.diagnosis in row["diagnosis"], row["diagnosis"]
