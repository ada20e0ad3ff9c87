"""The ecosystem table: the README's block is what the installed peers do (regenerated here and
compared), every library of the table loads in the test session, and the table's pieces hold."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from moe_oracle import ecosystem

README = Path(__file__).parents[2] / "README.md"


@pytest.fixture(scope="module")
def measured():
    return ecosystem.measure(seed=0)


def test_readme_block_is_what_the_peers_do(measured):
    text = README.read_text()
    block = text.split(ecosystem.BEGIN, 1)[1].split(ecosystem.END, 1)[0].strip()
    assert block == ecosystem.markdown(measured), "README is stale: run `nox -s peers` (or python -m moe_oracle.ecosystem --readme README.md)"


def test_every_library_loads_and_each_form_is_measured(measured):
    libraries = {r["library"] for r in measured["quantizers"] + measured["dequantizers"]}
    assert {"ours", "torchao", "amd-quark", "sglang", "vllm", "triton_kernels", "aiter-triton",
            "aiter (utility)", "flashinfer"} <= libraries
    assert not [r for r in measured["not_run"] if r["function"] == "(the library)"], measured["not_run"]
    forms = {r["form"] for r in measured["quantizers"]}
    assert forms == {"bytes", "values"} and measured["dequantizers"]


def test_the_contract_anchors_its_own_class(measured):
    members = measured["classes"]["members"]
    ours = next(m for m in members if "ours moe_kernels.quantize_mxfp4 [round_up]" in m)
    assert "emulation[round_up, ties even]" in ours


def test_classes_count_differing_blocks_core_and_all():
    kinds = np.array([["ordinary", "zero"]])
    a = np.zeros((1, 64), np.float32)
    b = a.copy()
    b[0, 40] = 1.0  # the zero block differs
    c = a.copy()
    c[0, 0] = -0.0  # equal by value
    cls = ecosystem._classes({"a": a, "b": b, "c": c}, 1, kinds)
    assert cls["members"] == [["a", "c"], ["b"]]
    assert cls["differing_blocks"] == [[[0, 0], [0, 1]], [[0, 1], [0, 0]]]


def test_readme_without_markers_names_the_argument(tmp_path):
    path = tmp_path / "R.md"
    path.write_text("no block")
    with pytest.raises(ValueError, match="readme="):
        ecosystem.update_readme(path, "x")


def test_flashinfer_kernels_say_where_they_run(measured):
    """FlashInfer's CUDA quantizer and its batch-invariant class are entries: on the CPU each is one
    measured line (what calling it raised), never a silent absence."""
    lines = {r["function"]: r["reason"] for r in measured["not_run"] if r["library"] == "flashinfer"}
    assert set(lines) == {"mxfp4_quantize", "mxfp4_quantize(batch_invariant=True)"}
    assert all(reason and "\n" not in reason for reason in lines.values())
    assert "device cpu" in lines["mxfp4_quantize(batch_invariant=True)"]


def test_device_is_named_and_cuda_without_a_gpu_is_a_usage_error(measured, capsys):
    assert measured["device"].startswith("CPU")
    with pytest.raises(SystemExit) as exit_:
        ecosystem.main(["--device", "cuda"])
    assert exit_.value.code == 2 and "--device cuda" in capsys.readouterr().err


def test_a_library_that_kills_its_process_costs_one_line(monkeypatch):
    """Isolated, a function that segfaults is a "not run" line naming the signal; the library's other
    functions still run (in a fresh process) and are measured as usual; a library whose import kills
    its process is one line too."""
    spec = "tests.oracle.crashing_peer:impl"
    result = ecosystem.measure(seed=0, libraries=[spec], isolate=True)
    assert [r["mode"] for r in result["quantizers"]] == ["round_up", "ceil"]
    assert [(r["function"], r["mode"]) for r in result["not_run"]] == [("quantize_mxfp4", "even")]
    assert result["not_run"][0]["reason"].startswith("calling it killed by SIGSEGV")
    assert all(r["best"] == f"{r['mode']}, ties even" and r["per_mode"][r["mode"]] == r["total"]
               for r in result["quantizers"])
    monkeypatch.setenv("KILL_ON_IMPORT", "1")
    dead = ecosystem.measure(seed=0, libraries=[spec], isolate=True)
    assert not dead["quantizers"] and [r["function"] for r in dead["not_run"]] == ["(import)"]
    assert dead["not_run"][0]["reason"].startswith("loading it killed by SIGABRT")
