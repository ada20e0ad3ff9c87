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


GPU_RUN = Path(__file__).parents[2] / "benchmarks" / "ecosystem_gpu.json"


@pytest.fixture(scope="module")
def gpu_run():
    import json

    return json.loads(GPU_RUN.read_text())


def test_readme_gpu_block_is_the_stored_gpu_run(gpu_run):
    """The GPU block is rendered from the stored run (no GPU here: the run is data, the rendering is checked)."""
    assert not gpu_run["device"].startswith("CPU") and ecosystem.markers(gpu_run) == (ecosystem.GPU_BEGIN, ecosystem.GPU_END)
    block = README.read_text().split(ecosystem.GPU_BEGIN, 1)[1].split(ecosystem.GPU_END, 1)[0].strip()
    assert block == ecosystem.markdown(gpu_run), (
        "README is stale: python -m moe_oracle.ecosystem --from-json benchmarks/ecosystem_gpu.json --readme README.md")


def _row(run, library, function, mode=None):
    rows = [r for r in run["quantizers"] + run["dequantizers"] if r["library"] == library and r["function"] == function
            and (mode is None or r["mode"] == mode)]
    assert len(rows) == 1, (library, function, mode, len(rows))
    return rows[0]


def _class_of(run, name):
    return next(i for i, members in enumerate(run["classes"]["members"]) if name in members)


def test_readme_gpu_claims_hold_in_the_stored_run(gpu_run):
    """Each claim of the README's "On a GPU" list, read from the stored run."""
    run = gpu_run
    hip, triton_qdq = _row(run, "amd-quark", "qdq_mxfp4_hip"), _row(run, "amd-quark", "qdq_mxfp4_triton")
    assert (hip["best"], triton_qdq["best"]) == ("even, ties even", "even, ties away")
    a, b = _class_of(run, "amd-quark qdq_mxfp4_hip"), _class_of(run, "amd-quark qdq_mxfp4_triton")
    assert run["classes"]["differing_blocks"][a][b][0] == 37 and run["classes"]["core_blocks"] == 78
    assert _class_of(run, "vllm _quant_dequant_mxfp4") == a == _class_of(run, "vllm mxfp4_quantize")
    util = _row(run, "aiter (utility)", "fp4_utils.dynamic_mxfp4_quant")
    assert util["best"] == "even, ties away" and util["best_differing"]["ordinary"] + util["best_differing"]["ties"] == 44
    assert util["policies"]["zero blocks"].startswith("scale byte(s) ['0x7f']")
    not_run = {(r["library"], r["function"]): r["reason"] for r in run["not_run"]}
    assert "waves_per_eu" in not_run[("aiter-triton", "dynamic_mxfp4_quant")]
    for crashed in (("amd-quark", "dq_mxfp4_hip"), ("vllm", "_dequant_mxfp4")):
        assert not_run[crashed].startswith("calling it killed by SIGSEGV")
    assert "SM100" in not_run[("flashinfer", "mxfp4_quantize")] and "SM100" in not_run[
        ("flashinfer", "mxfp4_quantize(batch_invariant=True)")]
    for library in ("amd-quark", "aiter-triton"):
        for mode in ("round_up", "round_down"):
            row = [r for r in run["quantizers"] if r["library"] == library and r["function"].startswith("downcast_to_mxfp[fp4]")
                   and r["mode"] == mode]
            assert len(row) == 1 and row[0]["best_differing"]["subnormal"] == 0
    for library in ("amd-quark", "triton_kernels"):
        name = "upcast_from_mxfp[fp4] (Triton)" if library == "amd-quark" else "upcast_from_mxfp[fp4]"
        assert _row(run, library, name)["follows"]
    sglang = _row(run, "sglang", "MXFP4QuantizeUtil.dequantize")
    assert float(sglang["policies"]["scale 0x00"].split()[0]) == 2.0**-127 - 2.0**-149
    body = _row(run, "sglang", "MXFP4QuantizeUtil.quantize (its body)")
    assert f"{100 * body['per_mode']['round_up'] / body['total']:.1f}" == "87.0"


def test_from_json_renders_a_stored_run_and_refuses_what_is_not_one(tmp_path, capsys):
    readme = tmp_path / "R.md"
    readme.write_text(f"a\n{ecosystem.GPU_BEGIN}\nold\n{ecosystem.GPU_END}\nb\n")
    assert ecosystem.main(["--from-json", str(GPU_RUN), "--readme", str(readme)]) == 0
    assert readme.read_text().split(ecosystem.GPU_BEGIN)[1].split(ecosystem.GPU_END)[0].strip() == (
        ecosystem.markdown(__import__("json").loads(GPU_RUN.read_text())))
    capsys.readouterr()
    bad = tmp_path / "bad.json"
    bad.write_text('{"seed": 0}')
    with pytest.raises(SystemExit) as exit_:
        ecosystem.main(["--from-json", str(bad)])
    assert exit_.value.code == 2 and "not an ecosystem measurement" in capsys.readouterr().err
