"""Run the mutant catalogue: ``python -m tests.mutants.run`` (``nox -s mutants``).

Each mutant is applied to its own temporary copy of the tree (the files git tracks or would track);
the tests that can see it run there (``pytest -x``, one process per mutant, ``--jobs`` at a time,
one logged seed for the whole run) with the copy first on ``PYTHONPATH``; where the mutant has a
``report``, ``moe-oracle verify --quick --only <report>`` runs too and must exit 1. First the same
selections run on the unmutated copy (the baseline): a kill means something only if they pass there.

Status: killed (a test failed: the first failing test is recorded), survived (every selected test
passed: a finding), error (pytest could not run the selection: a broken mutant or catalogue),
timeout. Output: ``mutants.json`` and ``mutants.md`` under ``--out``, the table and the kill rate on
stdout; exit 0 only if every mutant is killed and every report run exits 1.

``--gpu`` runs the GPU-only mutants with the GPU suite (``-m gpu``, no interpreter) on a device.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import py_compile
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .catalogue import MUTANTS, Mutant

ROOT = Path(__file__).resolve().parents[2]


_NOT_SOURCE = {".git", ".nox", "__pycache__", "wheels", "build", "dist", ".pytest_cache", ".ruff_cache", "report",
               "mutants-report"}


def tree_files(root: Path) -> list[str]:
    """The files git tracks or would track (untracked but not ignored included); without git (an
    unpacked copy, the device machine), every file outside build, cache and peer folders."""
    try:
        out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=root,
                             capture_output=True, check=True).stdout
        return [f for f in out.decode().split("\0") if f and (root / f).is_file()]
    except (OSError, subprocess.CalledProcessError):
        return [str(p.relative_to(root)) for p in root.rglob("*")
                if p.is_file() and not _NOT_SOURCE & set(p.relative_to(root).parts[:-1]) and p.suffix != ".pyc"]


def copy_tree(root: Path, files: list[str], dest: Path) -> Path:
    for f in files:
        target = dest / f
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / f, target)
    return dest


def apply(mutant: Mutant, tree: Path) -> None:
    """Apply the mutant's edits to ``tree``; ValueError if an edit does not occur exactly once."""
    path = tree / mutant.file
    text = path.read_text()
    for old, new in mutant.edits:
        count = text.count(old)
        if count != 1:
            raise ValueError(f"mutant {mutant.id}: {old!r} occurs {count} times in {mutant.file} (expected once)")
        text = text.replace(old, new)
    path.write_text(text)
    py_compile.compile(str(path), doraise=True, cfile=str(tree / ".mutant.pyc"))


def _env(tree: Path, gpu: bool) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "TRITON_INTERPRET")}
    env.update(PYTHONPATH=str(tree), PYTHONDONTWRITEBYTECODE="1")
    if not gpu:
        env["TRITON_INTERPRET"] = "1"
    return env


def _first_failure(junit: Path) -> str | None:
    if not junit.exists():
        return None
    for case in ET.parse(junit).getroot().iter("testcase"):
        if case.find("failure") is not None or case.find("error") is not None:
            module = case.get("classname", "").replace(".", "/")
            return f"{module}.py::{case.get('name')}"
    return None


def run_tests(tree: Path, selection, *, gpu: bool, seed: int, timeout: float, workers: int = 0, exitfirst=True):
    """(pytest exit code or "timeout", first failing test, seconds, output tail)."""
    junit = tree / ".mutant-junit.xml"
    junit.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--seed", str(seed),
           "-m", "gpu" if gpu else "not gpu and not exhaustive", f"--junitxml={junit}", *selection]
    cmd += ["-x"] if exitfirst else []
    if importlib.util.find_spec("xdist") is not None:
        cmd += ["-n", str(workers)]  # -n 0: in this process (xdist stays loaded: conftest hooks need it)
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=tree, env=_env(tree, gpu), capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return "timeout", None, time.perf_counter() - t0, ""
    tail = (proc.stdout + proc.stderr)[-3000:]
    return proc.returncode, _first_failure(junit), time.perf_counter() - t0, tail


def run_report(tree: Path, only: str, *, seed: int, timeout: float, diagnosis: str):
    """moe-oracle verify --quick --only ``only`` on the mutated tree -> (exit code, diagnosed, seconds)."""
    cmd = [sys.executable, "-m", "moe_oracle", "--quick", "--only", only, "--seed", str(seed), "--arch", "gfx950"]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=tree, env=_env(tree, gpu=False), capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return "timeout", False, time.perf_counter() - t0
    return proc.returncode, bool(diagnosis) and diagnosis in proc.stdout, time.perf_counter() - t0


def check_import_location(tree: Path, gpu: bool) -> None:
    probe = "import emulation, moe_ref, moe_kernels, moe_oracle; print(moe_kernels.__file__)"
    where = subprocess.run([sys.executable, "-c", probe], cwd="/", env=_env(tree, gpu), capture_output=True,
                           text=True, check=True).stdout.strip()
    if not Path(where).resolve().is_relative_to(tree.resolve()):
        raise RuntimeError(f"the mutated copy is not what Python imports: moe_kernels from {where}, not {tree}")


def run_mutant(mutant: Mutant, base: Path, work: Path, args) -> dict:
    tree = Path(shutil.copytree(base, work / mutant.id, dirs_exist_ok=False))
    row = dict(id=mutant.id, bug=mutant.bug.name, area=mutant.bug.area, file=mutant.file, gpu=mutant.gpu,
               field_failure=mutant.bug.field_failure, tests=list(mutant.selection()))
    try:
        apply(mutant, tree)
    except (ValueError, py_compile.PyCompileError) as exc:
        return {**row, "status": "error", "killed_by": None, "seconds": 0.0, "detail": str(exc)}
    rc, failed, seconds, tail = run_tests(tree, mutant.selection(), gpu=mutant.gpu, seed=args.seed,
                                          timeout=args.timeout)
    status = {0: "equivalent" if mutant.equivalent else "survived", 1: "killed"}.get(
        rc, "timeout" if rc == "timeout" else "error")
    if isinstance(rc, int) and rc < 0:  # the process died (a crash is a kill, but say so)
        status = "killed"
        failed = failed or f"crash (signal {-rc})"
    row.update(status=status, killed_by=failed, seconds=round(seconds, 1), detail=tail if status == "error" else "",
               equivalent=mutant.equivalent)
    if mutant.report and not args.no_report and not mutant.equivalent:
        code, diagnosed, rsec = run_report(tree, mutant.report, seed=args.seed, timeout=args.timeout,
                                           diagnosis=mutant.bug.diagnosis)
        row.update(report=mutant.report, report_exit=code, report_diagnosed=diagnosed if mutant.bug.diagnosis else None,
                   report_seconds=round(rsec, 1))
    if not args.keep:
        shutil.rmtree(tree, ignore_errors=True)
    print(f"  {row['status']:>8}  {mutant.id}  ({row['seconds']} s)"
          + (f"  report exit {row['report_exit']}" if "report_exit" in row else ""), flush=True)
    return row


def format_markdown(rows: list[dict], seed: int, baseline_s: float) -> str:
    killed = sum(r["status"] == "killed" for r in rows)
    counted = [r for r in rows if r["status"] != "equivalent"]
    reports = [r for r in rows if "report_exit" in r]
    lines = [f"Mutants: {killed} of {len(counted)} killed ({100 * killed / max(len(counted), 1):.0f}%)"
             f"{f', {len(rows) - len(counted)} proven equivalent (not counted)' if len(counted) < len(rows) else ''}; "
             f"conformance report exits 1 on {sum(r['report_exit'] == 1 for r in reports)} of {len(reports)}; "
             f"seed {seed}; baseline {baseline_s:.0f} s.", "",
             "| area | bug (field failure) | file | status | killed by | s | report |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        rep = "-" if "report_exit" not in r else (f"exit {r['report_exit']}" + (
            "" if r["report_diagnosed"] is None else (", diagnosed" if r["report_diagnosed"] else ", other diagnosis")))
        lines.append(f"| {r['area']} | {r['bug']}{' (GPU)' if r['gpu'] else ''} ({r['field_failure']}) | {r['file']} | "
                     f"{r['status']} | {r['killed_by'] or '-'} | {r['seconds']} | {rep} |")
    for r in rows:
        if r["status"] == "equivalent":
            lines.append(f"\nEquivalent: {r['bug']}: {r['equivalent']}.")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.mutants.run", description=__doc__.split("\n\n")[0])
    ap.add_argument("--gpu", action="store_true", help="run the GPU-only mutants with the GPU suite (needs a device)")
    ap.add_argument("--only", nargs="*", default=None, help="mutant ids to run (default: all of this kind)")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="mutants run at a time")
    ap.add_argument("--seed", type=int, default=None, help="base seed for every test run (default: fresh, printed)")
    ap.add_argument("--timeout", type=float, default=900, help="seconds per test run")
    ap.add_argument("--out", default="mutants-report", help="directory for mutants.json and mutants.md")
    ap.add_argument("--no-baseline", action="store_true", help="skip the unmutated run (only to iterate on a mutant)")
    ap.add_argument("--no-report", action="store_true", help="skip the moe-oracle verify runs")
    ap.add_argument("--keep", action="store_true", help="keep the mutated copies")
    args = ap.parse_args(argv)
    args.seed = secrets.randbits(32) if args.seed is None else args.seed
    chosen = [m for m in MUTANTS if m.gpu == args.gpu and (args.only is None or m.id in args.only)]
    if not chosen:
        print("no mutant selected", file=sys.stderr)
        return 2
    print(f"{len(chosen)} mutants, seed {args.seed} (rerun with --seed {args.seed}), {args.jobs} at a time", flush=True)
    with tempfile.TemporaryDirectory(prefix="moe-mutants-") as tmp:
        work = Path(tmp)
        base = copy_tree(ROOT, tree_files(ROOT), work / "base")
        check_import_location(base, args.gpu)
        t0 = time.perf_counter()
        if not args.no_baseline:
            selection = sorted({t for m in chosen for t in m.selection()})
            rc, failed, _, tail = run_tests(base, selection, gpu=args.gpu, seed=args.seed, timeout=3 * args.timeout,
                                            workers=args.jobs if args.jobs > 1 else 0, exitfirst=False)
            if rc != 0:
                print(f"baseline: the unmutated selection fails (exit {rc}, {failed}); no kill would mean anything\n{tail}")
                return 1
            for only in sorted({m.report for m in chosen if m.report} if not args.no_report else ()):
                code, _, _ = run_report(base, only, seed=args.seed, timeout=args.timeout, diagnosis="")
                if code != 0:
                    print(f"baseline: moe-oracle verify --quick --only {only} exits {code} on the unmutated tree")
                    return 1
        baseline_s = time.perf_counter() - t0
        print(f"baseline passed ({baseline_s:.0f} s)", flush=True)
        with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            rows = list(pool.map(lambda m: run_mutant(m, base, work, args), chosen))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    md = format_markdown(rows, args.seed, baseline_s)
    (out / "mutants.md").write_text(md)
    (out / "mutants.json").write_text(json.dumps(dict(seed=args.seed, gpu=args.gpu, mutants=rows), indent=1))
    print("\n" + md + f"wrote {out / 'mutants.md'}, {out / 'mutants.json'}")
    ok = (all(r["status"] in ("killed", "equivalent") for r in rows)
          and all(r.get("report_exit", 1) == 1 for r in rows))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
