"""``moe_oracle.layer`` pinned directly: the candidates a miss is diagnosed against and their words,
what a layer is handed, the memory it is run over, the stage-1 bytes, and the whole text of every note
a row can carry (numbers read back from the row they belong to)."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

import emulation as em
from moe_oracle import check_moe
from moe_oracle.implementation import Implementation, LayerResult
from moe_oracle.layer import (
    PATH_NAMES,
    _candidates,
    _fill_allocator,
    _stage1_bytes,
    _variant_label,
    filled_empty,
    judged_act_dtype,
    layer_capabilities,
)
from moe_ref import activation_path, select_activation_dtype

from .planted import LAYERS

SHAPE = {"E": 4, "H": 64, "I": 32, "topk": 2}
NUMBER = r"(-?[0-9.]+(?:e[+-][0-9]+)?|inf|nan)"  # a number as '.3g' writes it


def _one(fn, M=256, scale_mode="even", env=None, seed=5, **extra):
    """The rows of ``fn`` on one case (gfx950, separated gate)."""
    cfg = {"shapes": [SHAPE], "M": [M], "archs": ["gfx950"], "envs": [env or {}], "gate_modes": ["separated"],
           "scale_modes": [scale_mode], "seed": seed, **extra}
    rows = check_moe(fn, cfg)
    assert len(rows) == 1 and "error" not in rows[0], rows
    return rows[0]


def _planted(label):
    return next(p.fn for p in LAYERS if p.label == label)


def _match(pattern: str, text: str) -> list[str]:
    found = re.fullmatch(pattern, text)
    assert found, f"{text!r} does not read {pattern!r}"
    return list(found.groups())


def test_path_names():
    assert PATH_NAMES == {"bf16": "a16w4", "fp4x2": "a4w4", "fp8": "a8w4"}


def test_the_candidates_of_a_miss_in_order():
    conventions = [(("routing_weight_dtype", "bf16"),), (("slot_dtype", "bf16"),),
                   (("routing_weight_dtype", "bf16"), ("slot_dtype", "bf16"))]
    assert list(_candidates("bf16", "round_up")) == [
        ("fp4x2", ()), ("fp8", ()), ("bf16", (("intermediate_dtype", "fp32"),)), *[("bf16", c) for c in conventions]]
    assert list(_candidates("fp4x2", "even")) == [
        ("fp4x2", (("scale_mode", "round_up"),)), ("fp4x2", (("scale_mode", "round_down"),)),
        ("fp4x2", (("scale_mode", "ceil"),)), ("bf16", ()), ("fp8", ()),
        ("fp4x2", (("intermediate_dtype", "bf16"),)), ("fp4x2", (("intermediate_dtype", "fp32"),)),
        *[("fp4x2", c) for c in conventions]]
    fp8 = list(_candidates("fp8", em.ScaleMode.parse("round_up")))  # a ScaleMode is taken as its value
    assert fp8[:5] == [("fp8", (("scale_mode", "round_down"),)), ("fp8", (("scale_mode", "ceil"),)),
                       ("fp8", (("scale_mode", "even"),)), ("bf16", ()), ("fp4x2", ())]
    assert len(fp8) == 10


def test_the_words_of_each_candidate():
    assert _variant_label("bf16", ()) == "the a16w4 path's reference"
    assert _variant_label("fp8", (("scale_mode", "ceil"),)) == "the a8w4 reference with scale mode ceil"
    assert _variant_label("fp4x2", (("intermediate_dtype", "bf16"),)) == "the a4w4 reference with its intermediate in bf16"
    assert _variant_label("fp4x2", (("intermediate_dtype", "fp32"),)) == \
        "the a4w4 reference with its intermediate unquantized (fp32)"
    assert _variant_label("bf16", (("routing_weight_dtype", "bf16"),)) == \
        "the a16w4 reference with routing weights rounded to bf16"
    assert _variant_label("fp8", (("slot_dtype", "bf16"),)) == \
        "the a8w4 reference with each slot rounded to bf16 before the top-k sum"
    assert _variant_label("fp4x2", (("routing_weight_dtype", "bf16"), ("slot_dtype", "bf16"))) == (
        "the a4w4 reference with routing weights rounded to bf16 and each slot rounded to bf16 before the top-k sum")


def test_capabilities_are_the_named_keywords():
    def layer(hidden, w1, *rest, bias1=None, poison=False, **kwargs):
        return hidden

    assert layer_capabilities(layer) == {"hidden", "w1", "rest", "bias1", "poison"}  # **kwargs names none
    assert layer_capabilities(lambda **kw: None) == set()
    assert layer_capabilities(object()) == set()  # not callable (TypeError): nothing named
    assert layer_capabilities(getattr) == set()  # a builtin without a signature (ValueError): nothing named


def test_the_path_a_case_is_judged_on():
    class Case:
        class decision:
            dtype = "fp4x2"

    class Cfg:
        reference_act_dtype = None

    plain, fixed = Implementation("plain"), Implementation("fixed", fixed_path="bf16")
    assert judged_act_dtype(plain, Case, Cfg) == "fp4x2"  # the selector's choice
    assert judged_act_dtype(fixed, Case, Cfg) == "bf16"  # its one path
    Cfg.reference_act_dtype = "fp8"
    assert judged_act_dtype(fixed, Case, Cfg) == "fp8"  # the config's forced reference first


@pytest.mark.parametrize("byte", [0x00, 0xFF, 0x5A])
def test_empty_buffers_hold_the_byte_for_the_duration(byte):
    saved = torch.empty, torch.empty_like, torch.empty_strided, torch.Tensor.new_empty
    with filled_empty(byte):
        made = [torch.empty(5, 3, dtype=torch.float32), torch.empty_like(torch.zeros(7, dtype=torch.bfloat16)),
                torch.empty_strided((4, 4), (4, 1), dtype=torch.int32), torch.zeros(2).new_empty((3, 2)),
                torch.empty(0)]
        strided = torch.empty_strided((3, 2), (1, 3), dtype=torch.float32)  # not contiguous: element by element
        ints = torch.empty_strided((3, 2), (1, 3), dtype=torch.int16)
    for t in made:
        assert (t.contiguous().view(-1).view(torch.uint8) == byte).all(), (t.dtype, t.shape)
    if byte == 0xFF:
        assert torch.isnan(strided).all() and (ints == -1).all()
    else:
        assert (strided == 0).all() and (ints == 0).all()
    assert (torch.empty, torch.empty_like, torch.empty_strided, torch.Tensor.new_empty) == saved


def test_empty_is_restored_when_the_layer_raises():
    saved = torch.empty, torch.empty_like, torch.empty_strided, torch.Tensor.new_empty
    with pytest.raises(RuntimeError, match="boom"), filled_empty(0xFF):
        raise RuntimeError("boom")
    assert (torch.empty, torch.empty_like, torch.empty_strided, torch.Tensor.new_empty) == saved


def test_the_allocator_is_filled_with_every_power_of_two_block(monkeypatch):
    made = []
    full = torch.full

    def spy(size, fill_value, **kw):
        made.append((size[0], fill_value, kw["dtype"], str(kw["device"])))
        return full(size, fill_value, **kw)

    monkeypatch.setattr(torch, "full", spy)
    _fill_allocator(torch.device("cpu"), 1 << 21, 0xAB)
    assert made == [(1 << k, 0xAB, torch.uint8, "cpu") for k in range(6, 23) for _ in range(3)]
    made.clear()
    _fill_allocator(torch.device("cpu"), 100, 0x00)  # at least 1 MiB's worth of sizes
    assert [m[0] for m in made] == [1 << k for k in range(6, 22) for _ in range(3)]


def test_stage1_bytes_of_each_path():
    rng = np.random.default_rng(3)
    hidden = em.decode(em.encode(rng.standard_normal((8, 64)).astype(np.float32), "bf16"), "bf16").astype(np.float32)
    assert _stage1_bytes(LayerResult(out=None), hidden, "fp4x2", "even") is None  # not exposed
    q, s = activation_path("fp4x2").quantize(hidden, "even")
    total = q.size + s.size
    assert _stage1_bytes(LayerResult(None, "fp4x2", torch.from_numpy(q), torch.from_numpy(s)), hidden, "fp4x2",
                         "even") == (total, total)
    q_bad = q.copy()
    q_bad[2, 3] ^= 0x10
    s_bad = s.copy()
    s_bad[1, 0] += 1
    assert _stage1_bytes(LayerResult(None, "fp4x2", torch.from_numpy(q_bad), torch.from_numpy(s_bad)), hidden,
                         "fp4x2", "even") == (total - 2, total)
    assert _stage1_bytes(LayerResult(None, "fp4x2", torch.from_numpy(q.T.copy()), torch.from_numpy(s)), hidden,
                         "fp4x2", "even") == (0, total)  # a wrong shape: nothing equal
    assert _stage1_bytes(LayerResult(None, "fp4x2", torch.from_numpy(q), torch.from_numpy(s[:, :1].copy())), hidden,
                         "fp4x2", "even") == (0, total)
    q8, s8 = activation_path("fp8").quantize(hidden, "round_up")
    assert _stage1_bytes(LayerResult(None, "fp8", torch.from_numpy(q8), torch.from_numpy(s8)), hidden, "fp8",
                         "round_up") == (q8.size + s8.size,) * 2
    bf16 = torch.from_numpy(hidden).to(torch.bfloat16)  # a bf16 input: read as its bits
    assert _stage1_bytes(LayerResult(None, "bf16", bf16), hidden, "bf16", "even") == (hidden.size, hidden.size)
    bits = bf16.view(torch.int16).numpy().view(np.uint16).copy()
    bits[0, 0] ^= 1
    got = _stage1_bytes(LayerResult(None, "bf16", bits), hidden, "bf16", "even")  # uint16: taken as the bits
    assert got == (hidden.size - 1, hidden.size)


def test_a_correct_layer_matches_in_these_words():
    row = _one(_planted("correct layer"))
    assert row["verdict"] == "PASS" and row["path"] == "a4w4" and row["act_dtype"] == "fp4x2"
    assert row["reported_act_dtype"] is None and row["bytes_equal"] is None and row["bytes_total"] is None
    assert row["poison_sensitive"] is False and row["kernel_seconds"] > 0
    decision = select_activation_dtype(256, arch="gfx950", gate_mode="separated", env={})
    assert (row["rule"], row["reason"]) == (decision.rule, decision.reason)
    assert row["diagnosis"] == [f"matches the a4w4 reference (margin {row['margin']:.3g})"]
    small = _one(_planted("correct layer"), M=8)
    assert small["path"] == "a16w4" and small["diagnosis"] == [f"matches the a16w4 reference (margin {small['margin']:.3g})"]


@pytest.mark.parametrize("label, M, env, scale_mode, words", [
    ("env ignored", 256, {"AITER_MOE_FORCE_BF16_ACT": "1"}, "even",
     r"matches the a4w4 path's reference \(margin {n}\): it took a4w4 where the selector chose a16w4"),
    ("never quantizes", 256, {}, "even",
     r"matches the a16w4 path's reference \(margin {n}\): it took a16w4 where the selector chose a4w4"),
    ("scale mode ignored", 256, {}, "even",
     r"matches the a4w4 reference with scale mode round_up \(margin {n}\): it quantized with another scale mode "
     r"than the even asked for"),
    ("intermediate not quantized", 256, {}, "even",
     r"matches the a4w4 reference with its intermediate in bf16 \(margin {n}\): the stage-2 input was not quantized "
     r"as the a4w4 path requires"),
    ("routing weights in bf16", 256, {}, "even",
     r"matches the a4w4 reference with routing weights rounded to bf16 \(margin {n}\): a convention of its own, not "
     r"the contract's"),
    ("slots summed in bf16", 8, {}, "even",
     r"matches the a16w4 reference with each slot rounded to bf16 before the top-k sum \(margin {n}\): a convention "
     r"of its own, not the contract's"),
])
def test_a_miss_explained_by_a_candidate_is_named(label, M, env, scale_mode, words):
    row = _one(_planted(label), M=M, env=env, scale_mode=scale_mode)
    assert row["verdict"] == "FAIL" and not row["within_tolerance"] and row["margin"] > 1
    (best,) = _match(words.format(n=NUMBER), row["diagnosis"][0])
    assert float(best) <= 1.0
    assert len(row["diagnosis"]) == 1, row["diagnosis"]


def test_a_miss_nothing_explains():
    row = _one(_planted("routing weight applied twice"))
    assert row["verdict"] == "FAIL" and len(row["diagnosis"]) == 1
    margin, n_out, ulps, label, best = _match(
        rf"matches no path's reference \(margin {NUMBER} on a4w4, ([0-9]+) of 16384 outputs outside the bound, up to "
        rf"{NUMBER} bf16 ulps; closest: (the .*), margin {NUMBER}\)", row["diagnosis"][0])
    assert (margin, int(n_out), ulps) == (f"{row['margin']:.3g}", row["n_outside"], f"{row['max_err_ulps']:.3g}")
    assert row["n_outside"] > 0 and float(best) > 1.0
    assert (label, best) == ("the a4w4 reference with scale mode round_up", "inf")  # all inf: the first candidate


def test_memory_it_should_not_read_and_nan_outputs():
    row = _one(_planted("reads padding"), M=8)
    assert row["verdict"] == "FAIL" and row["poison_sensitive"] is True
    nan = row["nan_out"]
    assert nan > 0 and row["inf_out"] == 0
    notes = row["diagnosis"]
    assert notes[1] == f"{nan} NaN and 0 Inf outputs ({nan} where the reference is finite)"
    assert notes[2] == (f"output changes with memory it should not read: {nan} of 512 elements differ between a run "
                        f"over NaN-filled and one over zeroed memory")
    assert notes[0].startswith("matches no path's reference (margin inf on a16w4, ")


def test_writes_to_its_inputs_are_named_in_order():
    correct = _planted("correct layer")

    def writes(hidden, w1, w1_scale, w2, w2_scale, topk_weights, topk_ids, **kw):
        out = correct(hidden, w1, w1_scale, w2, w2_scale, topk_weights, topk_ids, **kw)
        w2_scale.add_(0)  # not a write: equal bytes
        topk_weights.mul_(1.0)
        w1_scale[0, 0] = w1_scale[0, 0] + 1
        topk_ids[0, 0] = topk_ids[0, 0]
        return out

    row = _one(writes, M=8)
    assert row["verdict"] == "FAIL" and row["diagnosis"][-1] == "it wrote to its inputs: w1_scale"

    def writes_two(hidden, w1, w1_scale, w2, w2_scale, topk_weights, topk_ids, **kw):
        out = correct(hidden, w1, w1_scale, w2, w2_scale, topk_weights, topk_ids, **kw)
        topk_weights.mul_(2.0)
        hidden.mul_(2.0)
        return out

    assert _one(writes_two, M=8)["diagnosis"][-1] == "it wrote to its inputs: hidden, topk_weights"

    def writes_the_rest(hidden, w1, w1_scale, w2, w2_scale, topk_weights, topk_ids, **kw):
        out = correct(hidden, w1, w1_scale, w2, w2_scale, topk_weights, topk_ids, **kw)
        w1[0, 0, 0] += 1  # run twice (over NaN-filled and zeroed memory): the writes add up, never undo
        w2[0, 0, 0] += 1
        w2_scale[0, 0, 0] += 1
        topk_ids[0, 0] = (topk_ids[0, 0] + 1) % 4
        return out

    assert _one(writes_the_rest, M=8, guard_bands=False)["diagnosis"][-1] == "it wrote to its inputs: w1, w2, w2_scale, topk_ids"

    def toggles(hidden, w1, w1_scale, w2, w2_scale, topk_weights, topk_ids, **kw):  # a write that undoes itself
        w1_scale.neg_()  # (e8m0 bytes: 256 - b, twice = b)
        out = correct(hidden, w1, w1_scale.neg(), w2, w2_scale, topk_weights, topk_ids, **kw)
        return out

    row = _one(toggles, M=8)
    assert row["diagnosis"] == [f"matches the a16w4 reference (margin {row['margin']:.3g})",
                                "it wrote to its inputs: w1_scale"] and row["verdict"] == "FAIL"

    def signs_zeros(hidden, w1, w1_scale, w2, w2_scale, topk_weights, topk_ids, **kw):  # equal values, other bits
        out = correct(hidden, w1, w1_scale, w2, w2_scale, topk_weights, topk_ids, **kw)
        zero = topk_weights == 0  # the padded tokens' slots
        assert bool(zero.any()) and not bool(torch.signbit(topk_weights[zero]).any())
        topk_weights[zero] = -0.0
        return out

    row = _one(signs_zeros, M=32, guard_bands=False)
    assert row["diagnosis"][-1] == "it wrote to its inputs: topk_weights" and row["verdict"] == "FAIL"


def _reporting(act_dtype=None, exposes=False, bad_byte=False):
    """The correct layer, returning a LayerResult that says ``act_dtype`` and exposes its stage-1 input."""
    correct = _planted("correct layer")

    def layer(hidden, w1, w1_scale, w2, w2_scale, topk_weights, topk_ids, *, gate_mode="separated", bias1=None,
              bias2=None, scale_mode="round_up", arch="gfx950", env=None):
        out = correct(hidden, w1, w1_scale, w2, w2_scale, topk_weights, topk_ids, gate_mode=gate_mode, bias1=bias1,
                      bias2=bias2, scale_mode=scale_mode, arch=arch, env=env)
        a_q = a_scale = None
        if exposes:
            taken = select_activation_dtype(hidden.shape[0], arch=arch, gate_mode=gate_mode, env=env).dtype
            q, s = activation_path(taken).quantize(hidden.float().numpy(), scale_mode)
            if bad_byte:
                q = q.copy()
                q[0, 0] ^= 1
            a_q, a_scale = torch.from_numpy(q), torch.from_numpy(s)
        return LayerResult(out, act_dtype, a_q, a_scale)

    return layer


def test_what_it_reports_and_exposes():
    agreed = _one(_reporting("fp4x2", exposes=True))
    total = 256 * 32 + 256 * 2
    assert agreed["verdict"] == "PASS" and agreed["reported_act_dtype"] == "fp4x2"
    assert (agreed["bytes_equal"], agreed["bytes_total"]) == (total, total) and len(agreed["diagnosis"]) == 1
    off = _one(_reporting("fp4x2", exposes=True, bad_byte=True))
    assert off["verdict"] == "FAIL" and (off["bytes_equal"], off["bytes_total"]) == (total - 1, total)
    assert off["within_tolerance"] or "matches" in off["diagnosis"][0]
    claims = _one(_reporting("bf16"))
    assert claims["verdict"] == "FAIL" and claims["reported_act_dtype"] == "bf16"
    assert claims["diagnosis"] == [f"matches the a4w4 reference (margin {claims['margin']:.3g})",
                                   "it reports path a16w4; the selector chose a4w4"]
    odd = _one(_reporting("int8"))
    assert odd["verdict"] == "FAIL" and odd["diagnosis"][1] == "it reports path int8; the selector chose a4w4"
    silent = _one(_reporting(None, exposes=True))  # its bytes judged on the selected path
    assert silent["verdict"] == "PASS" and silent["bytes_equal"] == total


def test_a_one_path_layer_is_judged_on_its_path():
    bf16_only = Implementation("bf16 only", fused_moe=_planted("never quantizes"), fixed_path="bf16")
    row = _one(bf16_only)
    decision = select_activation_dtype(256, arch="gfx950", gate_mode="separated", env={})
    assert row["verdict"] == "PASS" and row["path"] == "a16w4" and row["act_dtype"] == "bf16"
    assert row["diagnosis"] == [f"matches the a16w4 reference (margin {row['margin']:.3g})",
                                f"judged on its one path a16w4; the selector would choose a4w4 here ({decision.reason})"]
    assert len(_one(bf16_only, M=8)["diagnosis"]) == 1  # where the selector agrees: nothing to note


def test_the_forced_reference_and_the_tolerance_scale():
    forced = _one(_planted("never quantizes"), reference_act_dtype="bf16")
    assert forced["verdict"] == "PASS" and forced["path"] == "a16w4"
    base = _one(_planted("correct layer"))
    scaled = _one(_planted("correct layer"), tolerance_scale=0.25)
    assert base["bound_max"] > 0 and scaled["bound_max"] == 0.25 * base["bound_max"]  # the bound, scaled


def test_what_the_layer_is_handed():
    seen = []
    correct = _planted("correct layer")

    def layer(hidden, w1, w1_scale, w2, w2_scale, topk_weights, topk_ids, *, gate_mode, bias1=None, bias2=None,
              scale_mode, arch, env, poison):
        seen.append(dict(gate_mode=gate_mode, scale_mode=scale_mode, arch=arch, env=env, poison=poison,
                         bias=(bias1 is not None, bias2 is not None), empty=torch.empty(4).view(torch.int32)[0].item()))
        return correct(hidden, w1, w1_scale, w2, w2_scale, topk_weights, topk_ids, gate_mode=gate_mode, bias1=bias1,
                       bias2=bias2, scale_mode=scale_mode, arch=arch, env=env)

    row = _one(layer, M=8, env={"AITER_MOE_FORCE_BF16_ACT": "1"}, scale_mode="ceil", guard_bands=False)
    assert row["verdict"] == "PASS"
    first = dict(gate_mode="separated", scale_mode="ceil", arch="gfx950", env={"AITER_MOE_FORCE_BF16_ACT": "1"},
                 bias=(True, True))
    assert seen == [{**first, "poison": True, "empty": -1}, {**first, "poison": False, "empty": 0}]

    def no_bias(hidden, w1, w1_scale, w2, w2_scale, topk_weights, topk_ids, **kw):
        seen.append(sorted(kw))
        return correct(hidden, w1, w1_scale, w2, w2_scale, topk_weights, topk_ids)

    seen.clear()
    assert _one(no_bias, M=8, guard_bands=False)["verdict"] == "PASS"  # no bias taken: judged without one
    assert seen == [[], []]  # **kwargs names nothing: it is handed nothing


def test_guard_bands_run_once_more_and_a_read_outside_fails():
    calls = []
    correct = _planted("correct layer")

    def counted(hidden, w1, w1_scale, w2, w2_scale, topk_weights, topk_ids, **kw):
        calls.append(hidden.stride(0))
        return correct(hidden, w1, w1_scale, w2, w2_scale, topk_weights, topk_ids)

    _one(counted, M=8)
    assert len(calls) == 3 and calls[:2] == [64, 64] and calls[2] > 64  # NaN-filled, zeroed, guarded
    calls.clear()
    _one(counted, M=8, guard_bands=False)
    assert len(calls) == 2
    row = _one(_planted("hidden row stride assumed"), M=8)
    assert row["verdict"] == "FAIL" and row["within_tolerance"] and not row["poison_sensitive"]
    assert any(n.startswith("reads outside its inputs") for n in row["diagnosis"])


def _case(M, scale_mode="round_up"):
    """A stand-in case of ``M`` tokens (the fields layer._run and layer._diagnose read)."""
    return type("Case", (), dict(M=M, shape=SHAPE, gate_mode="separated", scale_mode=scale_mode, arch="gfx950", env={}))


class _Zeros:
    """A stand-in implementation: its fused_moe returns zeros of the output's shape."""

    name = "zeros"

    @staticmethod
    def fused_moe(hidden, *args, **kw):
        return torch.zeros(hidden.shape, dtype=torch.bfloat16)


def test_the_allocator_is_filled_before_each_run(monkeypatch):
    """Four times the layer's intermediates (fp32 stage-1 slots [M * topk, 2I + H] and the bf16 output
    [M, H]), up to 256 MiB, on the layer's device, with the run's byte."""
    from moe_oracle import layer

    fills = []
    monkeypatch.setattr(layer, "_fill_allocator", lambda device, nbytes, byte: fills.append((device, nbytes, byte)))
    _one(_planted("correct layer"), M=8)
    want = 4 * (8 * 2 * (2 * 32 + 64) * 4 + 8 * 64 * 2)
    assert fills == [(torch.device("cpu"), want, 0xFF), (torch.device("cpu"), want, 0x00),
                     (torch.device("cpu"), want, 0xFF)]  # NaN-filled, zeroed, guarded

    inputs = {n: torch.zeros((70000, 64)) if n == "hidden" else torch.zeros(1) for n in layer.ARG_NAMES}
    fills.clear()
    out, result, seconds = layer._run(_Zeros, inputs, _case(70000), set(), 0x5A, torch.device("cpu"))
    assert fills == [(torch.device("cpu"), 1 << 28, 0x5A)] and out.shape == (70000, 64) and seconds >= 0


def test_every_reference_is_asked_for_the_devices_accumulation_and_place(monkeypatch):
    """The case's reference and each diagnosis candidate's: the run device's accumulation model and the
    place its products run (stand-ins here: 16 and "AT" for the CPU, so that a call made for another
    device shows)."""
    from moe_oracle import references

    asked = []
    real = references.reference
    monkeypatch.setattr(references, "mma_k_of", lambda device_type: 16 if device_type == "cpu" else None)
    monkeypatch.setattr(references, "reference_device", lambda device: "AT" if str(device) == "cpu" else None)

    def spy(cache, case, act_dtype, seed, mma_k, with_bias=True, variant=(), device=None):
        asked.append((act_dtype, variant, mma_k, device))
        return real(cache, case, act_dtype, seed, mma_k, with_bias, variant=variant, device=None)

    monkeypatch.setattr(references, "reference", spy)
    row = _one(_planted("routing weights in bf16"), guard_bands=False)
    assert row["diagnosis"][0].startswith("matches the a4w4 reference with routing weights rounded to bf16")
    assert len(asked) == 2 + len(list(_candidates("fp4x2", "even")))  # the case's, the diagnosis's, each candidate
    assert {(m, d) for _, _, m, d in asked} == {(16, "AT")}
    assert [(a, v) for a, v, _, _ in asked[2:]] == list(_candidates("fp4x2", "even"))


def test_a_gpu_run_is_synchronised_before_its_time_is_read(monkeypatch):
    from moe_oracle import layer

    synced = []
    monkeypatch.setattr(layer, "_fill_allocator", lambda *a: None)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: synced.append(True))

    class Device:
        def __init__(self, kind):
            self.type = kind

    inputs = {n: torch.zeros((4, 64)) for n in layer.ARG_NAMES}
    import time

    t0 = time.perf_counter()
    _, _, seconds = layer._run(_Zeros, inputs, _case(4), set(), 0xFF, Device("cuda"))
    assert synced == [True] and 0 <= seconds <= time.perf_counter() - t0
    layer._run(_Zeros, inputs, _case(4), set(), 0xFF, Device("cpu"))
    assert synced == [True]  # a CPU run has nothing to wait for


def _diagnose_with(monkeypatch, margins, cmp=None, out=None, reported=None, selected="fp4x2"):
    """layer._diagnose with every candidate's margin given (``margins``: label -> margin, the rest 5.0)."""
    from moe_oracle import layer, references

    ref = np.zeros(4)
    monkeypatch.setattr(references, "reference", lambda cache, case, act, seed, mma_k, with_bias, variant=(),
                        device=None: (None, ref, ref, ref) if not variant and act == selected else
                        (None, np.full(4, margins.get(_variant_label(act, variant), 5.0)), ref, ref))
    monkeypatch.setattr(layer, "compare_output", lambda out, r, ideal, bound: {"margin": float(r[0])})
    cmp = {"within_tolerance": False, "margin": 3.0, "n_outside": 2, "max_err_ulps": 5.0, "nan_out": 0, "inf_out": 0,
           **(cmp or {})}
    return layer._diagnose(_case(4, "even"), torch.device("cpu"), 0, {}, True, np.zeros(4) if out is None else out, cmp, selected,
                           reported)


@pytest.mark.parametrize("label, words", [
    ("the a16w4 path's reference", "it took a16w4 where the selector chose a4w4"),
    ("the a4w4 reference with scale mode ceil", "it quantized with another scale mode than the even asked for"),
    ("the a4w4 reference with its intermediate in bf16", "the stage-2 input was not quantized as the a4w4 path requires"),
    ("the a4w4 reference with each slot rounded to bf16 before the top-k sum", "a convention of its own, not the contract's"),
])
def test_a_candidate_at_margin_one_matches_and_above_it_does_not(monkeypatch, label, words):
    assert _diagnose_with(monkeypatch, {label: 1.0}) == [f"matches {label} (margin 1): {words}"]
    assert _diagnose_with(monkeypatch, {label: 0.5}, reported="fp8") == [  # what it matches first
        f"matches {label} (margin 0.5): {words}", "it reports path a8w4; the selector chose a4w4"]
    assert _diagnose_with(monkeypatch, {label: 1.0000001}) == [
        f"matches no path's reference (margin 3 on a4w4, 2 of 4 outputs outside the bound, up to 5 bf16 ulps; closest: "
        f"{label}, margin 1)"]
    assert _diagnose_with(monkeypatch, {label: 1.5})[0].startswith("matches no path's reference")


def test_the_closest_candidate_is_the_first_of_equal_margins(monkeypatch):
    both = {"the a8w4 path's reference": 0.5, "the a16w4 path's reference": 0.5}
    assert _diagnose_with(monkeypatch, both)[0].startswith("matches the a16w4 path's reference (margin 0.5)")
    assert _diagnose_with(monkeypatch, {})[0].endswith("closest: the a4w4 reference with scale mode round_up, margin 5)")


def test_a_match_tries_no_candidate_and_notes_come_in_order(monkeypatch):
    from moe_oracle import layer

    out = np.array([np.nan, np.inf, 1.0, np.nan])
    notes = _diagnose_with(monkeypatch, {}, cmp={"within_tolerance": True, "margin": 0.25, "nan_out": 2, "inf_out": 1},
                           out=out, reported="bf16")
    assert notes == ["matches the a4w4 reference (margin 0.25)", "it reports path a16w4; the selector chose a4w4",
                     "2 NaN and 1 Inf outputs (3 where the reference is finite)"]
    monkeypatch.setattr(layer, "compare_output", lambda *a: pytest.fail("a candidate was tried after a match"))
    from moe_oracle import references

    ref = np.zeros(4)
    monkeypatch.setattr(references, "reference", lambda *a, **k: (None, ref, ref, ref))
    assert layer._diagnose(_case(4, "even"), torch.device("cpu"), 0, {}, True, np.zeros(4),
                           {"within_tolerance": True, "margin": 0.0}, "fp4x2", "fp4x2") == [
        "matches the a4w4 reference (margin 0)"]


def test_a_layer_without_biases_is_diagnosed_against_references_without_them():
    planted = _planted("routing weights in bf16")

    def no_bias(hidden, w1, w1_scale, w2, w2_scale, topk_weights, topk_ids, *, gate_mode, scale_mode, arch, env):
        return planted(hidden, w1, w1_scale, w2, w2_scale, topk_weights, topk_ids, gate_mode=gate_mode,
                       scale_mode=scale_mode, arch=arch, env=env)

    row = _one(no_bias, guard_bands=False)
    assert row["verdict"] == "FAIL"
    assert row["diagnosis"][0].startswith("matches the a4w4 reference with routing weights rounded to bf16 (margin ")
