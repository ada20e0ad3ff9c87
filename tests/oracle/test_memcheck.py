"""``verify --memcheck``: the sanitizer's log read into findings per kernel, folded into the exit status
and every output; a sanitizer that does not finish is an error, never a pass. The plumbing runs on the
CPU with a stand-in sanitizer (it writes a log and runs the command it was given, as the real one does);
the real one runs on a GPU against a planted kernel that reads past its input's end."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from moe_oracle import cli
from moe_oracle.memcheck import find_sanitizer, parse, run, sanitizer_command

ROOT = Path(__file__).resolve().parents[2]
DATA = Path(__file__).with_name("data")

ERRORS_LOG = textwrap.dedent("""\
    ========= COMPUTE-SANITIZER
    ========= Invalid __global__ read of size 2 bytes
    =========     at _sum_unmasked+0x1c0 in /repo/tests/oracle/planted_gpu.py:18
    =========     by thread (33,0,0) in block (0,0,0)
    =========     Address 0x7f2a4c000a00 is out of bounds
    =========     and is 2 bytes after the nearest allocation at 0x7f2a4c000000 of size 2558 bytes
    =========     Saved host backtrace up to driver entry point at kernel launch time
    =========
    ========= Invalid __global__ read of size 2 bytes
    =========     at _sum_unmasked+0x1c0 in /repo/tests/oracle/planted_gpu.py:18
    =========     by thread (34,0,0) in block (0,0,0)
    =========     Address 0x7f2a4c000a02 is out of bounds
    =========     and is 4 bytes after the nearest allocation at 0x7f2a4c000000 of size 2558 bytes
    =========
    ========= Invalid __global__ write of size 4 bytes
    =========     at 0x3f0 in _moe_stage_kernel
    =========     by thread (0,0,0) in block (7,0,0)
    =========     Address 0x7f2a4c100000 is out of bounds
    =========
    ========= ERROR SUMMARY: 5 errors
    """)
CLEAN_LOG = "========= COMPUTE-SANITIZER\n========= ERROR SUMMARY: 0 errors\n"
UNFINISHED_LOG = "========= COMPUTE-SANITIZER\n========= Error: Device not supported\n"

# the stand-in: writes the log it is given (MEMCHECK_LOG_TEXT) where --log-file says, then runs the rest
STAND_IN = textwrap.dedent("""\
    import os, subprocess, sys
    argv = sys.argv[1:]
    log = argv[argv.index("--log-file") + 1]
    with open(log, "w") as f:
        f.write(os.environ["MEMCHECK_LOG_TEXT"])
    assert os.environ["PYTORCH_NO_CUDA_MEMORY_CACHING"] == "1"
    command = argv[argv.index(sys.executable):]
    sys.exit(subprocess.run(command).returncode)
    """)


def test_parse_groups_errors_by_kernel_and_access():
    got = parse(ERRORS_LOG)
    assert got.completed and got.errors == 5
    by = {(f.kernel, f.access): f for f in got.findings}
    assert set(by) == {("_sum_unmasked", "invalid __global__ read of 2 bytes"),
                       ("_moe_stage_kernel", "invalid __global__ write of 4 bytes")}
    read = by[("_sum_unmasked", "invalid __global__ read of 2 bytes")]
    assert read.count == 2 and read.example == "2 bytes after an allocation of 2,558 bytes"
    lines = got.lines()
    assert lines[0] == "memcheck: 5 error(s) (3 printed, grouped below)"
    assert lines[1].strip() == ("invalid __global__ read of 2 bytes in _sum_unmasked: 2 (e.g. 2 bytes after an "
                                "allocation of 2,558 bytes)")


def test_parse_clean_and_unfinished_logs():
    clean = parse(CLEAN_LOG)
    assert clean.completed and clean.errors == 0 and clean.findings == ()
    assert "0 errors" in clean.lines()[0]
    unfinished = parse(UNFINISHED_LOG)
    assert not unfinished.completed and "Device not supported" in unfinished.note
    assert unfinished.lines()[0].startswith("memcheck did not complete")
    assert not parse("").completed


def test_parse_a_log_the_real_sanitizer_wrote():
    """Recorded on an H100 (``gpu_session.sh memcheck``): AITER's MXFP4 MoE kernel at the gpt-oss shape reads
    4 bytes at a time past the end of the expert weights (128 x 5760 x 1440 bytes: its last K tile's mask
    compares packed byte offsets with the unpacked K); the bad access ends the kernel, the context errors follow."""
    got = parse((DATA / "memcheck_aiter_gptoss.log").read_text())
    assert got.completed and got.errors == 10
    kernel = next(f for f in got.findings if f.kernel != "(host)")
    assert kernel.kernel.startswith("_fused_moe_kernel_mxfp4_A_DTYPE_FORMAT_BF16_B_DTYPE_FORMAT_E2M1")
    assert kernel.access == "invalid __global__ read of 4 bytes" and kernel.count == 8
    assert kernel.example == f"1 bytes after an allocation of {128 * 5760 * 1440:,} bytes"
    host = sorted(f.access for f in got.findings if f.kernel == "(host)")
    assert host == ["cudaErrorLaunchFailure from cudaFree", "cudaErrorLaunchFailure from cudaGetLastError"]
    assert sum(f.count for f in got.findings) == got.errors


def test_the_command_wraps_the_same_verify_line(tmp_path):
    cmd = sanitizer_command("/x/compute-sanitizer", ["--impl", "ours", "--quick"], tmp_path / "m.log")
    assert cmd[:5] == ["/x/compute-sanitizer", "--tool", "memcheck", "--log-file", str(tmp_path / "m.log")]
    assert cmd[-7:] == [sys.executable, "-m", "moe_oracle", "verify", "--impl", "ours", "--quick"]


def test_find_sanitizer_order(tmp_path):
    tool = tmp_path / "bin" / "compute-sanitizer"
    tool.parent.mkdir()
    tool.write_text("#!/bin/sh\n")
    tool.chmod(0o755)
    assert find_sanitizer({"MOE_ORACLE_COMPUTE_SANITIZER": "/named/one", "PATH": str(tool.parent)}) == "/named/one"
    assert find_sanitizer({"PATH": str(tool.parent)}) == str(tool)
    assert find_sanitizer({"PATH": "", "CUDA_HOME": str(tmp_path)}) == str(tool)
    assert find_sanitizer({"PATH": "", "CUDA_HOME": str(tmp_path / "none"), "CUDA_PATH": str(tmp_path / "none")}) in (
        None, "/usr/local/cuda/bin/compute-sanitizer")


IMPLS = textwrap.dedent('''
    from moe_ref import select_activation_dtype

    def _selector(right):
        def select_act_dtype(M, *, arch, gate_mode, env):
            return select_activation_dtype(M, arch=arch, gate_mode=gate_mode, env=env).dtype if right else "bf16"
        return select_act_dtype

    good_select, bad_select = {"select_act_dtype": _selector(True)}, {"select_act_dtype": _selector(False)}
''')


def _stand_in(tmp_path, monkeypatch, log_text):
    (tmp_path / "memcheck_impls.py").write_text(IMPLS)
    (tmp_path / "stand_in.py").write_text(STAND_IN)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MEMCHECK_LOG_TEXT", log_text)
    monkeypatch.setenv("PYTHONPATH", f"{ROOT}:{tmp_path}")
    wrapper = tmp_path / "sanitizer.sh"
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{tmp_path / "stand_in.py"}" "$@"\n')
    wrapper.chmod(0o755)
    return str(wrapper)


@pytest.mark.parametrize("log, impl, code", [
    (ERRORS_LOG, "good_select", 1),   # the checks pass; the sanitizer's errors fail the run
    (CLEAN_LOG, "good_select", 0), (CLEAN_LOG, "bad_select", 1),  # no errors: the run's own status
    (UNFINISHED_LOG, "good_select", 2),  # no ERROR SUMMARY: an error, never a pass
])
def test_findings_fold_into_status_and_outputs(log, impl, code, tmp_path, monkeypatch, capsys):
    sanitizer = _stand_in(tmp_path, monkeypatch, log)
    out, junit = tmp_path / "out", tmp_path / "junit.xml"
    argv = ["--impl", f"memcheck_impls:{impl}", "--quick", "--seed", "3", "--out", str(out), "--junit-xml", str(junit)]
    got = run(argv, sanitizer, out=str(out), junit=str(junit), as_json=False)
    text = capsys.readouterr().out
    assert got == code, text[-1500:]
    assert (out / "memcheck.log").read_text() == log
    report = json.loads((out / "report.json").read_text())["memcheck"]
    assert report["completed"] == (log != UNFINISHED_LOG) and report["errors"] == parse(log).errors
    assert "## memcheck (compute-sanitizer)" in (out / "report.md").read_text()
    suite = [s for s in ET.parse(junit).getroot() if s.get("name") == "moe-oracle.memcheck"]
    assert len(suite) == 1 and suite[0].get("failures") == str(int(log != CLEAN_LOG))
    assert parse(log).lines()[0] in text


def test_json_output_carries_the_findings(tmp_path, monkeypatch, capsys):
    sanitizer = _stand_in(tmp_path, monkeypatch, ERRORS_LOG)
    got = run(["--impl", "memcheck_impls:good_select", "--quick", "--seed", "3", "--json"], sanitizer, out=None,
              junit=None, as_json=True)
    captured = capsys.readouterr()
    assert got == 1
    report = json.loads(captured.out)
    assert report["memcheck"]["errors"] == 5 and report["summary"]["failed"] == 0
    assert "memcheck: 5 error(s)" in captured.err


def test_memcheck_refuses_the_cpu(capsys):
    got = cli.main(["--memcheck", "--device", "cpu", "--quick", "--seed", "1"])
    assert got == 2 and "--memcheck: compute-sanitizer checks NVIDIA GPU kernels" in capsys.readouterr().err


@pytest.mark.gpu
@pytest.mark.parametrize("impl, code", [("reads_past_end", 1), ("masked", 0)])
def test_memcheck_names_the_kernel_that_reads_past_its_input(impl, code, tmp_path):
    """Equal bytes either way: the sanitizer alone tells the planted read past the input's end."""
    if find_sanitizer() is None:
        pytest.skip("compute-sanitizer not found (PATH, CUDA_HOME, /usr/local/cuda)")
    done = subprocess.run([sys.executable, "-m", "moe_oracle", "verify", "--impl", f"tests.oracle.planted_gpu:{impl}",
                           "--only", "quantizers", "--seed", "5", "--memcheck", "--out", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=560)
    assert done.returncode == code, (done.stdout[-3000:], done.stderr[-3000:])
    found = json.loads((tmp_path / "report.json").read_text())["memcheck"]
    assert found["completed"]
    if code:
        assert {f["kernel"] for f in found["findings"]} - {"(host)"} == {"_sum_unmasked"}, found
        assert all(" read of " in f["access"] for f in found["findings"] if f["kernel"] != "(host)")
    else:
        assert found["errors"] == 0, found


def test_a_run_that_died_under_the_sanitizer_still_reports(tmp_path, monkeypatch, capsys):
    """The first bad access ends CUDA's context: the run writes nothing; the findings are the report."""
    sanitizer = _stand_in(tmp_path, monkeypatch, ERRORS_LOG)
    (tmp_path / "memcheck_impls.py").write_text(IMPLS + "\nimport os\ndef _die(*a, **k):\n    os._exit(1)\n"
                                                "dies = {'select_act_dtype': _die}\n")
    out, junit = tmp_path / "out", tmp_path / "junit.xml"
    got = run(["--impl", "memcheck_impls:dies", "--quick", "--seed", "3", "--out", str(out), "--junit-xml", str(junit)],
              sanitizer, out=str(out), junit=str(junit), as_json=False)
    captured = capsys.readouterr()
    assert got == 1 and "wrote no report" in captured.err
    report = json.loads((out / "report.json").read_text())
    assert report["memcheck"]["errors"] == 5 and "wrote no report" in report["meta"]["note"]
    assert "invalid __global__ read of 2 bytes in _sum_unmasked" in (out / "report.md").read_text()
    assert [s.get("name") for s in ET.parse(junit).getroot()] == ["moe-oracle.memcheck"]
