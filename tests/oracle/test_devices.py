"""Several GPUs: xdist workers pinned one per GPU, and ``verify --devices`` spreading the cases over
processes with one report. On one GPU or none, everything is as before (tested here on the CPU with
CPU processes standing in for devices)."""

from __future__ import annotations

import json
import os

import pytest

import moe_kernels  # noqa: F401  (interpreter on before triton on a CPU machine)
from moe_oracle import cli, config, engine
from moe_oracle.devices import gpu_for_worker, resolve_devices, visible_gpus
from moe_oracle.implementations import ours

SMALL = {"shapes": [{"E": 4, "H": 64, "I": 32, "topk": 2}, {"E": 4, "H": 96, "I": 64, "topk": 2}], "M": [1, 300],
         "archs": ["gfx950"], "envs": [{}], "gate_modes": ["separated"], "scale_modes": ["round_up"], "seed": 5}


def test_workers_take_gpus_round_robin():
    gpus = ["0", "1", "2", "3"]
    assert [gpu_for_worker(f"gw{i}", gpus) for i in range(6)] == ["0", "1", "2", "3", "0", "1"]
    assert gpu_for_worker("gw3", ["5"]) is None and gpu_for_worker("gw0", []) is None  # one GPU, none: unpinned
    assert gpu_for_worker("master", gpus) is None


@pytest.mark.parametrize("spec, gpus, expected", [(None, ["0", "1"], 1), ("all", ["0", "1", "2"], 3), ("all", [], 1),
                                                  ("2", ["0", "1"], 2), ("3", [], 3)])
def test_devices_resolve(spec, gpus, expected):
    assert resolve_devices(spec, gpus) == expected


@pytest.mark.parametrize("spec", ["0", "-1", "two", "3"])
def test_bad_devices_are_refused(spec):
    with pytest.raises(ValueError, match="--devices"):
        resolve_devices(spec, ["0", "1"])


def test_no_gpu_under_the_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert visible_gpus() == []


def test_a_child_runs_its_share_from_a_job_file(tmp_path):
    """A --devices child gets a job (the implementation's spec, the whole config, its share), not the
    parent's argv: its rows are the parent's own for that share."""
    import dataclasses

    from moe_oracle import sharded

    cfg = config.VerifyConfig.from_mapping(SMALL)
    assert config.VerifyConfig.from_mapping(json.loads(json.dumps(dataclasses.asdict(cfg)))) == cfg  # the job's config
    job = dict(impl="ours", config=dataclasses.asdict(cfg), archs=["gfx950"], device="cpu", shard=[1, 2],
               rows_file=str(tmp_path / "rows.jsonl"), workers=1, max_memory_gib=None)
    (tmp_path / "job.json").write_text(json.dumps(job))
    assert sharded.main([str(tmp_path / "job.json")]) == 0
    got = [json.loads(line) for line in (tmp_path / "rows.jsonl").read_text().splitlines()]
    want = engine.run_layers(ours(), cfg, device="cpu", archs=["gfx950"], shard=(1, 2), progress=False)
    drop = ("kernel_seconds",)
    assert [{k: v for k, v in r.items() if k not in drop} for r in got] == \
        json.loads(json.dumps([{k: v for k, v in r.items() if k not in drop} for r in want], default=str))
    assert {r["M"] for r in got} == {300}  # share 1 of 2: the second (shape, M) group of each shape


def test_shards_partition_the_cases_by_shape_and_m():
    cfg = config.VerifyConfig.from_mapping({**SMALL, "M": [1, 64, 300], "gate_modes": ["separated", "interleave"]})
    every = engine.layer_cases(ours(), cfg, ["gfx950"])
    shares = [engine.layer_cases(ours(), cfg, ["gfx950"], (k, 3)) for k in range(3)]
    assert sorted(i for s in shares for i, _ in s) == [i for i, _ in every]
    owner = {}  # whole groups: a (shape, M) never split over two devices
    for k, s in enumerate(shares):
        for _, c in s:
            assert owner.setdefault(c.group, k) == k


def _write(tmp_path, data):
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps(data))
    return str(path)


def _rows(path):
    drop = ("kernel_seconds",)
    return [{k: v for k, v in r.items() if k not in drop} for r in json.loads(path.read_text())["cases"]]


def test_devices_give_the_report_one_process_gives(tmp_path, capsys):
    cfg = _write(tmp_path, SMALL)
    assert cli.main(["--config", cfg, "--only", "moe", "--out", str(tmp_path / "one")]) == 0
    assert cli.main(["--config", cfg, "--only", "moe", "--devices", "2", "--out", str(tmp_path / "two")]) == 0
    err = capsys.readouterr().err
    assert "device 0 (CPU): 2 of 2 cases checked" in err and "device 1 (CPU): 2 of 2 cases checked" in err
    one, two = _rows(tmp_path / "one" / "report.json"), _rows(tmp_path / "two" / "report.json")
    assert len(one) == 4 and json.loads(json.dumps(one, default=str)) == two


def test_a_device_process_that_dies_leaves_error_rows(tmp_path, monkeypatch):
    """The device that reaches M=300 dies there: its remaining cases are error rows, the rest pass."""
    (tmp_path / "dies.py").write_text(
        "import os\nfrom moe_kernels import fused_moe as _ours\n"
        "def fused_moe(hidden, *args, **kwargs):\n"
        "    if hidden.shape[0] == 300:\n        os._exit(7)\n"
        "    return _ours(hidden, *args, **kwargs)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))
    cfg = _write(tmp_path, {**SMALL, "shapes": SMALL["shapes"][:1]})
    code = cli.main(["--config", cfg, "--only", "moe", "--devices", "2", "--impl", "dies:fused_moe",
                     "--out", str(tmp_path / "r")])
    assert code == 1
    rows = json.loads((tmp_path / "r" / "report.json").read_text())["cases"]
    assert [r["verdict"] for r in rows if r["M"] == 1] == ["PASS"]
    dead = [r for r in rows if r["M"] == 300]
    assert dead and all("exit status 7" in r["error"] for r in dead)
    assert (tmp_path / "r" / "devices" / "device1.log").exists()


@pytest.mark.gpu
def test_each_xdist_worker_sees_only_its_own_gpu(worker_gpu):
    import torch

    if worker_gpu is None:  # one GPU, or no xdist: nothing pinned
        assert torch.cuda.device_count() >= 1
    else:
        var = "HIP_VISIBLE_DEVICES" if torch.version.hip else "CUDA_VISIBLE_DEVICES"
        assert os.environ[var] == worker_gpu and torch.cuda.device_count() == 1
