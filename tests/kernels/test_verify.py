"""The conformance report: schema, exit status, config files and their errors, a smoke run."""

from __future__ import annotations

import json

import pytest

from moe_kernels import verify

TINY = {"shapes": [{"E": 4, "H": 64, "I": 32, "topk": 2}], "M": [1, 300], "archs": ["gfx950"], "envs": [{}],
        "gate_modes": ["separated"], "scale_modes": ["round_up", "even"], "seed": 3}
ROW_KEYS = {"E", "H", "I", "topk", "M", "arch", "env", "gate_mode", "scale_mode", "path", "act_dtype", "rule",
            "reason", "bytes_equal", "bytes_total", "max_err_ref", "rel_err_ref", "max_err_ideal", "rel_err_ideal",
            "within_tolerance", "kernel_seconds", "verdict"}


def _write(tmp_path, data, name="cfg.json"):
    path = tmp_path / name
    path.write_text(json.dumps(data) if name.endswith(".json") else data)
    return str(path)


def test_report_schema_and_files(tmp_path):
    out = tmp_path / "out"
    assert verify.main(["--config", _write(tmp_path, TINY), "--arch", "gfx950", "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert set(report) == {"meta", "cases"} and {"device", "seed", "config", "archs"} <= set(report["meta"])
    rows = report["cases"]
    assert [r["M"] for r in rows] == [1, 300, 300] and {r["path"] for r in rows} == {"a16w4", "a4w4"}
    assert all(set(r) == ROW_KEYS and r["verdict"] == "PASS" for r in rows)
    assert all(r["bytes_equal"] == r["bytes_total"] > 0 for r in rows)
    assert "| 300 | gfx950 |" in (out / "report.md").read_text()
    assert (out / "error_vs_M.png").read_bytes()[:4] == b"\x89PNG"


def test_a_mismatching_reference_fails_the_run(tmp_path, capsys):
    bad = {**TINY, "M": [300], "scale_modes": ["round_up"], "reference_act_dtype": "fp8"}
    assert verify.main(["--config", _write(tmp_path, bad), "--arch", "gfx950"]) == 1
    assert "0 passed, 1 failed" in capsys.readouterr().out


def test_toml_config(tmp_path):
    text = 'M = [1]\narchs = ["gfx942"]\ngate_modes = ["interleave"]\nseed = 5\n\n[[shapes]]\nE = 2\nH = 32\nI = 32\ntopk = 1\n'
    cfg = verify.load_config(_write(tmp_path, text, "cfg.toml"))
    assert cfg.M == (1,) and cfg.shapes == ({"E": 2, "H": 32, "I": 32, "topk": 1},) and cfg.seed == 5


@pytest.mark.parametrize(
    "content, name, match",
    [({"Ms": [1]}, "c.json", r"unknown key\(s\) \['Ms'\]"), ({"M": [-1]}, "c.json", "M values"),
     ({"M": 5}, "c.json", "M must be a non-empty list"), ({"shapes": [{"E": 2, "H": 33, "I": 32, "topk": 1}]}, "c.json", "multiple of 32"),
     ({"shapes": [{"E": 2}]}, "c.json", "exactly E, H, I, topk"), ({"scale_modes": ["nearest"]}, "c.json", "scale_mode"),
     ({"envs": [{"AITER_MOE_FORCE_BF16_ACT": 1}]}, "c.json", "envs"), ({"tolerance_scale": 0}, "c.json", "tolerance_scale"),
     ("{not json", "c.json", "invalid JSON"), ("M = [", "c.toml", "invalid TOML"), ("x", "c.yaml", "json or .toml")],
)
def test_config_errors(tmp_path, content, name, match, capsys):
    path = tmp_path / name
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    with pytest.raises(ValueError, match=match):
        verify.load_config(str(path))
    assert verify.main(["--config", str(path)]) == 2
    assert "moe-oracle verify:" in capsys.readouterr().err


def test_quick_default_smoke_run(tmp_path):
    """The embedded quick matrix passes on this machine (both sides of both bounds, all arch profiles)."""
    assert verify.main(["--quick", "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "report.json").read_text())["cases"]
    assert {r["path"] for r in rows} == {"a16w4", "a4w4", "a8w4"}
    assert {r["arch"] for r in rows} >= {"gfx942", "gfx950"}


def test_references_computed_in_worker_processes_equal_serial_ones():
    """--workers: references from a process pool give the report a serial run gives."""
    cfg = verify.VerifyConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in TINY.items()})
    serial = verify.run(cfg, device="cpu", archs=["gfx950"], workers=1)
    pooled = verify.run(cfg, device="cpu", archs=["gfx950"], workers=2)
    drop = lambda rows: [{k: v for k, v in r.items() if k != "kernel_seconds"} for r in rows]  # noqa: E731
    assert drop(pooled) == drop(serial)
