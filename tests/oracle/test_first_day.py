"""A kernel repo's first day with the oracle (issue 30): a run that checks nothing is never green,
return values are judged against the contract, usage errors exit 2 before any work, and the habits of
Python tools (--version, --json, --junit-xml, -q, quiet API, the plugin's ids and seeds, custom ops)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import warnings
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import tomllib

import moe_kernels as mk
import moe_oracle
from moe_oracle.contract import ContractError

ROOT = Path(__file__).resolve().parents[2]
TINY = {"shapes": [{"E": 4, "H": 64, "I": 32, "topk": 2}], "M": [8], "archs": ["gfx950"], "envs": [{}],
        "gate_modes": ["separated"], "scale_modes": ["round_up"], "seed": 5}

MYKERN = {
    "__init__.py": "",
    "bug_ties.py": '''
        import torch, emulation as em
        def quantize_mxfp4(x, scale_mode="round_up"):
            q, s = em.quantize_mxfp4(x.float().numpy(), scale_mode=scale_mode, ties="away")
            return torch.from_numpy(q), torch.from_numpy(s)
    ''',
    "returns.py": '''
        import numpy as np, torch, emulation as em
        from moe_ref import moe_reference, select_activation_dtype
        def _q(x, scale_mode):
            return em.quantize_mxfp4(x.float().numpy(), scale_mode=scale_mode)
        def scale_as_floats(x, scale_mode="round_up"):
            q, s = _q(x, scale_mode)
            return torch.from_numpy(q), torch.from_numpy(np.exp2(s.astype(np.float32) - 127))
        def one_tensor(x, scale_mode="round_up"):
            return torch.from_numpy(_q(x, scale_mode)[0])
        def int8_codes(x, scale_mode="round_up"):
            q, s = _q(x, scale_mode)
            return torch.from_numpy(q).view(torch.int8), torch.from_numpy(s)
        def _moe(hidden, w1, w1_scale, w2, w2_scale, topk_weights, topk_ids, gate_mode="separated"):
            d = select_activation_dtype(hidden.shape[0], arch="gfx950", gate_mode=gate_mode).dtype
            return torch.as_tensor(moe_reference(hidden, w1, w1_scale, w2, w2_scale, topk_weights, topk_ids,
                                                  act_dtype=d, gate_mode=gate_mode)).to(torch.bfloat16)
        def moe_in_a_list(*args, **kwargs):
            return [_moe(*args, **kwargs)]
        def wrapper(*args, **kwargs):  # forwards everything to a function without bias1 / bias2
            return _moe(*args, **kwargs)
    ''',
}


@pytest.fixture
def kernel_repo(tmp_path):
    pkg = tmp_path / "mykern"
    pkg.mkdir()
    for name, text in MYKERN.items():
        (pkg / name).write_text(textwrap.dedent(text))
    (tmp_path / "tiny.json").write_text(json.dumps(TINY))
    return tmp_path


def _cli(args, cwd, *, script=False, **env):
    """``python -m moe_oracle verify`` (or the console script, which is what a user types)."""
    full = {**os.environ, "TRITON_INTERPRET": "1", **env}
    if not script:
        full["PYTHONPATH"] = f"{ROOT}:{cwd}"
        cmd = [sys.executable, "-m", "moe_oracle", "verify", *args]
    else:
        full.pop("PYTHONPATH", None)
        cmd = [str(Path(sys.executable).with_name("moe-oracle")), "verify", *args]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, env=full, timeout=900)


# 1. nothing checked is never green ---------------------------------------------------------------

def test_a_quantizer_given_as_module_attr_is_checked_as_a_quantizer(kernel_repo):
    r = _cli(["--impl", "mykern.bug_ties:quantize_mxfp4", "--config", "tiny.json", "--only", "quantizers"], kernel_repo)
    assert r.returncode == 1, r.stderr
    assert "ties away" in r.stdout and r.stdout.strip().splitlines()[-1].startswith("0 passed, 2 failed")


@pytest.mark.parametrize("args, says", [
    (["--impl", "mykern:bug_ties", "--only", "moe"], "nothing to check: mykern:bug_ties provides quantize_mxfp4"),
    (["--impl", "", "--only", "quantizers"], "--impl '': empty"),
    (["--impl", "mykern.returns:_moe_helper_that_is_missing"], "has no attribute"),
    (["--impl", "mykern.bug_ties:quantize_mxfp4", "--only", "moe"], "nothing to check"),
])
def test_a_run_that_would_check_nothing_is_a_usage_error(kernel_repo, args, says):
    r = _cli(args, kernel_repo)
    assert r.returncode == 2 and says in r.stderr, (r.returncode, r.stderr)


@pytest.mark.parametrize("source, says", [
    ("def quantize_mxfp4(x:\n", "impl='broken': importing broken raised SyntaxError: '(' was never closed (broken.py, "
                                "line 1)"),
    ("raise ZeroDivisionError('at import')\n", "impl='broken': importing broken raised ZeroDivisionError: at import"),
])
def test_a_module_that_raises_on_import_is_named_not_a_traceback(tmp_path, monkeypatch, source, says):
    """Its file and line, exit 2 (a SyntaxError was a raw traceback with exit 1, a failing check's code)."""
    from moe_oracle.implementation import load_spec

    (tmp_path / "broken.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ValueError) as info:
        load_spec("broken")
    assert str(info.value) == says
    r = _cli(["--impl", "broken", "--only", "quantizers"], tmp_path)
    assert r.returncode == 2 and f"moe-oracle verify: {says}\n" in r.stderr and "Traceback" not in r.stderr


# 2. install -----------------------------------------------------------------------------------

def test_the_readme_installs_from_a_clone_with_every_extra():
    readme = (ROOT / "README.md").read_text()
    install = readme.split("## Install", 1)[1].split("\n## ", 1)[0]
    assert "pip install '.[kernels]'" in install and "git clone" in install
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert all(f"`{name}`" in install for name in extras), [n for n in extras if f"`{n}`" not in install]


def test_without_matplotlib_the_run_says_the_plot_was_not_written(tmp_path, monkeypatch):
    from moe_oracle import report

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    said = []
    files = report.write(tmp_path, [], [], [], {"impl": "x", "device": "cpu", "seed": 0, "archs_why": ""}, say=said.append)
    assert not (tmp_path / "margin_vs_M.png").exists() and len(files) == 2
    assert said and "pip install 'moe-oracle[plot]'" in said[0]


# 3. --impl finds the user's code ----------------------------------------------------------------

@pytest.mark.parametrize("spec", ["mykern.bug_ties", "mykern:bug_ties", "mykern.bug_ties:quantize_mxfp4"])
def test_impl_finds_the_users_package_in_the_current_folder(kernel_repo, spec):
    if not Path(sys.executable).with_name("moe-oracle").exists():
        pytest.fail("the console script is not installed next to this interpreter (pip install -e .)")
    r = _cli(["--impl", spec, "--config", "tiny.json", "--only", "quantizers", "-q"], kernel_repo, script=True)
    assert r.returncode == 1, r.stderr  # found, checked, and its bug found
    assert "FAIL quantizers: quantize_mxfp4" in r.stdout and "ties away" in r.stdout


def test_a_one_argument_callable_is_not_taken_for_a_fused_moe(kernel_repo, monkeypatch):
    monkeypatch.syspath_prepend(str(kernel_repo))
    from moe_oracle.implementation import load_spec

    with pytest.raises(ValueError, match="is not a fused_moe"):
        load_spec("mykern.returns:one_tensor")
    assert load_spec("mykern.bug_ties:quantize_mxfp4").provides() == ["quantize_mxfp4"]


# 4. the API ------------------------------------------------------------------------------------

def test_check_moe_without_a_seed_draws_one_and_both_checks_share_one_result_type(capsys):
    def moe(hidden, w1, w1_scale, w2, w2_scale, topk_weights, topk_ids, *, gate_mode, arch, env):
        return mk.fused_moe(hidden, w1, w1_scale, w2, w2_scale, topk_weights, topk_ids, gate_mode=gate_mode,
                            arch=arch, env=env)

    config = {k: v for k, v in TINY.items() if k != "seed"}
    result = moe_oracle.check_moe(moe, config)
    assert isinstance(result, moe_oracle.MoECheck) and isinstance(result.seed, int) and len(result) == 1
    assert result.verdict == "PASS" and result.passed and "all 1 cases pass" in result.diagnosis()
    quant = moe_oracle.check_quantizer(mk.quantize_mxfp4, "quantize_mxfp4", seed=1)
    for check in (result, quant):
        assert check.verdict == "PASS" and check.passed and isinstance(check.diagnosis(), str)
    moe_oracle.assert_conforms(result)
    assert capsys.readouterr().err == ""  # quiet unless progress=True


@pytest.mark.parametrize("kw, error, says", [
    ({"device": "gpu0"}, ValueError, "device='gpu0' is not a device (Invalid device string: 'gpu0'); expected 'cpu', "
                                     "'cuda' or 'cuda:N'"),
    ({"device": "meta"}, ValueError, "device='meta': expected 'cpu', 'cuda' or 'cuda:N' (a ROCm GPU is 'cuda' too)"),
    ({"device": "cuda:1"}, ValueError, "device='cuda:1': torch sees no GPU"),
    ({"archs": ["gfx999"]}, ValueError, "archs: arch='gfx999' is not a known arch; expected one of "),
    ({"archs": "gfx950"}, TypeError, "archs='gfx950': expected a list of arch names, e.g. ['gfx950']"),
    ({"archs": []}, ValueError, "archs=[]: expected at least one arch name (None: the config's, else the defaults)"),
    ({"workers": 0}, ValueError, "workers=0: expected an int >= 1"),
    ({"workers": "2"}, TypeError, "workers='2': expected an int >= 1"),
    ({"workers": True}, TypeError, "workers=True: expected an int >= 1"),
])
def test_check_moe_refuses_its_arguments_by_name_before_any_call(kw, error, says, monkeypatch):
    """Each was a raw torch error, a str compare, or silently accepted (an unknown arch, a string of archs,
    no workers) and the run went on at the device's arch."""
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)  # as on a machine without a GPU
    calls = []
    with pytest.raises(error) as info:
        moe_oracle.check_moe(lambda *a, **k: calls.append(a), TINY, **kw)
    assert str(info.value).startswith(says) and calls == []


def test_check_moe_refuses_a_gpu_while_the_kernels_run_on_the_cpu(monkeypatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: True)  # a GPU, but TRITON_INTERPRET=1 (as here)
    monkeypatch.setattr("moe_oracle.api.default_device", lambda: "cpu")
    with pytest.raises(ValueError) as info:
        moe_oracle.check_moe(lambda *a, **k: None, TINY, device="cuda")
    assert str(info.value) == "device='cuda': TRITON_INTERPRET=1 runs the kernels on the CPU"


def test_check_moe_takes_devices_and_arch_names_as_the_cli_does():
    def moe(hidden, w1, w1_scale, w2, w2_scale, topk_weights, topk_ids, *, arch, env):
        return mk.fused_moe(hidden, w1, w1_scale, w2, w2_scale, topk_weights, topk_ids, arch=arch, env=env)

    config = {k: v for k, v in TINY.items() if k != "archs"}
    import torch

    result = moe_oracle.check_moe(moe, config, device=torch.device("cpu"), archs=("GFX950:xnack-", "gfx950", "gfx942"))
    assert [r["arch"] for r in result] == ["gfx950", "gfx942"] and result.passed


@pytest.mark.parametrize("result", [None, "PASS", [1], [{"verdict": "PASS"}, "PASS"]])
def test_assert_conforms_names_what_it_was_handed(result):
    with pytest.raises(TypeError) as info:
        moe_oracle.assert_conforms(result)
    assert str(info.value).startswith("result: expected a QuantizerCheck, a MoECheck, a row of one or a list of "
                                      "them; got ")


# 5. return values against the contract -----------------------------------------------------------

@pytest.mark.parametrize("name, says", [
    ("scale_as_floats", "returned scale as a tensor float32 [32, 8]; the contract says e8m0 bytes"),
    ("one_tensor", "returned a tensor uint8 [32, 128]; the contract says a pair (codes, scale)"),
    ("int8_codes", "returned codes as a tensor int8 [32, 128]; the contract says one byte per code: uint8 or a float8"),
])
def test_a_wrong_quantizer_return_is_named_against_the_contract(kernel_repo, monkeypatch, name, says):
    monkeypatch.syspath_prepend(str(kernel_repo))
    import importlib

    fn = getattr(importlib.import_module("mykern.returns"), name)
    with pytest.raises(ContractError, match=re.escape(f"{name} {says}")):
        moe_oracle.check_quantizer(fn, "quantize_mxfp4", seed=2)


def test_a_wrong_layer_return_and_a_kwargs_wrapper(kernel_repo, monkeypatch):
    monkeypatch.syspath_prepend(str(kernel_repo))
    from mykern import returns

    rows = moe_oracle.check_moe(returns.moe_in_a_list, TINY)
    assert rows.verdict == "FAIL" and rows[0]["error"].startswith("moe_in_a_list's fused_moe returned a list of 1; "
                                                                  "the contract says a floating tensor [8, 64]")
    assert moe_oracle.check_moe(returns.wrapper, TINY).verdict == "PASS"  # not handed bias1=None / bias2=None


# 6. the report says what its columns hold --------------------------------------------------------

def test_error_and_bound_are_at_the_same_element_and_the_margin_is_explained(tmp_path):
    from moe_oracle import report
    from moe_oracle.compare import compare_output

    ref = np.array([[1.0, 100.0]])
    bound = np.array([[2.0**-10, 1.0]])
    cmp = compare_output(ref + np.array([[2.5e-4, 0.75]]), ref, ref, bound)
    assert cmp["margin"] == cmp["err_at_worst"] / cmp["bound_at_worst"] == 0.75
    assert cmp["max_err_ref"] == 0.75 and not cmp["at_rounding_step"]
    step = compare_output(ref + np.array([[2.0**-10, 0.0]]), ref, ref, bound)
    assert step["margin"] == 1.0 and step["at_rounding_step"]
    row = dict(impl="x", E=4, H=64, I=32, topk=2, M=8, arch="gfx950", env={}, gate_mode="separated",
               scale_mode="round_up", path="a4w4", rule=3, bytes_equal=None, bytes_total=None, verdict="PASS",
               diagnosis=[], **step)
    assert "1 step" in report.format_table([row]) and "1 step" in report.LEGEND and "inf:" in report.LEGEND
    report.write(tmp_path, [row], [], [], {"impl": "x", "device": "cpu", "seed": 0, "archs_why": ""}, say=lambda s: None)
    table = (tmp_path / "report.md").read_text()
    assert "| E/H/I/topk | M |" in table and "| 4/64/32/2 | 8 |" in table and "err at worst | bound at worst" in table


# 7. usage errors are exit 2 before any work -----------------------------------------------------

@pytest.mark.parametrize("args, says", [
    (["--out", "afile"], "--out afile: exists and is not a folder"),
    (["--seed", "-1"], "--seed must be an integer in [0, 2**63)"),
    (["--config", "typo.json", "--quick"], "--quick and --config: the config is the matrix"),
    (["--config", "typo.json"], "'AITER_MOE_FORCE_BF16_ACTS' is not a variable the selector reads (did you mean "
                                "'AITER_MOE_FORCE_BF16_ACT'?)"),
])
def test_usage_errors_exit_2_before_any_work(tmp_path, args, says):
    (tmp_path / "afile").write_text("")
    (tmp_path / "typo.json").write_text(json.dumps({**TINY, "envs": [{"AITER_MOE_FORCE_BF16_ACTS": "1"}]}))
    r = _cli(args, tmp_path)
    assert r.returncode == 2 and says in r.stderr and r.stdout == "", (r.returncode, r.stderr, r.stdout[-500:])


# 8. the pytest plugin ----------------------------------------------------------------------------

def test_plugin_ids_seed_scale_modes_errors_and_short_failures(tmp_path):
    (tmp_path / "mine.py").write_text(textwrap.dedent('''
        import torch, emulation as em
        import moe_kernels as mk
        def bf16_only(hidden, w1, w1_scale, w2, w2_scale, topk_weights, topk_ids, *, gate_mode):
            return mk.fused_moe(hidden, w1, w1_scale, w2, w2_scale, topk_weights, topk_ids, gate_mode=gate_mode,
                                env={"AITER_MOE_FORCE_BF16_ACT": "1"})
    '''))
    (tmp_path / "test_mine.py").write_text(textwrap.dedent('''
        import moe_oracle, moe_kernels as mk
        from mine import bf16_only
        def test_moe(moe_case):
            moe_case.assert_conforms(bf16_only)
        def test_quant(mx_scale_mode):
            moe_oracle.assert_conforms(moe_oracle.check_quantizer(mk.quantize_mxfp4, "quantize_mxfp4",
                                                                  scale_mode=mx_scale_mode))
    '''))
    (tmp_path / "m.json").write_text(json.dumps({**TINY, "M": [256], "scale_modes": ["ceil", "even"], "seed": 4242}))
    from importlib.metadata import entry_points

    installed = any(ep.value == "moe_oracle.pytest_plugin" for ep in entry_points(group="pytest11"))
    load = [] if installed else ["-p", "moe_oracle.pytest_plugin"]
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": f"{ROOT}:{tmp_path}"}
    run = lambda *a: subprocess.run([sys.executable, "-m", "pytest", *load, "-v", "-p", "no:cacheprovider", *a],  # noqa: E731
                                    capture_output=True, text=True, cwd=tmp_path, env=env, timeout=900)
    r = run("--moe-oracle-config", "m.json", "--moe-oracle-device", "cpu")
    assert "moe-oracle data seed: 4242" in r.stdout
    assert "test_moe[E4-H64-I32-k2-M256-gfx950-separated-ceil] FAILED" in r.stdout  # the shape is in the id
    assert "test_quant[ceil] PASSED" in r.stdout and "test_quant[even] PASSED" in r.stdout
    assert "round_down" not in r.stdout and "2 failed, 2 passed" in r.stdout  # the config's scale modes only
    failure = r.stdout.split("FAILURES", 1)[1]
    assert "it took a16w4 where the selector chose a4w4" in failure and "def assert_conforms" not in failure
    assert "bad = []" not in failure and len(failure.splitlines()) < 30  # two failures, ~10 lines each
    bad = run("--moe-oracle-config", "missing.json")
    assert bad.returncode == 4 and "--moe-oracle-config: no file missing.json" in bad.stderr
    for argv, says in ((["--moe-oracle-device", "gpu0"], "--moe-oracle-device: device='gpu0' is not a device"),
                       (["--moe-oracle-seed", "-3"], "--moe-oracle-seed must be an integer in [0, 2**63), got -3")):
        bad = run("--moe-oracle-config", "m.json", *argv)  # a usage error, not an error in every case
        assert bad.returncode == 4 and f"ERROR: {says}" in bad.stderr, (bad.returncode, bad.stderr[-500:])


# 9. the habits of Python tools ------------------------------------------------------------------

def test_version_json_junit_and_quiet(tmp_path):
    v = _cli(["--version"], tmp_path)
    assert v.returncode == 0 and re.fullmatch(r"moe-oracle \S+\n", v.stdout)
    (tmp_path / "t.json").write_text(json.dumps(TINY))
    r = _cli(["--config", str(tmp_path / "t.json"), "--only", "quantizers", "--json", "--junit-xml",
              str(tmp_path / "j.xml")], tmp_path)
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)  # stdout holds the JSON alone
    assert report["summary"] == {"passed": len(report["quantizers"]), "failed": 0} and report["meta"]["version"]
    suites = ET.parse(tmp_path / "j.xml").getroot()
    cases = suites.findall(".//testcase")
    assert len(cases) == len(report["quantizers"]) and not suites.findall(".//failure")
    q = _cli(["--config", str(tmp_path / "t.json"), "--only", "quantizers", "-q"], tmp_path)
    assert q.returncode == 0 and q.stdout.strip().splitlines() == [f"{len(cases)} passed, 0 failed"]
    assert q.stderr == ""  # no progress, no warnings


def test_our_kernels_raise_no_numpy_warnings_under_the_interpreter():
    import torch

    values = np.concatenate([[np.nan, np.inf, -np.inf, 1e38, 0.0], np.ones(59)]).reshape(2, 32)
    x = torch.tensor(values, dtype=torch.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mk.quantize_mxfp4(x)
        mk.quantize_mxfp8(x)
        mk.quantize_fp8_per_token(x)


# 10. torch custom ops -----------------------------------------------------------------------------

def test_custom_ops_trace_under_torch_compile_fullgraph():
    import torch

    from moe_ref import random_moe_problem

    x = torch.randn(8, 64, dtype=torch.bfloat16)
    for op, args in ((torch.ops.moe_kernels.quantize_mxfp4, ("round_up",)),
                     (torch.ops.moe_kernels.quantize_mxfp8, ("e4m3fn", "even")),
                     (torch.ops.moe_kernels.quantize_fp8_per_token, ("e4m3fn",))):
        compiled = torch.compile(lambda t, op=op, args=args: op(t, *args), fullgraph=True, backend="aot_eager")
        for got, want in zip(compiled(x), op(x, *args)):
            assert torch.equal(got, want)
    p = random_moe_problem(np.random.default_rng(3), M=4, E=4, H=64, I=32, topk=2).to_torch()
    eager = mk.fused_moe(*p.args(), arch="gfx950")
    step = torch.compile(lambda *a: torch.ops.moe_kernels.fused_moe(*a, "separated", "round_up", None, None, "gfx950"),
                         fullgraph=True, backend="aot_eager")
    assert torch.equal(step(*p.args()), eager)
    torch.library.opcheck(mk.ops.quantize_mxfp4_op, (x, "round_up"))
    torch.library.opcheck(mk.ops.fused_moe_op, (*p.args(), "separated", "round_up", None, None, "gfx950"))


def test_the_prepared_op_reads_the_held_weights_and_checks_their_shapes(monkeypatch):
    """``torch.ops.moe_kernels.fused_moe_prepared``: what ``fused_moe(prepared=held)`` gives, from the held
    tensors themselves (zeroed prepared w2: a zero output), traced by torch.compile(fullgraph=True) and
    opcheck'ed; prepared tensors of another shape or dtype are refused by name."""
    import torch

    from moe_kernels._tuning import CONFIGS
    from moe_ref import random_moe_problem

    monkeypatch.setitem(CONFIGS, "interpreter", dict(CONFIGS["interpreter"], block_k=64, w_left=True))  # the left GEMMs
    args = random_moe_problem(np.random.default_rng(5), M=6, E=4, H=160, I=96, topk=2).to_torch().args()
    held = mk.prepare_weights(*args[1:5])
    want = mk.fused_moe(*args, arch="gfx950", prepared=held)
    assert want.abs().max() > 0
    fixed = ("separated", "round_up", None, None, "gfx950")
    op = torch.ops.moe_kernels.fused_moe_prepared
    assert torch.equal(op(*args, *fixed, *held.op_args()), want)
    w1p, s1p, w2p, s2p, small = held.op_args()
    assert not op(*args, *fixed, w1p, s1p, torch.zeros_like(w2p), s2p, small).any()  # read, not the cached copies
    step = torch.compile(lambda *a: op(*a, *fixed, *held.op_args()), fullgraph=True, backend="aot_eager")
    assert torch.equal(step(*args), want)
    torch.library.opcheck(mk.ops.fused_moe_prepared_op, (*args, *fixed, *held.op_args()))
    with pytest.raises(ValueError, match=r"^w1_prepared: expected a contiguous \[4, 192, 96\] tensor on cpu"):
        op(*args, *fixed, w1p[..., :64].contiguous(), s1p, w2p, s2p, small)
    with pytest.raises(ValueError, match=r"^w2_scale_prepared: expected a contiguous \[4, 160, 16\] tensor"):
        op(*args, *fixed, w1p, s1p, w2p, s1p, small)
    with pytest.raises(TypeError, match=r"^w2_prepared: expected the torch.uint8 tensor prepare_weights made, got "
                                        r"torch.int8"):
        op(*args, *fixed, w1p, s1p, w2p.view(torch.int8), s2p, small)


@pytest.mark.gpu
def test_custom_ops_inside_a_cuda_graph(monkeypatch):
    """The operators captured in a CUDA graph and replayed: the eager calls' bits. A capture of public
    weights reads them with the tiles for the public layout (a replay must see weights written later), so
    its eager twin is a call without the left-operand tiles; with held weights the capture reads those,
    as an eager call with them does."""
    import torch

    from moe_kernels._tuning import CONFIGS
    from moe_ref import random_moe_problem

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    p = random_moe_problem(np.random.default_rng(4), M=64, E=8, H=256, I=128, topk=2).to_torch()
    args = [t.cuda() for t in p.args()]
    with monkeypatch.context() as m:
        m.setitem(CONFIGS, "gpu", [e for e in CONFIGS["gpu"] if not e.get("w_left")])
        eager = torch.ops.moe_kernels.fused_moe(*args, "separated", "round_up", None, None, None)
    x = args[0]
    torch.ops.moe_kernels.quantize_mxfp4(x, "round_up")  # compiled and warmed before capture
    held = mk.prepare_weights(*args[1:5])  # a serving engine's held weights: the capture reads them
    eager_held = torch.ops.moe_kernels.fused_moe_prepared(*args, "separated", "round_up", None, None, None,
                                                          *held.op_args())
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = torch.ops.moe_kernels.fused_moe(*args, "separated", "round_up", None, None, None)
        out_held = torch.ops.moe_kernels.fused_moe_prepared(*args, "separated", "round_up", None, None, None,
                                                            *held.op_args())
        q, s = torch.ops.moe_kernels.quantize_mxfp4(x, "round_up")
    out.zero_()
    out_held.zero_()
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(out, eager) and torch.equal(out_held, eager_held)
    q_eager, s_eager = mk.quantize_mxfp4(x)
    assert torch.equal(q, q_eager) and torch.equal(s, s_eager)
