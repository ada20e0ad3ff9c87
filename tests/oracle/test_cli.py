"""``moe-oracle verify`` pinned directly: what the command line resolves to (implementation, config,
device, archs, devices, seed), what each part of the engine is asked, what is printed (every line the
run composes), what is written, and the exit status; the engine itself is replaced by spies here (its
own tests check it), so each test takes milliseconds."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

import moe_ref
from moe_oracle import cli, config, devices, engine, outputs, references, report, sharded
from moe_oracle.implementation import Implementation
from tests import cli_reference

LEGEND_MARK = "margin"  # a word of report.LEGEND (printed under the cases' table)


def _fn(*args, **kwargs):
    raise AssertionError("the spies run nothing")


def _impl(name="spy", note="a note", **callables):
    fields = callables or {"quantize_mxfp4": _fn, "fused_moe": _fn, "select_act_dtype": _fn}
    return Implementation(name=name, note=note, **fields)


@dataclasses.dataclass
class Spy:
    """The engine's answers (rows per part) and every call made to it."""

    quant: list = dataclasses.field(default_factory=lambda: [{"verdict": "PASS"}])
    stages: list = dataclasses.field(default_factory=lambda: [{"verdict": "PASS"}])
    rows: list = dataclasses.field(default_factory=lambda: [{"verdict": "PASS"}])
    selector: list = dataclasses.field(default_factory=lambda: [{"agree": True}])
    layer_archs: list | None = dataclasses.field(default_factory=lambda: ["gfx950"])
    impl: Implementation = dataclasses.field(default_factory=_impl)
    checks: list = dataclasses.field(default_factory=list)  # outputs.checks' answer: (part, name, verdict, message)
    calls: dict = dataclasses.field(default_factory=dict)

    def record(self, name, answer):
        def call(*args, **kwargs):
            self.calls.setdefault(name, []).append((args, kwargs))
            return answer() if callable(answer) else answer
        return call


@pytest.fixture
def spy(monkeypatch):
    s = Spy()
    monkeypatch.setattr("moe_oracle.implementations.resolve", s.record("resolve", lambda: s.impl))
    monkeypatch.setattr(engine, "run_quantizers", s.record("run_quantizers", lambda: s.quant))
    monkeypatch.setattr(engine, "run_stages", s.record("run_stages", lambda: s.stages))
    monkeypatch.setattr(engine, "run_layers", s.record("run_layers", lambda: s.rows))
    monkeypatch.setattr(engine, "run_selector", s.record("run_selector", lambda: s.selector))
    monkeypatch.setattr(engine, "layer_archs", s.record("layer_archs", lambda: s.layer_archs))
    monkeypatch.setattr(sharded, "run_on_devices", s.record("run_on_devices", lambda: s.rows))
    monkeypatch.setattr(moe_ref, "detect_arch", lambda: "sm90")
    monkeypatch.setattr(devices, "resolve_device", s.record("resolve_device", "cpu"))
    monkeypatch.setattr(devices, "visible_gpus", s.record("visible_gpus", ["3", "5"]))
    monkeypatch.setattr(references, "peak_memory", lambda: (1.25, 0.0))
    monkeypatch.setattr(report, "format_quantizers", lambda q: f"QUANT TABLE {len(q)}")
    monkeypatch.setattr(report, "format_stages", lambda st: f"STAGE TABLE {len(st)}")
    monkeypatch.setattr(report, "format_table", lambda rows: f"CASE TABLE {len(rows)}")
    monkeypatch.setattr(report, "quant_cost_by_path", s.record("quant_cost_by_path", {"fp8": 0.25, "bf16": 0.5}))
    monkeypatch.setattr(report, "write", s.record("write", [Path("R.json"), Path("R.md")]))
    monkeypatch.setattr(outputs, "checks", s.record("checks", lambda: s.checks))
    monkeypatch.setattr(outputs, "write_junit", s.record("write_junit", None))
    monkeypatch.setattr(outputs, "json_report", s.record("json_report", '{"the": "report"}'))
    monkeypatch.delenv("MOE_ORACLE_SEED", raising=False)
    return s


def _run(capsys, *argv):
    code = cli.main(list(argv))
    out = capsys.readouterr()
    return code, out.out.splitlines(), out.err.splitlines()


def _only_call(spy, name):
    assert len(spy.calls.get(name, [])) == 1, (name, spy.calls.get(name))
    return spy.calls[name][0]


# --- the plan ----------------------------------------------------------------------------------------

def test_a_default_cpu_run_asks_each_part_with_one_plan(spy, capsys):
    code, out, err = _run(capsys, "--impl", "mine")
    assert code == 0 and err == []
    assert _only_call(spy, "resolve") == (("mine",), {})
    assert _only_call(spy, "resolve_device") == ((None,), {})
    assert "visible_gpus" not in spy.calls  # a CPU run asks for no GPU
    seed = int(out[1].split()[1])
    cfg = dataclasses.replace(config.DEFAULT_CPU, seed=seed)
    assert 0 <= seed < 2**32
    assert out[:2] == ["implementation: spy (quantize_mxfp4, fused_moe, select_act_dtype); a note",
                       f"seed: {seed} (rerun with --seed {seed}); archs: gfx942, gfx950 (default) + sm90 "
                       "(the detected device); device: cpu"]
    impl = spy.impl
    assert _only_call(spy, "run_quantizers") == ((impl, cfg), {"device": "cpu"})
    assert "run_stages" not in spy.calls  # it has no moe_gemm_stage
    assert _only_call(spy, "layer_archs") == ((impl, ["gfx942", "gfx950", "sm90"]), {})
    args, kw = _only_call(spy, "run_layers")
    keep = kw.pop("on_row")
    assert isinstance(keep, sharded.RowsFile) and keep.path is None
    assert args == (impl, cfg) and kw == {"device": "cpu", "archs": ["gfx950"], "workers": 1,
                                          "max_memory_gib": None, "progress": True}
    assert _only_call(spy, "run_selector") == ((impl, cfg, ["gfx942", "gfx950", "sm90"]), {})
    assert "run_on_devices" not in spy.calls and "write" not in spy.calls
    assert _only_call(spy, "quant_cost_by_path") == ((spy.rows,), {})
    assert out[2:] == ["", "Quantizers (bytes against the emulation; the diagnosis names the convention followed):",
                       "QUANT TABLE 1", "", "CASE TABLE 1", "", *report.LEGEND.splitlines(),
                       "quantization cost per path (reference vs ideal): bf16 0.5, fp8 0.25", "",
                       "its dispatch vs the selector: 1 of 1 agree",
                       "peak host memory: 1.2 GiB (this process)",
                       "(nothing written: pass --out DIR to keep report.json, report.md and the plot)", "",
                       "3 passed, 0 failed"]


def test_a_drawn_seed_differs_between_runs(spy, capsys):
    seeds = {_run(capsys, "--impl", "x")[1][1].split()[1] for _ in range(4)}
    assert len(seeds) > 1


def test_a_seed_is_drawn_with_32_bits_only_when_none_is_given(spy, capsys, monkeypatch):
    asked = []
    monkeypatch.setattr("secrets.randbits", lambda k: asked.append(k) or 123456)
    assert _run(capsys, "--impl", "x")[1][1].startswith("seed: 123456 (rerun with --seed 123456)")
    assert asked == [32] and _only_call(spy, "run_quantizers")[0][1].seed == 123456
    _run(capsys, "--impl", "x", "--seed", "0")
    assert asked == [32]


def test_without_impl_or_config_it_checks_ours(spy, capsys, monkeypatch):
    assert _run(capsys, "--seed", "1")[0] == 0 and _only_call(spy, "resolve") == (("ours",), {})
    monkeypatch.setattr("sys.argv", ["moe-oracle", "--impl", "from-argv", "--seed", "1"])
    assert cli.main() == 0 and spy.calls["resolve"][1] == (("from-argv",), {})  # no argument: the process's


@pytest.mark.parametrize("argv, base", [(["--quick"], config.QUICK), ([], config.DEFAULT_GPU)])
def test_the_matrix_by_flag_and_device(argv, base, spy, capsys, monkeypatch):
    monkeypatch.setattr(devices, "resolve_device", spy.record("resolve_device", "cuda"))
    monkeypatch.setattr("torch.cuda.get_device_name", lambda *a: "Spy GPU")
    code, out, _ = _run(capsys, "--impl", "x", "--seed", "7", "--device", "cuda", "--workers", "3",
                        "--max-memory-gb", "2.5", "-q", *argv)
    assert code == 0 and out == ["3 passed, 0 failed"]  # -q: the last line only, no blank line before it
    cfg = dataclasses.replace(base, seed=7)
    assert _only_call(spy, "resolve_device") == (("cuda",), {})
    assert _only_call(spy, "visible_gpus") == ((), {})
    args, kw = _only_call(spy, "run_layers")
    assert args == (spy.impl, cfg) and kw["device"] == "cuda" and kw["workers"] == 3
    assert kw["max_memory_gib"] == 2.5 and kw["progress"] is False


def test_a_config_gives_the_matrix_the_archs_and_the_implementation(spy, capsys, tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"M": [1, 5], "archs": ["gfx950", "gfx942:xnack-"], "impl": "from-config", "seed": 9}))
    code, out, _ = _run(capsys, "--config", str(path))
    assert code == 0
    assert _only_call(spy, "resolve") == (("from-config",), {})
    cfg = config.load_config(str(path))
    assert cfg.seed == 9 and _only_call(spy, "run_quantizers")[0][1] == cfg
    assert out[1] == "seed: 9 (rerun with --seed 9); archs: gfx950, gfx942 (config); device: cpu"
    assert _only_call(spy, "run_selector")[0][2] == ["gfx950", "gfx942"]
    _run(capsys, "--config", str(path), "--impl", "given", "--seed", "0", "--arch", "GFX950", "--arch", "gfx950",
         "--arch", "gfx942")
    assert spy.calls["resolve"][1] == (("given",), {})
    assert spy.calls["run_quantizers"][1][0][1] == dataclasses.replace(cfg, seed=0)
    assert spy.calls["run_selector"][1][0][2] == ["gfx950", "gfx942"]  # normalized, each once, in order


def test_arch_flags_are_named_and_normalized(spy, capsys):
    _, out, _ = _run(capsys, "--impl", "x", "--arch", "gfx942:xnack-", "--arch", "gfx950:sramecc+", "--arch", "GFX942")
    assert out[1].endswith("archs: gfx942, gfx950 (--arch); device: cpu")
    code, _, err = _run(capsys, "--impl", "x", "--arch", "gfx9000")
    assert code == 2 and err[0].startswith("moe-oracle verify: --arch: ") and "gfx9000" in err[0]


def test_devices_shard_the_layer_cases(spy, capsys, monkeypatch, tmp_path):
    monkeypatch.setattr(devices, "resolve_device", spy.record("resolve_device", "cuda"))
    monkeypatch.setattr("torch.cuda.get_device_name", lambda *a: "Spy GPU")
    out_dir = tmp_path / "out"
    code, out, _ = _run(capsys, "--impl", "x", "--seed", "1", "--devices", "2", "--workers", "2", "--out", str(out_dir),
                        "--only", "moe", "--max-memory-gb", "6")
    assert code == 0 and "MoE cases over 2 devices (3, 5)" in out
    args, kw = _only_call(spy, "run_on_devices")
    assert args == ("x", spy.impl, dataclasses.replace(config.DEFAULT_GPU, seed=1), ["gfx950"], 2, ["3", "5"])
    assert kw == {"device": "cuda", "workers": 2, "max_memory_gib": 6.0, "log_dir": out_dir / "devices"}
    assert "run_layers" not in spy.calls and "run_quantizers" not in spy.calls
    assert _only_call(spy, "write")[0][4]["device"] == "Spy GPU"
    code, _, err = _run(capsys, "--impl", "x", "--devices", "3")
    assert code == 2 and err == ["moe-oracle verify: --devices 3: only 2 GPU(s) visible (3, 5)"]


def test_cpu_processes_are_named_as_such(spy, capsys):
    code, out, _ = _run(capsys, "--impl", "x", "--seed", "1", "--devices", "2")
    assert code == 0 and "MoE cases over 2 devices (CPU processes)" in out
    assert _only_call(spy, "run_on_devices")[0][4:] == (2, [])


def test_a_layer_without_arch_runs_at_the_detected_one(spy, capsys):
    spy.layer_archs = None
    _, out, _ = _run(capsys, "--impl", "x", "--seed", "1")
    assert "note: spy's fused_moe takes no arch: run at the device's arch (sm90) only" in out
    assert _only_call(spy, "run_layers")[1]["archs"] == ["sm90"]


def test_out_keeps_the_rows_as_they_come_and_writes_the_report(spy, capsys, tmp_path):
    out_dir = tmp_path / "o"
    code, out, _ = _run(capsys, "--impl", "x", "--seed", "4", "--out", str(out_dir))
    assert code == 0
    keep = _only_call(spy, "run_layers")[1]["on_row"]
    assert keep.path == out_dir / sharded.RowsFile.NAME and not keep.path.exists()  # the report replaced it
    args, kw = _only_call(spy, "write")
    assert args[:4] == (out_dir, spy.rows, spy.quant, spy.selector) and args[5] == []  # no stages: none ran
    assert kw["say"] is not None
    import torch

    cfg = dataclasses.replace(config.DEFAULT_CPU, seed=4)
    assert args[4] == {"peak_host_gib": 1.25, "peak_worker_gib": 0.0, "impl": "spy",
                       "device": "cpu (Triton interpreter)", "seed": 4, "config": dataclasses.asdict(cfg),
                       "archs": ["gfx942", "gfx950", "sm90"],
                       "archs_why": "gfx942, gfx950 (default) + sm90 (the detected device)",
                       "torch": torch.__version__, "version": cli.__version__}
    assert out[-4:] == ["peak host memory: 1.2 GiB (this process)", "wrote R.json, R.md", "", "3 passed, 0 failed"]


def test_peak_memory_names_the_largest_worker(spy, capsys, monkeypatch, tmp_path):
    monkeypatch.setattr(references, "peak_memory", lambda: (1.23456, 2.34567))
    _, out, _ = _run(capsys, "--impl", "x", "--seed", "1", "--out", str(tmp_path))
    assert "peak host memory: 1.2 GiB (this process), 2.3 GiB (the largest reference worker)" in out
    meta = _only_call(spy, "write")[0][4]
    assert (meta["peak_host_gib"], meta["peak_worker_gib"]) == (1.23, 2.35)


def test_an_implementation_without_a_note_gets_none(spy, capsys):
    spy.impl = _impl(note="")
    assert _run(capsys, "--impl", "x", "--seed", "1")[1][0] == ("implementation: spy (quantize_mxfp4, fused_moe, "
                                                                "select_act_dtype)")


FAILING_CHECKS = [("moe", "case a", "FAIL", "margin 2"), ("moe", "case b", "PASS", ""), ("quantizers", "q", "FAIL", "x")]


def test_quiet_json_sends_the_last_line_and_the_failures_to_stderr(spy, capsys):
    spy.quant = [{"verdict": "FAIL"}]
    spy.checks = FAILING_CHECKS
    code, out, err = _run(capsys, "--impl", "x", "--seed", "1", "-q", "--json")
    assert code == 1 and out == ['{"the": "report"}']
    assert err == ["FAIL moe: case a: margin 2", "FAIL quantizers: q: x", "2 passed, 1 failed"]


@pytest.mark.parametrize("flag", ["--json", "--junit-xml"])
def test_an_output_flag_alone_is_not_told_nothing_was_written(flag, spy, capsys, tmp_path):
    argv = [flag] + ([str(tmp_path / "j.xml")] if flag == "--junit-xml" else [])
    _, out, err = _run(capsys, "--impl", "x", "--seed", "1", *argv)
    assert not any(line.startswith("(nothing written") for line in out + err)


def test_junit_and_json(spy, capsys, tmp_path):
    spy.checks = FAILING_CHECKS
    xml = tmp_path / "j.xml"
    code, out, err = _run(capsys, "--impl", "x", "--seed", "1", "--junit-xml", str(xml), "--json")
    assert code == 0 and out == ['{"the": "report"}']  # stdout holds the JSON alone
    assert err[0].startswith("implementation: spy") and err[-1] == "3 passed, 0 failed"
    assert f"wrote {xml}" in err and not any(line.startswith("(nothing written") for line in err)
    checks = spy.calls["checks"][0]
    assert checks == ((spy.rows, spy.quant, [], spy.selector), {})
    assert _only_call(spy, "write_junit") == ((xml, "spy", FAILING_CHECKS), {})
    meta = _only_call(spy, "json_report")[0][0]
    assert _only_call(spy, "json_report")[0][1:] == (spy.rows, spy.quant, [], spy.selector, 3, 0)
    assert meta["seed"] == 1 and meta["impl"] == "spy"


@pytest.mark.parametrize("part, failing", [("rows", {"verdict": "FAIL"}), ("quant", {"verdict": "FAIL"}),
                                           ("stages", {"verdict": "FAIL"}),
                                           ("selector", {"agree": False, "M": 1, "arch": "gfx950", "gate_mode": "separated",
                                                         "env": {}, "selector": "bf16", "impl": "fp8"})])
def test_any_failing_check_fails_the_run(part, failing, spy, capsys, monkeypatch):
    spy.impl = _impl(quantize_mxfp4=_fn, moe_gemm_stage=_fn, fused_moe=_fn, select_act_dtype=_fn)
    getattr(spy, part).append(failing)
    code, out, _ = _run(capsys, "--impl", "x", "--seed", "1")
    assert code == 1 and out[-1] == "4 passed, 1 failed"
    code, out, _ = _run(capsys, "--impl", "x", "--seed", "1", "--json")
    json_failed = spy.calls["json_report"][-1][0][5:]
    assert code == 1 and json_failed == (4, 1)


def test_interp_verdicts_are_counted_apart(spy, capsys):
    spy.rows = [{"verdict": "INTERP"}, {"verdict": "INTERP"}, {"verdict": "PASS"}]
    code, out, _ = _run(capsys, "--impl", "x", "--seed", "1")
    assert code == 0 and out[-1] == ("3 passed, 0 failed (2 more differ only by the Triton interpreter's own casts: "
                                     "INTERP)")


def test_stages_and_the_selectors_disagreements_are_printed(spy, capsys):
    spy.impl = _impl(moe_gemm_stage=_fn, select_act_dtype=_fn)
    spy.selector = [{"agree": True}] + [{"agree": False, "M": m, "arch": "gfx950", "gate_mode": "separated",
                                         "env": {}, "selector": "fp4x2", "impl": "bf16"} for m in range(25)]
    code, out, _ = _run(capsys, "--impl", "x", "--seed", "1", "--only", "moe")
    assert code == 1
    assert _only_call(spy, "run_stages") == ((spy.impl, dataclasses.replace(config.DEFAULT_CPU, seed=1)),
                                             {"device": "cpu"})
    at = out.index("its dispatch vs the selector: 1 of 26 agree")
    assert out[2:5] == ["", "MoE GEMM stage (bf16 outputs against the exact reference within the derived bound):",
                        "STAGE TABLE 1"]
    assert out[at + 1:at + 21] == [f"    M={m} gfx950 separated env={{}}: selector fp4x2, it bf16" for m in range(20)]
    assert out[at + 21].startswith("peak host memory")


def test_error_rows_are_named_even_when_quiet(spy, capsys):
    spy.rows = [{"verdict": "FAIL", "error": f"boom {i}", "E": 4, "H": 64, "I": 32, "M": i, "gate_mode": "interleave",
                 "env": {"X": "1"}} for i in range(12)]
    spy.checks = FAILING_CHECKS
    spy.impl = _impl(quantize_mxfp4=_fn, moe_gemm_stage=_fn, fused_moe=_fn, select_act_dtype=_fn)
    code, out, _ = _run(capsys, "--impl", "x", "--seed", "1", "-q")
    assert code == 1
    assert _only_call(spy, "checks") == ((spy.rows, spy.quant, spy.stages, spy.selector), {})
    assert out == ["12 case(s) could not be checked (an error row each, a FAIL):",
                   *[f"    E=4 H=64 I=32 M={i} interleave env={{'X': '1'}}: boom {i}" for i in range(10)],
                   "FAIL moe: case a: margin 2", "FAIL quantizers: q: x", "3 passed, 12 failed"]


def test_a_run_the_matrix_gives_nothing_is_a_usage_error(spy, capsys):
    spy.quant, spy.rows, spy.selector = [], [], []
    code, _, err = _run(capsys, "--impl", "x", "--seed", "1")
    assert code == 2 and err == ["moe-oracle verify: nothing was checked: the matrix gave spy no case for quantizers, "
                                 "moe, dispatch"]


# --- what is planned, and usage errors -----------------------------------------------------------------

@pytest.mark.parametrize("only, callables, parts", [
    ("all", ("quantize_mxfp4", "moe_gemm_stage", "fused_moe", "select_act_dtype"),
     ["quantizers", "stages", "moe", "dispatch"]),
    ("quantizers", ("quantize_mxfp4", "moe_gemm_stage", "fused_moe", "select_act_dtype"), ["quantizers"]),
    ("moe", ("quantize_mxfp4", "moe_gemm_stage", "fused_moe", "select_act_dtype"), ["stages", "moe", "dispatch"]),
    ("all", ("fused_moe",), ["moe"]), ("all", ("select_act_dtype",), ["dispatch"]),
    ("all", ("moe_gemm_stage",), ["stages"]), ("all", ("quantize_fp8_per_token",), ["quantizers"]),
    ("moe", ("quantize_mxfp4",), []), ("quantizers", ("fused_moe",), []), ("dispatch", ("fused_moe",), []),
])
def test_planned_parts(only, callables, parts):
    assert cli._planned(_impl(**{c: _fn for c in callables}), only) == parts


@pytest.mark.parametrize("callables, only, message", [
    ({"quantize_mxfp4": _fn}, "moe", "spy provides quantize_mxfp4; --only moe checks fused_moe, GEMM stages and "
                                     "dispatch"),
    ({"fused_moe": _fn}, "quantizers", "spy provides fused_moe; --only quantizers checks quantizers"),
    ({"quantize_mxfp4": _fn, "quantize_mxfp8": _fn}, "moe", "spy provides quantize_mxfp4, quantize_mxfp8; --only "
                                                          "moe checks fused_moe, GEMM stages and dispatch"),
    ({"version": "1"}, "all", "spy provides none of the contract's callables; --only all checks quantizers, GEMM "
                              "stages, fused_moe and dispatch"),
])
def test_nothing_to_check_says_what_it_provides(callables, only, message, spy, capsys):
    spy.impl = _impl(**callables)
    code, _, err = _run(capsys, "--impl", "x", "--only", only)
    assert code == 2 and err == [f"moe-oracle verify: nothing to check: {message}"]
    assert "run_quantizers" not in spy.calls and "resolve_device" not in spy.calls


@pytest.mark.parametrize("argv, message", [
    (["--workers", "0"], "--workers must be > 0, got 0"),
    (["--workers", "-2"], "--workers must be > 0, got -2"),
    (["--max-memory-gb", "0"], "--max-memory-gb must be > 0, got 0.0"),
    (["--max-memory-gb", "nan"], "--max-memory-gb must be > 0, got nan"),
    (["--seed", "-1"], "--seed must be an integer in [0, 2**63), got -1"),
    (["--seed", str(2**63)], f"--seed must be an integer in [0, 2**63), got {2**63}"),
    (["--out", " "], "--out: empty path"),
    (["--junit-xml", ""], "--junit-xml: empty path"),
    (["--quick", "--config", "c.json"], "--quick and --config: the config is the matrix; give one of them"),
    (["--impl", " "], "--impl '': empty; expected ours, aiter-triton, triton-kernels, a module or module:attr"),
])
def test_usage_problems_exit_2_before_any_work(argv, message, spy, capsys):
    code, out, err = _run(capsys, *argv)
    assert code == 2 and out == [] and err == [f"moe-oracle verify: {message}"]
    assert spy.calls == {}


def test_out_and_junit_paths_are_checked(spy, capsys, tmp_path):
    a_file, a_dir = tmp_path / "f", tmp_path / "d"
    a_file.write_text("")
    a_dir.mkdir()
    assert _run(capsys, "--out", str(a_file))[2] == [f"moe-oracle verify: --out {a_file}: exists and is not a folder"]
    assert _run(capsys, "--junit-xml", str(a_dir))[2] == [
        f"moe-oracle verify: --junit-xml {a_dir}: is a folder; expected a file path"]
    under_a_file = a_file / "sub"  # a folder that cannot be made: found before the run, not after it (exit 1)
    assert _run(capsys, "--out", str(under_a_file))[2] == [
        f"moe-oracle verify: --out {under_a_file}: cannot write in {under_a_file} (Not a directory)"]
    assert _run(capsys, "--junit-xml", str(under_a_file / "j.xml"))[2] == [
        f"moe-oracle verify: --junit-xml {under_a_file / 'j.xml'}: cannot write in {under_a_file} (Not a directory)"]
    assert spy.calls == {} and sorted(p.name for p in tmp_path.iterdir()) == ["d", "f"]
    for argv in (["--out", str(a_dir)], ["--out", str(tmp_path / "new" / "deeper")], ["--junit-xml", str(a_file)],
                 ["--junit-xml", str(tmp_path / "made" / "j.xml")],
                 ["--workers", "1", "--max-memory-gb", "0.5", "--seed", "0"], ["--seed", str(2**63 - 1)]):
        assert _run(capsys, "--impl", "x", *argv)[0] == 0, argv
    assert (tmp_path / "new" / "deeper").is_dir() and (tmp_path / "made").is_dir()  # made first, as the run would
    assert list((tmp_path / "new" / "deeper").iterdir()) == []  # the probe file is gone


def test_a_folder_that_exists_but_takes_no_file_is_refused(spy, capsys, tmp_path, monkeypatch):
    """The probe writes in the folder itself (as root no permission bit stops it: the refusal is simulated)."""
    import tempfile

    probed = []

    def refusing(*args, dir=None, **kwargs):
        probed.append(dir)
        raise PermissionError(13, "Permission denied") if len(probed) == 1 else OSError("no strerror")

    monkeypatch.setattr(tempfile, "TemporaryFile", refusing)
    assert _run(capsys, "--out", str(tmp_path))[2] == [
        f"moe-oracle verify: --out {tmp_path}: cannot write in {tmp_path} (Permission denied)"]
    assert _run(capsys, "--junit-xml", str(tmp_path / "j.xml"))[2] == [
        f"moe-oracle verify: --junit-xml {tmp_path / 'j.xml'}: cannot write in {tmp_path} (OSError)"]
    assert probed == [tmp_path, tmp_path] and spy.calls == {}


@pytest.mark.parametrize("raised, message", [
    (ValueError("impl='q': no module q"), "impl='q': no module q"),
    (ImportError("no module named q"), "no module named q"),
    (RuntimeError("not installed"), "implementation 'q' unavailable here: not installed"),
])
def test_an_implementation_that_does_not_resolve_is_a_usage_error(raised, message, spy, capsys, monkeypatch):
    def resolve(spec):
        raise raised
    monkeypatch.setattr("moe_oracle.implementations.resolve", resolve)
    code, out, err = _run(capsys, "--impl", "q")
    assert code == 2 and out == [] and err == [f"moe-oracle verify: {message}"]


def test_device_problems_are_usage_errors(spy, capsys, monkeypatch):
    def no_gpu(asked):
        raise ValueError("--device cuda: no GPU is visible")
    monkeypatch.setattr(devices, "resolve_device", no_gpu)
    code, _, err = _run(capsys, "--impl", "x", "--device", "cuda")
    assert code == 2 and err == ["moe-oracle verify: --device cuda: no GPU is visible"]
    monkeypatch.setattr(devices, "resolve_device", lambda asked: "cpu")
    code, _, err = _run(capsys, "--impl", "x", "--devices", "two")
    assert code == 2 and err == ["moe-oracle verify: --devices: expected 'all' or a positive integer, got 'two'"]


def test_without_torch_it_says_what_to_install(capsys, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "torch" else real(name, *a))
    code, out, err = _run(capsys, "--impl", "x")
    assert code == 2 and out == [] and err == [cli._NEEDS]


@pytest.mark.parametrize("argv", [["--only", "dispatch"], ["--aiter-repo", "somewhere"],
                                  ["--only", "quantizers", "--aiter-repo", "r"]])
def test_dispatch_runs_go_to_the_dispatch_command(argv, spy, monkeypatch):
    seen = []
    monkeypatch.setattr("moe_oracle.dispatch_cli.run", lambda args: seen.append(args) or 5)
    assert cli.main(argv) == 5 and len(seen) == 1
    assert seen[0].only == (argv[argv.index("--only") + 1] if "--only" in argv else "all")
    assert seen[0].aiter_repo == (argv[argv.index("--aiter-repo") + 1] if "--aiter-repo" in argv else None)
    assert spy.calls == {}


@pytest.mark.parametrize("path, cwd_added", [(["a", "b"], True), (["", "b"], False), (["CWD", "b"], False)])
def test_the_current_folder_is_importable(path, cwd_added, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    cwd = str(Path.cwd())
    before = [cwd if p == "CWD" else p for p in path]
    monkeypatch.setattr("sys.path", list(before))
    cli._importable_cwd()
    import sys

    assert sys.path == ([cwd, *before] if cwd_added else before)


# --- --memcheck ----------------------------------------------------------------------------------------

@pytest.fixture
def sanitizer(spy, monkeypatch):
    seen = []
    monkeypatch.setattr(devices, "resolve_device", lambda asked: "cuda")
    monkeypatch.setattr("torch.version.hip", None)
    monkeypatch.setattr("moe_oracle.memcheck.find_sanitizer", lambda: "/opt/cs")
    monkeypatch.setattr("moe_oracle.memcheck.run", lambda *a, **kw: seen.append((a, kw)) or 7)
    return seen


def test_memcheck_runs_the_same_line_under_the_sanitizer(sanitizer, capsys):
    argv = ["--impl", "x", "--memc", "--seed", "2", "--out", "o", "--junit-xml", "j.xml", "--json", "--devices", "1"]
    assert cli.main(argv) == 7
    assert sanitizer == [((["--impl", "x", "--seed", "2", "--out", "o", "--junit-xml", "j.xml", "--json", "--devices",
                            "1"], "/opt/cs"), {"out": "o", "junit": "j.xml", "as_json": True})]
    assert cli.main(["--impl", "x", "--memcheck"]) == 7
    assert sanitizer[1] == ((["--impl", "x"], "/opt/cs"), {"out": None, "junit": None, "as_json": False})


@pytest.mark.parametrize("flag", ["--me", "--mem", "--memcheck"])
def test_memcheck_leaves_no_spelling_of_itself_for_the_run_under_the_sanitizer(flag, sanitizer):
    """argparse takes any unique prefix of --memcheck ("--me" on): the run under the sanitizer must not see
    one again (it would start the sanitizer inside itself); values that are prefixes ("-") stay."""
    assert cli.main(["--out", "-", flag, "--max-memory-gb", "3"]) == 7
    assert sanitizer[0][0][0] == ["--out", "-", "--max-memory-gb", "3"]


@pytest.mark.parametrize("case, message", [
    ("cpu", "--memcheck: compute-sanitizer checks NVIDIA GPU kernels; this run is on the CPU (the Triton interpreter)"),
    ("rocm", "--memcheck: compute-sanitizer checks NVIDIA GPU kernels; this run is on ROCm"),
    ("devices", "--memcheck runs the cases in one process: drop --devices"),
    ("missing", "--memcheck: compute-sanitizer not found (looked at $MOE_ORACLE_COMPUTE_SANITIZER, PATH, "
                "$CUDA_HOME/bin, /usr/local/cuda/bin)"),
])
def test_memcheck_refusals(case, message, sanitizer, capsys, monkeypatch):
    argv = ["--impl", "x", "--memcheck"]
    if case == "cpu":
        monkeypatch.setattr(devices, "resolve_device", lambda asked: "cpu")
    if case == "rocm":
        monkeypatch.setattr("torch.version.hip", "6.4")
    if case == "devices":
        argv += ["--devices", "2"]
    if case == "missing":
        monkeypatch.setattr("moe_oracle.memcheck.find_sanitizer", lambda: None)
    code, out, err = _run(capsys, *argv)
    assert code == 2 and out == [] and err == [f"moe-oracle verify: {message}"] and sanitizer == []


# --- the console script and the parser -----------------------------------------------------------------

def _console(capsys, monkeypatch, *argv):
    monkeypatch.setattr("sys.argv", ["/somewhere/__main__.py", *argv])  # the program is named, not taken from here
    with pytest.raises(SystemExit) as stop:
        cli.cli()
    out = capsys.readouterr()
    return stop.value.code, out.out, out.err


TOP = ["usage: moe-oracle [-h] [--version] {verify}", "",
       "Prove that MXFP4 MoE kernels compute exactly what they should.", "", "positional arguments:",
       "  {verify}    verify: the conformance report", "", "options:", "  -h, --help  show this help message and exit",
       "  --version   show program's version number and exit", "", "commands:",
       "  verify    the conformance report (moe-oracle verify --help)", ""]


@pytest.mark.parametrize("argv, code", [([], 2), (["-h"], 0), (["--help"], 0)])
def test_the_console_script_prints_both_helps(argv, code, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")
    got, out, err = _console(capsys, monkeypatch, *argv)
    assert got == code and err == ""
    assert out == "\n".join(TOP) + "\n" + cli.build_parser().format_help() + "\n"


def test_the_console_script_version_unknown_commands_and_verify(capsys, monkeypatch):
    seen = []
    monkeypatch.setattr(cli, "main", lambda argv: seen.append(argv) or 3)
    assert _console(capsys, monkeypatch, "--version")[:2] == (0, f"moe-oracle {cli.__version__}\n")
    code, out, err = _console(capsys, monkeypatch, "check", "--quick")
    assert code == 2 and out == "" and err.endswith("moe-oracle: error: unknown command 'check'; expected: verify\n")
    assert seen == []
    assert _console(capsys, monkeypatch, "verify", "--quick", "verify")[0] == 3 and seen == [["--quick", "verify"]]
    monkeypatch.setattr("sys.argv", ["moe-oracle", "verify", "--from-sys-argv"])
    for argv, code in ((["verify", "--seed", "2"], 3), (["--version"], 0), (["-h"], 0), ([], 2)):
        with pytest.raises(SystemExit) as stop:
            cli.cli(argv)  # the arguments given, not the process's
        assert stop.value.code == code
    assert seen[-1] == ["--seed", "2"] and capsys.readouterr().out.startswith(f"moe-oracle {cli.__version__}\n")
    with pytest.raises(SystemExit):
        cli.cli()
    assert seen[-1] == ["--from-sys-argv"]


def test_the_parsers_defaults():
    got = vars(cli.build_parser().parse_args([]))
    assert got == {"impl": None, "config": None, "device": None, "arch": None, "seed": None, "out": None,
                   "quick": False, "workers": None, "max_memory_gb": None, "devices": None, "memcheck": False,
                   "quiet": False, "json": False, "junit_xml": None, "only": "all", "aiter_repo": None,
                   "since": None, "until": None}
    parsed = cli.build_parser().parse_args(["--arch", "a", "--arch", "b", "--seed", "3", "--max-memory-gb", "1.5",
                                            "--workers", "2", "--device", "cpu", "--only", "moe", "-q"])
    assert parsed.arch == ["a", "b"] and parsed.seed == 3 and parsed.max_memory_gb == 1.5 and parsed.workers == 2
    assert parsed.device == "cpu" and parsed.only == "moe" and parsed.quiet
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["--device", "rocm"])


def test_the_readme_options_table_is_the_parsers(capsys):
    """The README's table is generated from the parser (``python -m tests.cli_reference``): flags, values,
    defaults, help, the description and the exit-status epilog."""
    readme = cli_reference.README.read_text()
    assert cli_reference.readme_block(readme) == cli_reference.options_table(), "run: python -m tests.cli_reference"
    parser = cli.build_parser()
    assert parser.prog == "moe-oracle verify"
    assert parser.description.startswith("moe-oracle verify: the conformance report of an implementation")
    with pytest.raises(SystemExit) as stop:
        parser.parse_args(["--version"])
    assert stop.value.code == 0 and capsys.readouterr().out == f"moe-oracle {cli.__version__}\n"
