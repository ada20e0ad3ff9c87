"""``moe_oracle.engine`` pinned directly on small planted implementations: the archs a layer runs at,
its cases and shards, every row the quantizer, stage and selector runs make (their matrix, seeds and
fields) and the rows of a case that raises."""

from __future__ import annotations

import re
import time
import zlib

import pytest
import torch

from moe_oracle import engine
from moe_oracle.config import VerifyConfig
from moe_oracle.contract import ContractError
from moe_oracle.implementation import Implementation, Quantizer
from moe_ref import select_activation_dtype
from moe_ref.env import bound_points

from .planted import LAYERS, _dequant, _fake, _mxfp4, _mxfp8, _per_tensor, _per_token, _stage

SHAPE = {"E": 4, "H": 64, "I": 32, "topk": 2}
CORRECT = LAYERS[0].fn


def _cfg(**kw):
    base = {"shapes": [SHAPE], "M": [8], "archs": ["gfx950"], "envs": [{}], "gate_modes": ["separated"],
            "scale_modes": ["round_up"], "seed": 3}
    return VerifyConfig.from_mapping({**base, **kw})


def test_the_archs_a_layer_runs_at():
    def no_arch(hidden, w1, w1_scale, w2, w2_scale, topk_weights, topk_ids):
        return hidden

    assert engine.layer_archs(Implementation("a", fused_moe=CORRECT), ["gfx942", "gfx950"]) == ["gfx942", "gfx950"]
    assert engine.layer_archs(Implementation("b", fused_moe=no_arch), ["gfx942"]) is None  # its own: the caller's
    pinned = Implementation("c", fused_moe=no_arch, archs=("gfx950",))
    assert engine.layer_archs(pinned, ["gfx942", "gfx950"]) == ["gfx950"]  # the asked ones it can run
    assert engine.layer_archs(pinned, ["gfx942"]) == ["gfx950"]  # none of them: its own


def test_a_layer_without_gate_mode_runs_its_declared_layout():
    def no_gate(hidden, w1, w1_scale, w2, w2_scale, topk_weights, topk_ids, *, arch="gfx950"):
        return hidden

    cfg = _cfg(gate_modes=["separated", "interleave"], M=[8, 300])
    both = engine.layer_cases(Implementation("a", fused_moe=CORRECT), cfg, ["gfx950"])
    assert [(i, c.gate_mode, c.M) for i, c in both] == [(0, "separated", 8), (1, "interleave", 8),
                                                         (2, "separated", 300), (3, "interleave", 300)]
    plain = engine.layer_cases(Implementation("b", fused_moe=no_gate), cfg, ["gfx950"])
    assert [c.gate_mode for _, c in plain] == ["separated", "separated"]
    declared = engine.layer_cases(Implementation("c", fused_moe=no_gate, declared={"gate_mode": "interleave"}), cfg,
                                  ["gfx950"])
    assert [c.gate_mode for _, c in declared] == ["interleave", "interleave"]


def test_shards_take_whole_groups_in_turn():
    cfg = _cfg(M=[1, 8, 300], gate_modes=["separated", "interleave"])
    impl = Implementation("a", fused_moe=CORRECT)
    every = engine.layer_cases(impl, cfg, ["gfx950"])
    assert [[c.M for _, c in engine.layer_cases(impl, cfg, ["gfx950"], (k, 2))] for k in range(2)] == \
        [[1, 1, 300, 300], [8, 8]]
    assert engine.layer_cases(impl, cfg, ["gfx950"], (0, 1)) == every


def _quantizer_impl(**kw):
    return Implementation("q", quantize_mxfp4=_mxfp4(), quantize_mxfp8=_mxfp8(), quantize_fp8_per_token=_per_token(),
                          quantize_fp8_per_tensor=_per_tensor(), quantize_dequantize_mxfp4=_fake(),
                          dequantize_mxfp4=_dequant(), **kw)


def test_quantizer_rows_over_their_matrix():
    def fixed(x):  # no scale_mode: its one mode
        return _mxfp4(mode="even")(x)

    extra = Quantizer("fixed mxfp4", "quantize_mxfp4", fixed, scale_modes=(), fixed_mode="even", note="an adapter",
                      input_dtypes=("float32",))
    impl = _quantizer_impl(fp8_formats=("e4m3fn", "e4m3fnuz"), scale_modes=("round_up", "ceil"), extra_quantizers=(extra,))
    rows = engine.run_quantizers(impl, _cfg(scale_modes=["round_up", "even", "ceil"]), device="cpu")
    got = [(r["kind"], r["requested"], r["fmt"], r["input_dtype"]) for r in rows]
    dtypes = ("bfloat16", "float32")
    want = [("quantize_mxfp4", m, "e2m1", d) for m in ("round_up", "ceil") for d in dtypes]
    want += [("quantize_mxfp8", m, f, d) for m in ("round_up", "ceil") for f in ("e4m3fn", "e4m3fnuz") for d in dtypes]
    want += [(k, "-", f, d) for k in ("quantize_fp8_per_token", "quantize_fp8_per_tensor") for f in ("e4m3fn", "e4m3fnuz")
             for d in dtypes]
    want += [("quantize_dequantize_mxfp4", m, "e2m1", d) for m in ("round_up", "ceil") for d in dtypes]
    want += [("dequantize_mxfp4", "-", "e2m1", "-"), ("fixed mxfp4", "even", "e2m1", "float32")]
    assert got == want
    for r in rows:
        mode = None if r["requested"] == "-" else r["requested"]
        assert r["seed"] == zlib.crc32(repr((3, r["kind"], mode, r["fmt"], r["input_dtype"])).encode())
        assert r["impl"] == "q" and r["verdict"] == "PASS" and r["bytes_equal"] == r["bytes_total"] > 0, r
        assert set(r) == {"impl", "kind", "fmt", "input_dtype", "requested", "seed", "bytes_equal", "bytes_total", "unit",
                          "verdict", "follows", "closest", "differing", "policies", "diagnosis"}
    assert rows[-1]["diagnosis"].endswith("; takes no scale_mode: its own fixed mode; an adapter")
    assert rows[-2]["unit"] == "values" and rows[0]["unit"] == "bytes"
    assert not rows[0]["diagnosis"].endswith("; ")  # no empty note joined


def test_quantizer_rows_of_a_contract_error_and_of_a_raise():
    def wrong(x, scale_mode="round_up"):
        return [x]

    def raises(x, fmt="e4m3fn"):
        raise ValueError("boom")

    impl = Implementation("q", quantize_mxfp4=wrong, quantize_fp8_per_token=raises)
    rows = engine.run_quantizers(impl, _cfg(), device="cpu")
    assert [r["kind"] for r in rows] == ["quantize_mxfp4"] * 2 + ["quantize_fp8_per_token"] * 2
    first = rows[0]
    assert (first["bytes_equal"], first["bytes_total"], first["verdict"]) == (0, 0, "FAIL")
    assert first["diagnosis"] == ("test_quantizer_rows_of_a_contract_error_and_of_a_raise.<locals>.wrong returned a list "
                                  "of 1; the contract says a pair (codes, scale)")
    assert "follows" not in first
    assert rows[2]["diagnosis"] == "raised ValueError: boom" and rows[2]["verdict"] == "FAIL"
    assert (rows[2]["bytes_equal"], rows[2]["bytes_total"]) == (0, 0)


def test_stage_rows():
    assert engine.run_stages(Implementation("none"), _cfg(), device="cpu") == []
    cfg = _cfg(M=[0, 300, 8], guard_bands=False)
    rows = engine.run_stages(Implementation("s", moe_gemm_stage=_stage()), cfg, device="cpu")
    assert [(r["M"], r["mul_routed_weight"]) for r in rows] == [(m, w) for m in (1, 8, 300) for w in (False, True)]
    for r in rows:
        assert (r["impl"], r["E"], r["K"], r["N"], r["topk"]) == ("s", 4, 64, 64, 2) and r["verdict"] == "PASS", r
        key = (3, "stage", r["M"], r["mul_routed_weight"], tuple(SHAPE.items()))
        assert r["seed"] == zlib.crc32(repr(key).encode())

    def raises(hidden, w, w_scale, topk_weights, topk_ids, *, mul_routed_weight, out=None):
        raise RuntimeError("no kernel")

    bad = engine.run_stages(Implementation("s", moe_gemm_stage=raises), _cfg(), device="cpu")
    assert len(bad) == 4 and all(r["verdict"] == "FAIL" and r["diagnosis"] == "raised RuntimeError: no kernel"
                                 for r in bad)
    assert all(r["margin"] != r["margin"] and r["max_err"] != r["max_err"] for r in bad)  # NaN: nothing measured


def test_selector_rows_cover_every_bound():
    assert engine.run_selector(Implementation("none"), _cfg(), ["gfx950"]) == []
    calls = []

    def theirs(M, *, arch, gate_mode, env):
        calls.append((M, arch, gate_mode, env))
        if M == 1:
            raise KeyError("one")
        dtype = select_activation_dtype(M, arch=arch, gate_mode=gate_mode, env=env).dtype
        return "bf16" if M == 8192 else dtype

    envs = [{}, {"AITER_MOE_FORCE_BF16_ACT": "1"}]
    cfg = _cfg(M=[5, 300], envs=envs, gate_modes=["separated", "interleave"])
    rows = engine.run_selector(Implementation("d", select_act_dtype=theirs), cfg, ["gfx942", "gfx950"])
    Ms = sorted({0, 1, 5, 300, 8192} | set(bound_points()))
    order = [(M, a, g, e) for M in Ms for a in ("gfx942", "gfx950") for g in ("separated", "interleave") for e in envs]
    assert [(r["M"], r["arch"], r["gate_mode"], r["env"]) for r in rows] == order == calls
    for r in rows:
        ours = select_activation_dtype(r["M"], arch=r["arch"], gate_mode=r["gate_mode"], env=r["env"]).dtype
        assert r["selector"] == ours
        if r["M"] == 1:
            assert r["impl"] == "raised KeyError: 'one'" and r["agree"] is False
        else:
            assert r["agree"] is (r["impl"] == ours)
    assert any(not r["agree"] for r in rows if r["M"] == 8192) and all(r["agree"] for r in rows if r["M"] == 300)


def test_a_case_that_raises_is_a_row_and_the_rest_still_run():
    seen = []

    def sometimes(hidden, w1, w1_scale, w2, w2_scale, topk_weights, topk_ids, **kw):
        M = hidden.shape[0]
        if M == 1:
            raise ValueError("M=1 unsupported")
        if M == 2:
            return [hidden]  # not the contract's return
        return CORRECT(hidden, w1, w1_scale, w2, w2_scale, topk_weights, topk_ids)

    rows = engine.run_layers(Implementation("l", fused_moe=sometimes), _cfg(M=[1, 2, 8], guard_bands=False),
                             device="cpu", archs=["gfx950"], on_row=seen.append, progress=False)
    assert seen == rows and [r["M"] for r in rows] == [1, 2, 8]
    assert rows[0]["error"] == "raised ValueError: M=1 unsupported" and "Traceback" in rows[0]["traceback"]
    assert "M=1 unsupported" in rows[0]["traceback"]
    assert rows[1]["error"].endswith("returned a list of 1; the contract says a floating tensor [2, 64] (bf16), a "
                                     "(out, ...) tuple or a LayerResult") and rows[1]["traceback"] == ""
    assert rows[1]["error"].startswith("l's fused_moe returned")
    assert all(r["verdict"] == "FAIL" for r in rows[:2]) and rows[2]["verdict"] == "PASS"


def test_an_error_row_is_the_case_and_why():
    case = next(iter(engine.layer_cases(Implementation("l", fused_moe=CORRECT), _cfg(), ["gfx950"])))[1]
    row = engine.error_row(Implementation("l"), case, "it raised", "trace")
    assert row == {"impl": "l", **case.columns(), "verdict": "FAIL", "error": "it raised", "traceback": "trace"}
    assert engine.error_row(Implementation("l"), case, "x")["traceback"] == ""


@pytest.mark.parametrize("error", [ContractError("bad return"), RuntimeError("bad")])
def test_the_engine_keeps_its_cache_per_group(error, monkeypatch):
    """A raising case does not stop the references' release for its group (the next group runs)."""
    released = []
    real = engine.refs.release
    monkeypatch.setattr(engine.refs, "release", lambda cache, case, keep_layer: released.append((case.M, keep_layer))
                        or real(cache, case, keep_layer=keep_layer))

    def raising(hidden, *a, **kw):
        raise error

    engine.run_layers(Implementation("l", fused_moe=raising), _cfg(M=[1, 8], scale_modes=["round_up", "even"]),
                      device="cpu", archs=["gfx950"], progress=False)
    assert released == [(1, True), (8, False)]


def test_the_references_of_a_group_are_released_after_its_last_case(monkeypatch):
    """Two cases a group (both gate layouts), two shapes: each group released once, after its last case,
    the layer kept only while the next group shares it."""
    released = []
    monkeypatch.setattr(engine.refs, "release", lambda cache, case, keep_layer: released.append(
        (case.shape["H"], case.M, case.gate_mode, keep_layer)))

    def raising(hidden, *a, gate_mode="separated", **kw):
        raise RuntimeError("no kernel")

    other = {**SHAPE, "H": 128}
    engine.run_layers(Implementation("l", fused_moe=raising), _cfg(shapes=[SHAPE, other], M=[1, 2],
                      gate_modes=["separated", "interleave"]), device="cpu", archs=["gfx950"], progress=False)
    assert released == [(64, 1, "interleave", True), (64, 2, "interleave", False), (128, 1, "interleave", True),
                        (128, 2, "interleave", False)]


class _Spy:
    """Records each call's arguments, then calls ``then`` (or returns ``result``)."""

    def __init__(self, then=None, result=None):
        self.calls, self.then, self.result = [], then, result

    def __call__(self, *args, **kwargs):
        self.calls.append((args, kwargs))
        return self.then(*args, **kwargs) if self.then is not None else self.result


@pytest.mark.parametrize("with_bias", [False, True])
def test_the_layer_run_prefetches_exactly_the_references_its_cases_read(with_bias, monkeypatch, capsys):
    """The jobs handed to the prefetch carry what the cases will look up (a job that differs from the
    case's key computes every reference twice): the accumulation model and the products' device of the
    run's device, whether the layer takes biases; workers, memory cap and progress passed through."""
    def no_bias(hidden, w1, w1_scale, w2, w2_scale, topk_weights, topk_ids, *, arch="gfx950"):
        return hidden

    def biased(hidden, w1, w1_scale, w2, w2_scale, topk_weights, topk_ids, *, arch="gfx950", bias1=None, bias2=None):
        return hidden

    impl = Implementation("l", fused_moe=biased if with_bias else no_bias)
    mma_k = _Spy(then=lambda device_type: ("mma_k", device_type))
    at = _Spy(then=lambda device: ("products on", str(device)))
    prefetch = _Spy()
    checked = _Spy(then=lambda impl, case, cfg, device, seed, cache: {"M": case.M, "cache": cache})
    monkeypatch.setattr(engine.refs, "mma_k_of", mma_k)
    monkeypatch.setattr(engine.refs, "reference_device", at)
    monkeypatch.setattr(engine.refs, "prefetch", prefetch)
    monkeypatch.setattr(engine, "check_layer_case", checked)
    cfg = _cfg(M=[1, 8])
    t0 = time.monotonic()
    rows = engine.run_layers(impl, cfg, device="cpu", archs=["gfx950"], max_memory_gib=3.5)
    case_list = [c for _, c in engine.layer_cases(impl, cfg, ["gfx950"])]
    assert mma_k.calls == [(("cpu",), {})] and at.calls == [((torch.device("cpu"),), {})]
    jobs = [(c, engine.judged_act_dtype(impl, c, cfg), 3, ("mma_k", "cpu"), with_bias, ("products on", "cpu"))
            for c in case_list]
    (args, kwargs), = prefetch.calls
    assert args[0] == jobs and args[2:] == (1, 3.5) and kwargs == {"progress": True}
    assert [r["M"] for r in rows] == [1, 8] and all(r["cache"] is args[1] for r in rows)  # the prefetched cache
    assert [(call[0][1], call[0][3], call[0][4]) for call in checked.calls] == \
        [(c, torch.device("cpu"), 3) for c in case_list]
    lines = capsys.readouterr().err.splitlines()  # progress: on by default, one line per case here: the time so far
    assert [line.split(", ")[0] for line in lines] == ["1/2 cases", "2/2 cases"]
    assert all(re.fullmatch(r"\d+s", line.split(", ")[1]) and int(line.split(", ")[1][:-1]) <= time.monotonic() - t0 + 1
               for line in lines)
    engine.run_layers(impl, cfg, device="cpu", archs=["gfx950"], workers=4, progress=False)
    assert prefetch.calls[1][0][2:] == (4, None) and prefetch.calls[1][1] == {"progress": False}
    assert capsys.readouterr().err == ""


def test_each_quantizer_row_is_the_check_it_names(monkeypatch):
    """Every row's columns are the arguments its check ran with (format, input dtype, mode, device, seed:
    a row naming e4m3fnuz must not have checked the callable's default), and its findings are that check's."""
    checks = _Spy(then=engine.check_quantizer)
    monkeypatch.setattr(engine, "check_quantizer", checks)
    impl = _quantizer_impl(fp8_formats=("e4m3fn", "e4m3fnuz"), scale_modes=("round_up", "ceil"))
    rows = engine.run_quantizers(impl, _cfg(scale_modes=["round_up", "ceil"]), device="cpu")
    assert len(checks.calls) == len(rows) == 25
    for r, (args, kwargs) in zip(rows, checks.calls):
        assert args[1] == r["kind"]
        assert kwargs == {"scale_mode": "round_up" if r["requested"] == "-" else r["requested"],
                          "fmt": None if r["fmt"] == "e2m1" else r["fmt"],
                          "input_dtype": "bfloat16" if r["input_dtype"] == "-" else r["input_dtype"],
                          "device": "cpu", "seed": r["seed"]}
        again = engine.check_quantizer.then(args[0], r["kind"], **kwargs)  # the same check again: same findings
        findings = ("bytes_equal", "bytes_total", "unit", "verdict", "follows", "closest", "differing", "policies")
        assert {k: r[k] for k in findings} == {k: getattr(again, k) for k in findings}
    assert {r["fmt"] for r in rows if r["kind"] == "quantize_mxfp8"} == {"e4m3fn", "e4m3fnuz"}


def test_a_differing_quantizer_row_carries_the_diagnosis(monkeypatch):
    """A quantizer that follows another convention: its row names it, the closest candidate, the block
    kinds that differ and its policies (the fields a report prints)."""
    impl = Implementation("q", quantize_mxfp4=_mxfp4(mode="even"))
    row, = [r for r in engine.run_quantizers(impl, _cfg(), device="cpu") if r["input_dtype"] == "float32"]
    c = engine.check_quantizer(impl.quantize_mxfp4, "quantize_mxfp4", input_dtype="float32", seed=row["seed"])
    assert row["verdict"] == "FAIL" and row["follows"] == c.follows is not None and row["differing"] == c.differing
    assert row["closest"] == c.closest and row["policies"] == c.policies and sum(c.differing.values()) > 0


@pytest.mark.parametrize("guard_bands", [False, True])
def test_each_stage_row_is_the_check_it_names(guard_bands, monkeypatch):
    """The stage check runs with the row's problem, on the run's device, with the config's guard bands; a
    stage that raises still gets a row naming the whole problem (nothing measured: NaN)."""
    from moe_oracle import stage

    checks = _Spy(result={"verdict": "PASS"})
    monkeypatch.setattr(stage, "check_stage", checks)
    fn = _stage()
    rows = engine.run_stages(Implementation("s", moe_gemm_stage=fn), _cfg(M=[8], guard_bands=guard_bands), device="cpu")
    problem = [dict(M=M, E=4, K=64, N=64, topk=2, mul_routed_weight=mul,
                    seed=zlib.crc32(repr((3, "stage", M, mul, tuple(SHAPE.items()))).encode()))
               for M in (1, 8) for mul in (False, True)]
    assert checks.calls == [((fn,), {**p, "device": "cpu", "guard_bands": guard_bands}) for p in problem]
    assert rows == [{"impl": "s", **p, "verdict": "PASS"} for p in problem]
    monkeypatch.setattr(stage, "check_stage", _Spy(then=lambda fn, **kw: 1 / 0))
    bad = engine.run_stages(Implementation("s", moe_gemm_stage=fn), _cfg(M=[8]), device="cpu")
    assert [{k: v for k, v in r.items() if k not in ("margin", "max_err")} for r in bad] == \
        [{"impl": "s", **p, "verdict": "FAIL", "diagnosis": "raised ZeroDivisionError: division by zero"} for p in problem]
    assert all(r["margin"] != r["margin"] and r["max_err"] != r["max_err"] for r in bad)


def _frame_names(lines: list[str]) -> list[str]:
    """The function of each frame of a formatted traceback (a SyntaxError's source location has none)."""
    return [ln.split(", in ")[1] for ln in lines if ln.startswith("  File ") and ", in " in ln]


@pytest.mark.parametrize("depth", [0, 3, 12])
def test_a_raising_case_shows_where_it_raised(depth):
    """The row's traceback starts at the implementation's call (not the oracle's frames that led to it)
    and ends where it raised: its innermost six frames, then the error."""
    def down(n):  # two functions in turn: Python folds a frame repeated more than thrice
        if n == 0:
            raise ValueError("deep down")
        (odd if n % 2 else down)(n - 1)

    def odd(n):
        down(n)

    def fused(hidden, w1, w1_scale, w2, w2_scale, topk_weights, topk_ids, **kw):
        down(depth)

    row, = engine.run_layers(Implementation("l", fused_moe=fused), _cfg(M=[1], guard_bands=False), device="cpu",
                             archs=["gfx950"], progress=False)
    lines = row["traceback"].splitlines()
    frames = _frame_names(lines)
    calls = ["down"] + [f for n in range(depth, 0, -1) for f in (["odd", "down"] if n % 2 else ["down"])]
    assert frames == (["fused"] + calls)[-6:]
    assert lines[0] == "Traceback (most recent call last):" and lines[-1] == "ValueError: deep down"
    assert lines[-2].strip() == 'raise ValueError("deep down")' and __file__ in row["traceback"]


def test_where_the_oracle_itself_raised():
    """No frame of theirs (the oracle raised, called from the oracle): its own frames; an error of several
    lines (a SyntaxError's source line) whole."""
    own = {}  # functions whose code lies in the oracle's files (a tool's wrappers around the real ones would not)
    source = "def outer():\n    inner()\ndef inner():\n    raise SyntaxError('bad', ('config.py', 1, 5, 'x = = 1'))\n"
    exec(compile(source, engine.__file__, "exec"), own)
    try:
        own["outer"]()
    except SyntaxError as exc:
        trace = engine.raised_at(exc.with_traceback(exc.__traceback__.tb_next))  # from outer inward: all the oracle's
    lines = trace.splitlines()
    assert _frame_names(lines) == ["outer", "inner"]
    assert lines[-1] == "SyntaxError: bad" and '  File "config.py", line 1' in lines and "    x = = 1" in lines
