"""Interfaces kernel engineers use: the pytest plugin in a fresh project, ``--impl module:attr`` with a
fused_moe-shaped callable, the Python API, and the AITER adapter under the interpreter."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import moe_kernels  # noqa: F401  (interpreter on before triton on a CPU machine)
from moe_oracle import Implementation, check_quantizer, cli
from moe_oracle.implementation import as_implementation, call_with, load_spec

ROOT = Path(__file__).resolve().parents[2]
TINY = {"shapes": [{"E": 4, "H": 64, "I": 32, "topk": 2}], "M": [8, 256], "archs": ["gfx950"], "envs": [{}],
        "gate_modes": ["separated"], "scale_modes": ["round_up"], "seed": 1}


def _run(argv, cwd, **env):
    full = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": f"{ROOT}:{cwd}", **env}
    return subprocess.run([sys.executable, *argv], capture_output=True, text=True, cwd=cwd, env=full, timeout=900)


def test_pytest_plugin_in_a_fresh_project(tmp_path):
    """A kernel repo adds a few lines; the matrix becomes tests, a bug fails with the oracle's message."""
    (tmp_path / "mykernels.py").write_text(textwrap.dedent('''
        import numpy as np, torch, emulation as em
        from moe_ref import moe_reference, select_activation_dtype
        def good_moe(hidden, w1, w1_scale, w2, w2_scale, topk_weights, topk_ids, *, gate_mode, bias1=None,
                     bias2=None, arch="gfx950", env=None):
            d = select_activation_dtype(hidden.shape[0], arch=arch, gate_mode=gate_mode, env=env).dtype
            return moe_reference(hidden, w1, w1_scale, w2, w2_scale, topk_weights, topk_ids, act_dtype=d,
                                 gate_mode=gate_mode, bias1=bias1, bias2=bias2)
        def bf16_only_moe(hidden, w1, w1_scale, w2, w2_scale, topk_weights, topk_ids, *, gate_mode, bias1=None,
                          bias2=None):
            return moe_reference(hidden, w1, w1_scale, w2, w2_scale, topk_weights, topk_ids, act_dtype="bf16",
                                 gate_mode=gate_mode, bias1=bias1, bias2=bias2)
        def quant(x, scale_mode="round_up"):
            q, s = em.quantize_mxfp4(x.float().numpy(), scale_mode=scale_mode)
            return torch.from_numpy(q), torch.from_numpy(s)
    '''))
    (tmp_path / "test_mine.py").write_text(textwrap.dedent('''
        import moe_oracle
        from mykernels import good_moe, bf16_only_moe, quant
        def test_moe(moe_case):
            moe_case.assert_conforms(good_moe)
        def test_bad_moe(moe_case):
            moe_case.assert_conforms(bf16_only_moe)
        def test_quant(mx_scale_mode):
            moe_oracle.assert_conforms(moe_oracle.check_quantizer(quant, "quantize_mxfp4", scale_mode=mx_scale_mode))
    '''))
    (tmp_path / "matrix.json").write_text(json.dumps(TINY))
    from importlib.metadata import entry_points

    installed = any(ep.value == "moe_oracle.pytest_plugin" for ep in entry_points(group="pytest11"))
    load = [] if installed else ["-p", "moe_oracle.pytest_plugin"]  # the entry point, where moe-oracle is installed
    r = _run(["-m", "pytest", *load, "-v", "--moe-oracle-config", "matrix.json", "--moe-oracle-device", "cpu",
              "-p", "no:cacheprovider", "-rf"], tmp_path)
    out = r.stdout
    assert "moe-oracle data seed" in out
    assert "test_moe[E4-H64-I32-k2-M8-gfx950-separated-round_up] PASSED" in out
    assert "test_moe[E4-H64-I32-k2-M256-gfx950-separated-round_up] PASSED" in out
    assert "test_bad_moe[E4-H64-I32-k2-M256-gfx950-separated-round_up] FAILED" in out
    assert "test_quant[round_up] PASSED" in out and "test_quant[ceil]" not in out  # the config's scale modes
    assert "1 failed, 4 passed" in out, out[-3000:]  # the bf16-only layer is right at M=8, wrong at M=256
    assert "it took a16w4 where the selector chose a4w4" in out


def test_the_plugin_is_registered_as_a_pytest11_entry_point():
    import tomllib

    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert meta["project"]["entry-points"]["pytest11"] == {"moe_oracle": "moe_oracle.pytest_plugin"}


def test_impl_module_attr_checks_a_fused_moe_callable(tmp_path):
    (tmp_path / "theirs.py").write_text("from tests.oracle.planted import LAYERS\nfused = LAYERS[0].fn\n"
                                        "never_quantizes = LAYERS[3].fn\n")
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps(TINY))
    ok = _run(["-m", "moe_oracle", "--impl", "theirs:fused", "--config", str(cfg)], tmp_path)
    assert ok.returncode == 0, ok.stdout[-2000:] + ok.stderr[-2000:]
    assert "implementation: theirs:fused (fused_moe)" in ok.stdout and "2 passed, 0 failed" in ok.stdout
    bad = _run(["-m", "moe_oracle", "--impl", "theirs:never_quantizes", "--config", str(cfg)], tmp_path)
    assert bad.returncode == 1 and "it took a16w4 where the selector chose a4w4" in bad.stdout


@pytest.mark.parametrize("spec, match", [("nomodule_xyz:f", "cannot import"), ("os:nonesuch", "has no attribute"),
                                         ("justaname", "cannot import justaname")])
def test_bad_impl_specs(spec, match):
    with pytest.raises(ValueError, match=match):
        load_spec(spec)


def test_as_implementation_forms():
    def fused_moe(*a):
        return None

    assert as_implementation(fused_moe).provides() == ["fused_moe"]
    assert as_implementation({"quantize_mxfp4": fused_moe}).provides() == ["quantize_mxfp4"]
    assert as_implementation(moe_kernels).provides() == ["quantize_mxfp4", "quantize_mxfp8", "quantize_fp8_per_token",
                                                         "fused_moe"]
    with pytest.raises(ValueError, match="unknown callable"):
        as_implementation({"quantise": fused_moe})
    with pytest.raises(ValueError, match="provides none"):
        as_implementation(object())


def test_call_with_passes_only_declared_keywords_and_applies_env():
    def f(x, *, scale_mode):
        return scale_mode, os.environ.get("AITER_MOE_FORCE_BF16_ACT")

    assert call_with(f, 1, scale_mode="even", arch="gfx950", env={"AITER_MOE_FORCE_BF16_ACT": "1"}) == ("even", "1")
    assert "AITER_MOE_FORCE_BF16_ACT" not in os.environ or os.environ["AITER_MOE_FORCE_BF16_ACT"] != "1"


def test_ours_registered_through_the_same_contract():
    from moe_oracle.implementations import ours

    impl = ours()
    assert isinstance(impl, Implementation) and impl.provides()[:4] == ["quantize_mxfp4", "quantize_mxfp8",
                                                                        "quantize_fp8_per_token", "fused_moe"]
    assert check_quantizer(impl.quantize_mxfp4, "quantize_mxfp4", scale_mode="even", seed=5).verdict == "PASS"


def test_foreign_quantizer_check_needs_no_triton(tmp_path):
    """Checking a torch quantizer imports neither our kernels nor triton."""
    code = ("import sys, torch, numpy as np, emulation as em, moe_oracle\n"
            "f = lambda x, scale_mode: tuple(map(torch.from_numpy, em.quantize_mxfp4(x.float().numpy(), scale_mode=scale_mode)))\n"
            "c = moe_oracle.check_quantizer(f, 'quantize_mxfp4', scale_mode='ceil')\n"
            "assert c.verdict == 'PASS', c.diagnosis()\n"
            "assert 'triton' not in sys.modules and 'moe_kernels' not in sys.modules, sorted(sys.modules)\n")
    r = _run(["-c", code], tmp_path, TRITON_INTERPRET="0")
    assert r.returncode == 0, r.stderr[-3000:]


# --- AITER's Triton quantizers from the amd-aiter wheel, under the interpreter -------------------------------

def _aiter():
    from moe_oracle.adapters import aiter_triton
    from moe_oracle.adapters._loader import PeerUnavailable

    try:
        return aiter_triton.implementation()
    except PeerUnavailable as exc:
        pytest.fail(f"the test environment installs amd-aiter (nox -s tests): {exc}")


def test_aiter_dynamic_mxfp4_quant_follows_even_scales_with_ties_away(base_seed):
    """Measured fact (NUMERICS.md section 10): AITER's Triton MXFP4 quantizer rounds its scale by the
    EVEN rule, as its name says, but rounds elements ties away, not to even as the hardware does."""
    impl = _aiter()
    q = next(q for q in impl.quantizers() if q.label == "dynamic_mxfp4_quant")
    for dtype in ("bfloat16", "float32"):
        c = check_quantizer(q.fn, "quantize_mxfp4", scale_mode="even", input_dtype=dtype, seed=base_seed)
        assert c.verdict == "FAIL" and c.follows.startswith("even, ties away"), c.diagnosis()
        assert c.differing["ties"] > 0 and c.differing["ordinary"] == 0


def test_aiter_downcast_to_mxfp_round_up_is_ties_away_and_differs_on_subnormal_blocks(base_seed):
    impl = _aiter()
    q = next(q for q in impl.quantizers() if q.label == "downcast_to_mxfp[fp4]")
    c = check_quantizer(q.fn, "quantize_mxfp4", scale_mode="round_up", seed=base_seed)
    assert c.follows and c.follows.startswith("round_up, ties away"), c.diagnosis()
    assert "subnormal" in c.follows, c.diagnosis()


def test_aiter_fp8_differences_under_the_interpreter_are_attributed_to_its_casts(base_seed):
    impl = _aiter()
    q = next(q for q in impl.quantizers() if q.label == "dynamic_per_token_quant_fp8_i8")
    c = check_quantizer(q.fn, "quantize_fp8_per_token", fmt="e4m3fn", seed=base_seed)
    assert any("Triton interpreter's own .to(float8)" in n for n in c.notes), c.diagnosis()


def test_cli_impl_aiter_triton_quick_runs_and_diagnoses_every_quantizer(tmp_path, capsys):
    _aiter()
    assert cli.main(["--impl", "aiter-triton", "--quick", "--out", str(tmp_path)]) == 1
    quant = json.loads((tmp_path / "report.json").read_text())["quantizers"]
    assert {c["kind"] for c in quant} == {"dynamic_mxfp4_quant", "downcast_to_mxfp[fp4]", "downcast_to_mxfp[fp8]",
                                          "dynamic_per_token_quant_fp8_i8", "dynamic_per_tensor_quant_fp8_i8"}
    assert all(c["diagnosis"] for c in quant)


def test_aiter_gemm_stage_differs_only_by_the_interpreters_bf16_cast(base_seed):
    """fused_moe_mxfp4 (a16w4) under the interpreter: every output outside the bound is the interpreter's
    truncating fp32->bf16 cast of a value within the fp32 bound (checked with the cast itself)."""
    from moe_oracle.stage import check_stage

    impl = _aiter()
    for mul in (False, True):
        row = check_stage(impl.moe_gemm_stage, M=8, E=4, K=128, N=64, topk=2, mul_routed_weight=mul, seed=base_seed)
        assert row["verdict"] in ("PASS", "INTERP"), row
        if row["verdict"] == "INTERP":
            assert "Triton interpreter's own fp32->bf16 cast" in row["diagnosis"]


def test_aiter_dispatch_is_read_from_its_source_and_compared_case_by_case():
    """AITER's own choice (this wheel: SwiGLU keeps bf16 at every M, no env knob) against the selector."""
    from moe_oracle import config, engine

    impl = _aiter()
    assert impl.select_act_dtype(8192, arch="gfx950") == "bf16"
    assert impl.select_act_dtype(8192, arch="gfx950", activation="Silu") == "fp4x2"
    rows = engine.run_selector(impl, config.QUICK, ["gfx950"])
    disagree = {(r["M"], r["gate_mode"]) for r in rows if not r["agree"]}
    assert (256, "separated") in disagree and (1, "separated") not in disagree


def _stage_bug(kind):
    import torch

    import emulation as em

    def stage(hidden, w, w_scale, topk_weights, topk_ids, *, mul_routed_weight, out=None):
        M, topk = topk_ids.shape
        out = torch.empty((M, topk, w.shape[1]), dtype=torch.bfloat16) if out is None else out
        for t in range(M - (kind == "last token dropped")):
            for k in range(topk):
                e = int(topk_ids[t, k])
                wd = torch.from_numpy(em.dequantize_mxfp4(w[e].numpy(), w_scale[e].numpy())).double()
                g = (hidden[t].double() @ wd.T).float()
                if mul_routed_weight != (kind == "weight ignored"):
                    g = g * topk_weights[t, k]
                out[t, k] = g.to(torch.bfloat16)
        if kind == "computed NaN":
            out[0, 0, 0] = float("nan")  # written, whatever the buffer held
        return out

    return stage


@pytest.mark.parametrize("kind, diagnosis", [("correct", ""), ("weight ignored", "mul_routed_weight=False"),
                                             ("last token dropped", "never written"),
                                             ("computed NaN", "1 of 512 outputs are NaN where the reference is finite "
                                              "(NaN with a zero-filled buffer too: computed, not unwritten)")])
def test_stage_bugs_are_diagnosed(kind, diagnosis, base_seed):
    from moe_oracle.stage import check_stage

    row = check_stage(_stage_bug(kind), M=4, E=4, K=64, N=64, topk=2, mul_routed_weight=True, seed=base_seed)
    assert (row["verdict"] == "PASS") == (kind == "correct"), row
    assert diagnosis in row["diagnosis"]
    assert ("never written" in row["diagnosis"]) == (kind == "last token dropped"), row["diagnosis"]


def test_a_missing_peer_is_one_line(tmp_path, capsys):
    """triton_kernels does not run under the interpreter here / is not installed: one line, exit 2."""
    os.environ.pop("MOE_ORACLE_TRITON_KERNELS_PATH", None)
    code = cli.main(["--impl", "triton-kernels", "--quick"])
    err = capsys.readouterr().err
    assert code == 2 and "implementation 'triton-kernels' unavailable here" in err and len(err.strip().splitlines()) == 1


def test_float8_codes_and_e8m0_scales_are_read_as_bytes():
    """A quantizer returning torch float8 codes and float8_e8m0fnu scales is compared by its bytes."""
    import torch

    import emulation as em

    def as_float8(x, scale_mode="round_up", fmt="e4m3fn"):
        q, s = em.quantize_mxfp8(x.float().numpy(), scale_mode=scale_mode)
        return torch.from_numpy(q).view(torch.float8_e4m3fn), torch.from_numpy(s).view(torch.float8_e8m0fnu)

    assert check_quantizer(as_float8, "quantize_mxfp8", scale_mode="even", fmt="e4m3fn", seed=3).verdict == "PASS"
