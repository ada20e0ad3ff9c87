"""The conformance report: schema (bound and margin per case), exit status, config files and their
errors, arch names, the CLI's help and messages, a smoke run."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

import moe_kernels  # noqa: F401  (interpreter on before triton on a CPU machine)
from moe_oracle import cli, config, engine
from moe_oracle.compare import compare_output, margin_of
from moe_oracle.implementations import ours
from moe_oracle.progress import Progress
from moe_oracle.rows import LayerRow

TINY = {"shapes": [{"E": 4, "H": 64, "I": 32, "topk": 2}], "M": [1, 300], "archs": ["gfx950"], "envs": [{}],
        "gate_modes": ["separated"], "scale_modes": ["round_up", "even"], "seed": 3}
ROW_KEYS = LayerRow.__required_keys__  # the one definition of a row (moe_oracle.rows)


def _write(tmp_path, data, name="cfg.json"):
    path = tmp_path / name
    path.write_text(json.dumps(data) if name.endswith(".json") else data)
    return str(path)


def test_report_schema_bound_margin_and_files(tmp_path, capsys):
    out = tmp_path / "out"
    assert cli.main(["--config", _write(tmp_path, TINY), "--out", str(out), "--only", "moe"]) == 0
    text = capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    assert {"meta", "cases", "quantizers", "stages", "selector"} == set(report)
    assert {"device", "seed", "config", "archs", "archs_why", "impl"} <= set(report["meta"])
    rows = report["cases"]
    assert [r["M"] for r in rows] == [1, 300, 300] and {r["path"] for r in rows} == {"a16w4", "a4w4"}
    assert all(set(r) == ROW_KEYS and r["verdict"] == "PASS" for r in rows)
    assert all(r["bytes_equal"] == r["bytes_total"] > 0 for r in rows)
    assert all(0 <= r["margin"] <= 1 and r["bound_max"] > 0 for r in rows)
    a4w4 = [r for r in rows if r["path"] == "a4w4"]
    assert all(r["quant_cost_rel"] > 0.05 for r in a4w4)  # the format's own cost, shown as such
    md = (out / "report.md").read_text()
    assert "| 300 | gfx950 |" in md and "margin" in md and "Legend" in md
    assert (out / "margin_vs_M.png").read_bytes()[:4] == b"\x89PNG"
    assert "Legend:" in text and "margin" in text and f"wrote {out / 'report.json'}" in text
    assert "archs: gfx950 (config)" in text  # the config's archs, nothing added


def test_without_out_it_says_nothing_was_written(tmp_path, capsys):
    cli.main(["--config", _write(tmp_path, {**TINY, "M": [1]}), "--only", "moe"])
    assert "nothing written: pass --out DIR" in capsys.readouterr().out


def test_a_mismatching_reference_fails_the_run(tmp_path, capsys):
    bad = {**TINY, "M": [300], "scale_modes": ["round_up"], "reference_act_dtype": "fp8"}
    assert cli.main(["--config", _write(tmp_path, bad), "--only", "moe"]) == 1
    out = capsys.readouterr().out
    assert "0 passed, 1 failed" in out and "matches the a4w4 path's reference" in out


@pytest.mark.parametrize("factor, verdict", [(0.99, True), (1.01, False)])
def test_an_output_just_past_the_bound_fails_and_just_inside_passes(factor, verdict, rng):
    """The verdict is the bound: one element moved by 0.99 / 1.01 times its bound passes / fails."""
    from moe_oracle import references as refs
    from moe_oracle.cases import LayerCase

    case = LayerCase(shape=TINY["shapes"][0], M=300, arch="gfx950", env={}, gate_mode="separated", scale_mode="round_up")
    _, ref, ideal, bound = refs.reference({}, case, "fp4x2", 3, None)
    out = ref.astype(np.float64).copy()
    live = np.flatnonzero(bound > 0)  # elements whose bf16 output may move at all (elsewhere it must be exact)
    assert live.size and (bound == 0).any()
    i = int(rng.choice(live))
    out.reshape(-1)[i] += factor * bound.reshape(-1)[i]
    cmp = compare_output(out, ref, ideal, bound)
    assert cmp["within_tolerance"] is verdict and cmp["margin"] == pytest.approx(factor)


@pytest.mark.parametrize("err, bound, margin", [([0.0, 1.0], [1.0, 2.0], 0.5), ([0.0], [0.0], 0.0), ([1e-9], [0.0], np.inf),
                                                ([np.nan], [1.0], np.inf), ([2.0, 0.5], [1.0, 1.0], 2.0)])
def test_margin_definition(err, bound, margin):
    assert margin_of(np.array(err), np.array(bound)) == margin


def test_toml_config(tmp_path):
    text = 'M = [1]\narchs = ["gfx942"]\ngate_modes = ["interleave"]\nseed = 5\n\n[[shapes]]\nE = 2\nH = 32\nI = 32\ntopk = 1\n'
    cfg = config.load_config(_write(tmp_path, text, "cfg.toml"))
    assert cfg.M == (1,) and cfg.shapes == ({"E": 2, "H": 32, "I": 32, "topk": 1},) and cfg.seed == 5


@pytest.mark.parametrize(
    "content, name, match",
    [({"Ms": [1]}, "c.json", r"unknown key\(s\) \['Ms'\]"), ({"M": [-1]}, "c.json", "M values"),
     ({"M": 5}, "c.json", "M must be a non-empty list"), ({"shapes": [{"E": 2, "H": 33, "I": 32, "topk": 1}]}, "c.json", "multiple of 32"),
     ({"shapes": [{"E": 2}]}, "c.json", "exactly E, H, I, topk"), ({"scale_modes": ["nearest"]}, "c.json", "scale_mode"),
     ({"envs": [{"AITER_MOE_FORCE_BF16_ACT": 1}]}, "c.json", "envs"), ({"tolerance_scale": 0}, "c.json", "tolerance_scale"),
     ({"archs": ["gfx9999"]}, "c.json", "archs: arch='gfx9999' is not a known arch; expected one of gfx90a"),
     ({"gate_modes": ["both"]}, "c.json", "gate_modes"), ({"impl": 3}, "c.json", "impl"),
     ("{not json", "c.json", "invalid JSON"), ("M = [", "c.toml", "invalid TOML"), ("x", "c.yaml", "json or .toml")],
)
def test_config_errors(tmp_path, content, name, match, capsys):
    path = tmp_path / name
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    with pytest.raises(ValueError, match=match):
        config.load_config(str(path))
    assert cli.main(["--config", str(path)]) == 2
    assert "moe-oracle verify:" in capsys.readouterr().err


def test_unknown_arch_option_is_an_error_listing_the_known_ones(capsys):
    assert cli.main(["--arch", "gfx9999", "--quick"]) == 2
    err = capsys.readouterr().err
    assert "gfx9999" in err and "gfx942" in err and "gfx950" in err and "sm<NN>" in err


def test_unknown_impl_is_an_error(capsys):
    assert cli.main(["--impl", "nonesuch"]) == 2
    assert "impl='nonesuch' is not known" in capsys.readouterr().err


def test_console_help_exits_0_and_lists_the_options():
    for argv in (["--help"], ["verify", "--help"]):
        r = subprocess.run([sys.executable, "-c", "from moe_oracle.cli import cli; cli()", *argv], capture_output=True,
                           text=True)
        assert r.returncode == 0, r.stderr
        assert "--impl" in r.stdout and "--out" in r.stdout and "--arch" in r.stdout


def test_without_torch_one_clear_line(tmp_path):
    """moe-oracle verify where torch is not installed: says what to install, exit 2, no traceback."""
    blocker = tmp_path / "sitecustomize.py"
    blocker.write_text("import sys\nclass _No:\n    def find_spec(self, name, path=None, target=None):\n"
                       "        return None\n    def find_module(self, *a):\n        return None\n"
                       "import importlib.machinery as m\n_orig = m.PathFinder.find_spec\n"
                       "def _fs(name, path=None, target=None):\n    return None if name.split('.')[0] in ('torch', 'triton') "
                       "else _orig(name, path, target)\nm.PathFinder.find_spec = staticmethod(_fs)\n")
    env = {"PYTHONPATH": f"{tmp_path}:{sys.path[0] or '.'}", "PATH": "/usr/bin:/bin"}
    r = subprocess.run([sys.executable, "-c", "from moe_oracle.cli import cli; cli()", "verify", "--quick"],
                       capture_output=True, text=True, env=env, cwd=str(tmp_path.parent))
    assert r.returncode == 2 and "pip install 'moe-oracle[kernels]'" in r.stderr and "Traceback" not in r.stderr


def test_progress_is_plain_lines_off_a_terminal(capsys):
    import io

    stream = io.StringIO()
    p = Progress(25, "cases", stream=stream)
    for _ in range(25):
        p.step()
    p.close()
    lines = stream.getvalue().splitlines()
    assert "\r" not in stream.getvalue() and lines[-1] == "25/25 cases" and 2 <= len(lines) <= 12


def test_quick_default_smoke_run(tmp_path):
    """The embedded quick matrix passes on this machine (both sides of both bounds, all arch profiles)."""
    assert cli.main(["--quick", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    rows = report["cases"]
    assert {r["path"] for r in rows} == {"a16w4", "a4w4", "a8w4"}
    assert {r["arch"] for r in rows} >= {"gfx942", "gfx950"}
    assert report["quantizers"] and all(c["verdict"] == "PASS" for c in report["quantizers"])


def test_references_computed_in_worker_processes_equal_serial_ones():
    """--workers: references from a process pool give the report a serial run gives."""
    cfg = config.VerifyConfig.from_mapping(TINY)
    serial = engine.run_layers(ours(), cfg, device="cpu", archs=["gfx950"], workers=1)
    pooled = engine.run_layers(ours(), cfg, device="cpu", archs=["gfx950"], workers=2)
    drop = lambda rows: [{k: v for k, v in r.items() if k != "kernel_seconds"} for r in rows]  # noqa: E731
    assert drop(pooled) == drop(serial)


def test_a_worker_that_dies_fails_its_own_cases_only(monkeypatch, tmp_path, capsys):
    """A reference worker killed (here: it exits hard, as the kernel's OOM killer would) turns its own
    cases into error rows; every other case is still checked, the rows were kept on disk as they
    came, and the exit status says the run failed."""
    import os

    from moe_oracle import references as refs

    compute = refs._compute

    def dies_at_300(p, *a, **k):
        if p.hidden.shape[0] == 300:
            os._exit(9)
        return compute(p, *a, **k)

    monkeypatch.setattr(refs, "_compute", dies_at_300)
    cfg = {**TINY, "M": [1, 300], "envs": [{}], "scale_modes": ["round_up"]}
    seen = []
    real_run_layers = engine.run_layers
    monkeypatch.setattr(engine, "run_layers", lambda *a, **k: seen.append(k["on_row"]) or real_run_layers(*a, **k))
    code = cli.main(["--config", _write(tmp_path, cfg), "--only", "moe", "--workers", "2", "--arch", "gfx950",
                     "--out", str(tmp_path / "r")])
    out = capsys.readouterr().out
    assert code == 1
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    by_m = {}
    for r in report["cases"]:
        by_m.setdefault(r["M"], []).append(r)
    assert all(r["verdict"] == "PASS" for r in by_m[1])
    assert by_m[300] and all(r["verdict"] == "FAIL" and "worker process died (exit status 9" in r["error"] for r in by_m[300])
    assert "could not be checked" in out and "peak host memory" in out
    assert seen and seen[0].path.name == "cases.partial.jsonl" and not seen[0].path.exists()  # replaced by the report


def test_rows_are_on_disk_while_the_run_goes(tmp_path):
    from moe_oracle.sharded import RowsFile

    keep = RowsFile(tmp_path / "out" / RowsFile.NAME)
    keep({"M": 1, "verdict": "PASS"})
    keep({"M": 2, "verdict": "FAIL", "error": "x"})
    lines = (tmp_path / "out" / "cases.partial.jsonl").read_text().splitlines()
    assert [json.loads(line)["M"] for line in lines] == [1, 2]


def test_worker_count_follows_the_memory():
    from moe_oracle import references as refs
    from moe_oracle.cases import LayerCase

    case = LayerCase({"E": 256, "H": 7168, "I": 2048, "topk": 8}, 4096, "gfx950", {}, "separated", "round_up")
    jobs = [(case, "bf16", 0, 16, True, "cuda")] * 8
    n, per = refs.worker_count(jobs, 8, 8 * 2**30)
    assert 1 <= n < 8 and n * per <= 8 * 2**30
    assert refs.worker_count(jobs, 8, 10**15)[0] == 8
    assert refs.worker_count(jobs, 8, 1)[0] == 1
    assert refs.memory_budget(0.0) == 0 and 0 < refs.memory_budget(1e6) <= 0.6 * refs.available_bytes()


@pytest.mark.parametrize("flag", ["--workers", "--max-memory-gb"])
def test_non_positive_workers_or_memory_is_bad_usage(flag, capsys):
    assert cli.main(["--quick", flag, "0"]) == 2
    assert f"{flag} must be > 0" in capsys.readouterr().err


def test_a_finished_group_is_released():
    """What only a finished (shape, M) group used goes: its problem and references, and its layer when
    the next group is another shape; the next group's entries stay."""
    from moe_oracle import references as refs
    from moe_oracle.cases import DeviceKey, LayerCase, LayerKey, ProblemKey, RefKey

    shape_a, shape_b = {"E": 4, "H": 64, "I": 32, "topk": 2}, {"E": 4, "H": 96, "I": 32, "topk": 2}
    case = lambda shape, M: LayerCase(shape=shape, M=M, arch="gfx950", env={}, gate_mode="separated",  # noqa: E731
                                      scale_mode="round_up")
    cache = {}
    for c in (case(shape_a, 1), case(shape_a, 8), case(shape_b, 1)):
        refs.reference(cache, c, "bf16", 3, None)
    p = refs.problem(cache, case(shape_a, 8), 3)
    refs.on_device(cache, p, "cpu")
    refs.release(cache, case(shape_a, 1), keep_layer=True)
    assert {type(k) for k in cache} == {LayerKey, ProblemKey, RefKey, DeviceKey}
    assert not [k for k in cache if isinstance(k, (RefKey, ProblemKey)) and (k.shape, k.M) == case(shape_a, 1).group]
    assert [k.M for k in cache if isinstance(k, RefKey)] == [8, 1]
    refs.release(cache, case(shape_a, 8), keep_layer=False)
    assert [k.shape for k in cache if isinstance(k, LayerKey)] == [tuple(shape_b.items())]
    assert not [k for k in cache if isinstance(k, DeviceKey)]  # shape_a's upload went with its layer
    assert [k.shape for k in cache if isinstance(k, RefKey)] == [tuple(shape_b.items())]
