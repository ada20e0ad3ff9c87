"""Machine-generated mutants over the oracle side: ``python -m tests.mutants.auto`` (``nox -s mutants_auto``).

The tool is mutmut 3 (pinned in the mutants session): it mutates every function of a module (operators,
constants, comparisons, arguments, return values, strings), records which tests cover each function,
and runs only those for each mutant, forked from a warmed process. Chosen over cosmic-ray because
its per-function test selection and fork-server keep a mutant at a fraction of a second for the
direct tests, where cosmic-ray re-runs a whole test command per mutant (seconds of imports each).

Each module runs in its own copy of the tree under ``--work`` (resumable: mutmut keeps its results
there and re-runs only mutants of functions that changed), with the selection of tests that can see
it (``SELECTIONS``), one logged seed (``MOE_ORACLE_SEED``), the kernels under the interpreter.

Kills that hold: every killed mutant is run again under three further seeds; one that survives any
of them is reported "flaky", not "killed". Survivors are triaged in ``equivalent.json`` (mutant ->
the changed line and a one-line reason it cannot change behaviour); an entry whose recorded line no
longer matches the mutant is stale and the mutant counts as untriaged. Output: the table per module
(mutants, killed, equivalent, flaky, untriaged, kill rate, time) in ``--out``/auto.md and .json, and
every untriaged survivor's diff. Exit 0 only if every module kills >= 95% and nothing is untriaged.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path

from .run import ROOT, copy_tree, tree_files

PACKAGES = ["emulation", "moe_ref", "moe_oracle", "moe_kernels"]
_DOCS = ["tests/test_readme.py", "tests/test_numerics_doc.py"]
# the oracle side, module -> the tests that can see it (mutmut then runs, per mutant, those that cover it)
SELECTIONS = {
    **{f"emulation/{m}.py": ["tests/emulation", "tests/edge/test_policies.py", "tests/edge/test_refusals.py"]
       for m in ("formats", "convert", "fp8", "fp4x2", "mx", "validate")},
    **{f"moe_ref/{m}.py": ["tests/moe_ref", "tests/oracle/test_dispatch.py", *_DOCS]
       for m in ("selector", "env", "spec", "paths", "activation", "routing", "tolerance", "bounded", "exact",
                 "reference")},
    # the oracle's modules: the tests that call them (all of tests/oracle is ~10 min a run on 2 cores, and
    # mutmut runs a selection once to map tests to functions before the first mutant)
    "moe_oracle/compare.py": [f"tests/oracle/test_{t}.py" for t in ("compare", "exit_status", "rows", "first_day")],
    "moe_oracle/config.py": [f"tests/oracle/test_{t}.py" for t in ("config", "exit_status", "rows", "first_day")],
    "moe_oracle/report.py": [f"tests/oracle/test_{t}.py" for t in ("report", "first_day")],
    "moe_oracle/stage.py": [f"tests/oracle/test_{t}.py" for t in ("stage", "planted")],
    # the input-write verdict (same bytes, put back) that layer, stage and the quantizer checks share
    "moe_oracle/_tensors.py": [f"tests/oracle/test_{t}.py" for t in ("tensors", "stage", "planted")],
    "moe_oracle/quantizers.py": [f"tests/oracle/test_{t}.py" for t in ("quantizers", "quantizer_diagnosis", "planted", "exit_status")],
    "moe_oracle/layer.py": [f"tests/oracle/test_{t}.py" for t in ("layer", "planted", "rows", "exit_status", "first_day")],
    "moe_oracle/engine.py": [f"tests/oracle/test_{t}.py" for t in ("engine", "rows", "devices", "exit_status", "first_day")],
    "moe_oracle/cli.py": [f"tests/oracle/test_{t}.py" for t in ("cli", "exit_status", "memcheck", "first_day")],
}
# every run of a module's tests: mutmut's per mutant (it adds -x), and the clean run in fastest-first order
PYTEST_ARGS = ["-p", "no:randomly", "-p", "no:cacheprovider", "-p", "mutants_fast_first", "-q",
               "-m", "not gpu and not exhaustive"]
EQUIVALENT = Path(__file__).with_name("equivalent.json")
RECORD = Path(__file__).with_name("auto_results.json")  # the committed table: the last recorded run of each module
BEGIN, END = "<!-- mutants-auto:begin (python -m tests.mutants.auto --record) -->", "<!-- mutants-auto:end -->"
KILLED, SURVIVED = "killed", "survived"
TARGET = 0.95


def _config(module: str, selection: list[str], others: list[str]) -> str:
    """mutmut's section: the packages copied (and the module mutated), the rest of the tree copied beside."""
    quoted = ", ".join(json.dumps(p) for p in selection)
    return (f"\n[tool.mutmut]\nsource_paths = {json.dumps(PACKAGES)}\nonly_mutate = [{json.dumps(module)}]\n"
            f"also_copy = {json.dumps(others)}\n"
            f"pytest_add_cli_args_test_selection = [{quoted}]\n"
            f"pytest_add_cli_args = {json.dumps(PYTEST_ARGS)}\n"
            'process_isolation = "forkserver"\n')


def prepare(module: str, work: Path) -> Path:
    """The module's copy of the tree (sources refreshed; mutmut's results kept), its config appended."""
    tree = work / module.replace("/", "__").removesuffix(".py")
    files = tree_files(ROOT)
    copy_tree(ROOT, files, tree)
    if (tree / "mutants").is_dir():  # mutmut refreshes its copy's Python sources only: data files and tests too
        copy_tree(ROOT, [f for f in files if not (f.endswith(".py") and f.split("/")[0] in PACKAGES)],
                  tree / "mutants")
    (tree / "sitecustomize.py").write_text(_SITECUSTOMIZE)
    (tree / "mutants_fast_first.py").write_text(_FAST_FIRST)
    others = sorted({f.split("/")[0] for f in files} - set(PACKAGES) - {"tests", "pyproject.toml"}
                    | {"sitecustomize.py", "mutants_fast_first.py"})
    pyproject = tree / "pyproject.toml"
    pyproject.write_text((ROOT / "pyproject.toml").read_text() + _config(module, SELECTIONS[module], others))
    return tree


# Tests that start Python in another folder (the CLI, the README's snippets) import the mutated tree, whose
# trampolines read mutmut's config from the current folder: it is read once, from the tree, at start-up.
_SITECUSTOMIZE = """import os
if os.environ.get("MUTANT_UNDER_TEST") and os.environ.get("MOE_MUTMUT_TREE"):
    _cwd = os.getcwd()
    os.chdir(os.environ["MOE_MUTMUT_TREE"])
    try:
        from mutmut.configuration import config
        config()
    finally:
        os.chdir(_cwd)
"""


# mutmut runs a mutant's tests with -x in the order it lists them (a set's): fastest first instead, by the
# durations its stats collection measured, so that a mutant dies at its cheapest failing test. A test that
# needs another to run before it would then fail and kill mutants falsely: ``order_check`` runs the
# selection unmutated in this order, and a module whose selection fails it is not reported.
_FAST_FIRST = """import json


def pytest_collection_modifyitems(session, config, items):
    try:
        with open("mutmut-stats.json") as f:
            seconds = json.load(f)["duration_by_test"]
    except (OSError, ValueError, KeyError):
        return
    items.sort(key=lambda item: seconds.get(item.nodeid, float("inf")))
"""


def _order_key(tree: Path, module: str, seed: int) -> str:
    """What the order check's verdict depends on: the sources and tests in the module's copy (as copied
    from the project), the measured durations that set the order, and the seed."""
    digest = hashlib.sha256(f"{module}\0{seed}\0".encode())
    for f in sorted(tree.rglob("*.py")):
        rel = f.relative_to(tree)
        if rel.parts[0] in (*PACKAGES, "tests"):
            digest.update(str(rel).encode() + b"\0" + f.read_bytes())
    stats = tree / "mutants" / "mutmut-stats.json"
    durations = json.loads(stats.read_text()).get("duration_by_test", {}) if stats.exists() else {}
    digest.update(json.dumps(sorted(durations, key=lambda t: (durations[t], t))).encode())
    return digest.hexdigest()


def order_check(tree: Path, module: str, seed: int, timeout: float | None = None) -> None:
    """The module's selection, unmutated, in the fastest-first order its mutants' tests run in: MutmutFailed
    if any test fails (its kills could be the order's, not the mutant's). A pass is kept in the copy
    (``order_checked``) until the sources, the tests, the order or the seed change: a resumed run skips it."""
    passed, key = tree / "order_checked", _order_key(tree, module, seed)
    if passed.exists() and passed.read_text() == key:
        return
    env = {k: v for k, v in _env(seed, tree).items() if k != "MUTANT_UNDER_TEST"}
    proc = subprocess.run([sys.executable, "-m", "pytest", "--rootdir=.", "-x", *PYTEST_ARGS, *SELECTIONS[module]],
                          cwd=tree / "mutants", env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=timeout, check=False)
    if proc.returncode != 0:
        lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
        raise MutmutFailed(f"{module}: its tests fail unmutated in fastest-first order (exit {proc.returncode}): "
                           "a test depends on another's having run\n" + "\n".join(lines[-15:]))
    passed.write_text(key)


def _env(seed: int, tree: Path) -> dict:
    return {**os.environ, "MOE_ORACLE_SEED": str(seed), "TRITON_INTERPRET": "1", "PYTHONHASHSEED": "0",
            "MOE_MUTMUT_TREE": str(tree)}


class MutmutFailed(RuntimeError):
    """mutmut stopped before testing the mutants (its clean test run failed, its stats did not collect)."""


def _mutmut(tree: Path, seed: int, names=(), timeout: float | None = None) -> None:
    """One ``mutmut run``; its results stay in the tree. A run that did not test the mutants is an error
    naming why: a module whose clean tests fail must not report the previous run's verdicts as its own."""
    cmd = [sys.executable, "-m", "mutmut", "run", *names]
    proc = subprocess.run(cmd, cwd=tree, env=_env(seed, tree), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]  # its spinner's \r frames are lines here
        raise MutmutFailed(f"mutmut run in {tree} exited {proc.returncode}:\n" + "\n".join(lines[-25:]))


def _meta(tree: Path, module: str) -> dict:
    meta = tree / "mutants" / f"{module}.meta"
    return json.loads(meta.read_text()) if meta.exists() else {"exit_code_by_key": {}, "hash_by_function_name": {}}


def results(tree: Path, module: str) -> dict[str, str]:
    """mutant -> mutmut's own status name for its exit code ("killed", "survived", "no tests", ...)."""
    from mutmut.stats import status_by_exit_code

    return {k: status_by_exit_code[v] for k, v in _meta(tree, module)["exit_code_by_key"].items()}


def _function_hash(tree: Path, module: str) -> dict[str, str]:
    """mutant -> the hash of the function it mutates (a kill re-checked once holds until the function changes)."""
    hashes = _meta(tree, module)["hash_by_function_name"]
    return {name: hashes.get(name.rsplit(".", 1)[-1].rsplit("__mutmut_", 1)[0], "") for name in results(tree, module)}


def tests_digest(tree: Path, module: str) -> str:
    """A hash of the module's test selection (and the tests' conftest) in its copy."""
    digest = hashlib.sha256()
    for entry in [*SELECTIONS[module], "tests/conftest.py"]:
        path = tree / entry
        for f in sorted(path.rglob("*.py")) if path.is_dir() else [path] if path.is_file() else []:
            digest.update(str(f.relative_to(tree)).encode() + b"\0" + f.read_bytes())
    return digest.hexdigest()[:16]


def diffs(tree: Path, names: list[str]) -> dict[str, str]:
    """Each mutant's diff against the module, from mutmut's own record."""
    if not names:
        return {}
    code = ("import json, sys\nfrom mutmut.__main__ import find_mutant, get_diff_for_mutant\n"
            "out = {n: get_diff_for_mutant(n, path=find_mutant(n).path) for n in json.load(sys.stdin)}\n"
            "print(json.dumps(out))")
    done = subprocess.run([sys.executable, "-c", code], cwd=tree, input=json.dumps(names), capture_output=True,
                          text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def changed_lines(diff: str) -> list[str]:
    """The mutant's edit: its added lines, stripped (what ``equivalent.json`` records)."""
    return [ln[1:].strip() for ln in diff.splitlines() if ln.startswith("+") and not ln.startswith("+++")]


def load_equivalent() -> dict[str, dict]:
    return json.loads(EQUIVALENT.read_text()) if EQUIVALENT.exists() else {}


def _function(name: str) -> str:
    return name.rsplit("__mutmut_", 1)[0]


def renumbered(status: dict[str, str], diff_of: dict[str, str], equivalent: dict[str, dict]) -> dict[str, str]:
    """Open mutant -> the ``equivalent.json`` entry that records its edit under another number (mutmut
    numbers a function's mutants in order: an edit elsewhere in the function shifts them). Only where the
    function and the edit pick out one entry and one open mutant."""
    open_ = [n for n, st in status.items() if st in (SURVIVED, "no tests")]
    edit_of = {n: changed_lines(diff_of.get(n, "")) for n in open_}
    out = {}
    for name in open_:
        entry = equivalent.get(name)
        if entry and entry.get("edit") == edit_of[name]:
            continue
        key = (_function(name), edit_of[name])
        entries = [k for k, e in equivalent.items() if (_function(k), e.get("edit")) == key]
        mutants = [n for n in open_ if (_function(n), edit_of[n]) == key]
        if len(entries) == 1 and len(mutants) == 1:
            out[name] = entries[0]
    return out


def triage(status: dict[str, str], diff_of: dict[str, str], equivalent: dict[str, dict]) -> dict[str, str]:
    """Survivors (and uncovered mutants) that ``equivalent.json`` accounts for, with the same edit (under
    their number, or :func:`renumbered`), become "equivalent"; the rest stay as they are (untriaged)."""
    out, moved = dict(status), renumbered(status, diff_of, equivalent)
    for name, st in status.items():
        entry = equivalent.get(moved.get(name, name))
        if st in (SURVIVED, "no tests") and entry and entry.get("edit") == changed_lines(diff_of.get(name, "")):
            out[name] = "equivalent"
    return out


def renumber_entries(moved: dict[str, str]) -> None:
    """Re-key ``equivalent.json``'s entries under the mutants' current names (on ``--record``)."""
    entries = load_equivalent()
    taken = {new: entries.pop(old) for new, old in moved.items() if old in entries}  # a name may move onto another's
    entries.update(taken)
    EQUIVALENT.write_text(json.dumps(entries, indent=1, ensure_ascii=False) + "\n")


def recheck(tree: Path, module: str, status: dict[str, str], seeds: list[int]) -> dict[str, str]:
    """Re-run every kill under each further seed: a kill that does not reproduce is "flaky". The verdicts
    are kept in the module's copy (``rechecked.json``) until the mutated function changes; a "flaky" one
    also until the module's tests change (a new test may kill it with every seed)."""
    record = tree / "rechecked.json"
    done = json.loads(record.read_text()) if record.exists() else {}
    hashes, tests = _function_hash(tree, module), tests_digest(tree, module)

    def holds(name):
        verdict = done.get(name)
        return bool(verdict) and verdict["hash"] == hashes.get(name) and (
            verdict["status"] != "flaky" or verdict.get("tests") == tests)

    out = dict(status)
    for name in out:
        if out[name] == KILLED and holds(name):
            out[name] = done[name]["status"]
    killed = [n for n, s in status.items() if s == KILLED and not holds(n)]
    fresh = list(killed)
    for seed in seeds:
        if not killed:
            break
        _mutmut(tree, seed, killed)
        again = results(tree, module)
        for name in killed:
            if again.get(name) != KILLED:
                out[name] = "flaky"
        killed = [n for n in killed if out[n] == KILLED]
    done.update({n: {"status": out[n], "hash": hashes.get(n, ""), "tests": tests} for n in fresh})
    record.write_text(json.dumps(done, indent=0))
    return out


def summarize(module: str, status: dict[str, str], seconds: float) -> dict:
    counts = {k: sum(v == k for v in status.values()) for k in (KILLED, "equivalent", "flaky")}
    total = len(status)
    untriaged = total - sum(counts.values())
    judged = total - counts["equivalent"]
    rate = counts[KILLED] / judged if judged else 1.0
    return {"module": module, "mutants": total, **counts, "untriaged": untriaged, "kill_rate": round(rate, 4),
            "seconds": round(seconds, 1)}


def markdown(rows: list[dict]) -> str:
    """The table: one row per module (its seed and date as recorded), modules not yet run named below it."""
    lines = ["| module | mutants | killed | equivalent | flaky | untriaged | kill rate | time (s) | seed | run |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| `{r['module']}` | {r['mutants']} | {r['killed']} | {r['equivalent']} | {r['flaky']} | "
                     f"{r['untriaged']} | {100 * r['kill_rate']:.1f}% | {r['seconds']:.0f} | {r.get('seed', '-')} | "
                     f"{r.get('date', '-')} |")
    missing = [m for m in SELECTIONS if m not in {r["module"] for r in rows}]
    if missing:
        lines += ["", f"Not run yet: {', '.join(f'`{m}`' for m in missing)}."]
    return "\n".join(lines) + "\n"


def record(rows: list[dict], readme: Path) -> None:
    """Merge ``rows`` into the committed results and regenerate the README's table from them."""
    kept = {r["module"]: r for r in (json.loads(RECORD.read_text()) if RECORD.exists() else [])}
    kept.update({r["module"]: r for r in rows})
    ordered = [kept[m] for m in SELECTIONS if m in kept]
    RECORD.write_text(json.dumps(ordered, indent=1) + "\n")
    text = readme.read_text()
    head, rest = text.split(BEGIN, 1)
    readme.write_text(f"{head}{BEGIN}\n{markdown(ordered)}{END}{rest.split(END, 1)[1]}")


def cover_new_functions(tree: Path, module: str, seed: int, timeout: float | None = None) -> None:
    """mutmut maps tests to functions once and then only for new tests: a function added since, covered by
    tests it already knows, reads "no tests". Where any mutant does, the map is measured again and those
    mutants run."""
    uncovered = [n for n, st in results(tree, module).items() if st == "no tests"]
    stats = tree / "mutants" / "mutmut-stats.json"
    if uncovered and stats.exists():
        stats.unlink()
        _mutmut(tree, seed, uncovered, timeout=timeout)


def run_module(module: str, work: Path, seed: int, recheck_seeds: list[int], timeout: float) -> tuple[dict, dict]:
    start = time.monotonic()
    tree = prepare(module, work)
    before = [n for n, st in results(tree, module).items() if st != KILLED]
    _mutmut(tree, seed, timeout=timeout)
    if before:  # mutmut keeps a verdict until the function changes: the open ones meet the current tests again
        _mutmut(tree, seed, before, timeout=timeout)
    cover_new_functions(tree, module, seed, timeout)
    order_check(tree, module, seed, timeout)
    status = results(tree, module)
    status = recheck(tree, module, status, recheck_seeds)
    open_names = [n for n, s in status.items() if s not in (KILLED,)]
    diff_of = diffs(tree, open_names)
    moved = renumbered(status, diff_of, load_equivalent())
    status = triage(status, diff_of, load_equivalent())
    row = {**summarize(module, status, time.monotonic() - start), "seed": seed,
           "date": time.strftime("%Y-%m-%d", time.gmtime())}
    survivors = {n: {"status": s, "diff": diff_of.get(n, "")} for n, s in status.items()
                 if s not in (KILLED, "equivalent")}
    return row, survivors, moved


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.mutants.auto", description=__doc__.split("\n\n")[0])
    ap.add_argument("modules", nargs="*", help=f"modules to run (default: all {len(SELECTIONS)} of the oracle side)")
    ap.add_argument("--seed", type=int, default=None, help="base seed (default: fresh, printed)")
    ap.add_argument("--work", default="mutants-auto", help="the per-module copies (kept: a rerun resumes)")
    ap.add_argument("--out", default="mutants-report", help="directory for auto.md and auto.json")
    ap.add_argument("--timeout", type=float, default=6 * 3600, help="seconds per module's mutmut run")
    ap.add_argument("--fresh", action="store_true", help="discard earlier results of these modules")
    ap.add_argument("--record", action="store_true",
                    help="merge the rows into tests/mutants/auto_results.json and the README's table")
    args = ap.parse_args(argv)
    unknown = [m for m in args.modules if m not in SELECTIONS]
    if unknown:
        ap.error(f"modules: not on the oracle side: {', '.join(unknown)} (known: {', '.join(SELECTIONS)})")
    if args.seed is not None and args.seed < 0:
        ap.error("--seed: expected a non-negative integer")
    seed = secrets.randbits(32) if args.seed is None else args.seed
    recheck_seeds = [(seed + k * 7919) % 2**32 for k in (1, 2, 3)]
    work, out = Path(args.work).resolve(), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(f"seed: {seed} (rerun with --seed {seed})", flush=True)
    rows, open_, failed, moved = [], {}, [], {}
    for module in args.modules or list(SELECTIONS):
        if args.fresh:
            shutil.rmtree(work / module.replace("/", "__").removesuffix(".py") / "mutants", ignore_errors=True)
        try:
            row, survivors, renamed = run_module(module, work, seed, recheck_seeds, args.timeout)
        except MutmutFailed as exc:  # nothing of this module is reported (nor recorded)
            print(f"{module}: not run: {exc}", file=sys.stderr, flush=True)
            failed.append(module)
            continue
        rows.append(row)
        open_.update(survivors)
        moved.update(renamed)
        print(f"{module}: {row['killed']}/{row['mutants']} killed, {row['equivalent']} equivalent, {row['flaky']} "
              f"flaky, {row['untriaged']} untriaged ({row['seconds']:.0f} s)", flush=True)
    (out / "auto.md").write_text(markdown(rows))
    (out / "auto.json").write_text(json.dumps({"seed": seed, "recheck_seeds": recheck_seeds, "rows": rows,
                                               "open": open_}, indent=1))
    print(f"kills re-run under seeds {', '.join(map(str, recheck_seeds))}; kill rate = killed / (mutants - "
          "equivalent): flaky kills and untriaged survivors count against it\n" + markdown(rows))
    for new, old in moved.items():
        print(f"equivalent.json: {old} is now {new} (same function, same edit)")
    if args.record:
        record(rows, ROOT / "README.md")
        renumber_entries(moved)
    for name, info in open_.items():
        print(f"--- {name}: {info['status']}\n{info['diff']}")
    if failed:
        print(f"not run (mutmut stopped before testing their mutants): {', '.join(failed)}", file=sys.stderr)
    return 0 if not failed and all(r["kill_rate"] >= TARGET and not r["untriaged"] for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
