"""AITER's dispatch through its git history: every commit that changed the rule, its override or a
copy in the tests (the functions' own text, and the module constants they read, compared commit to
commit) is evaluated over one matrix; the timeline says which cases changed answer in the runtime
and in each copy, and from when to when the runtime and its copies disagreed."""

from __future__ import annotations

import ast
import subprocess
from pathlib import Path

from .adapters.aiter_dispatch import ENTRY_FILE, locate
from .adapters.sources import git_tree
from .dispatch_check import Matrix, _functions_of, check, derive_matrix, kind

__all__ = ["commits", "history", "format_history", "merge_matrices"]


def commits(repo: Path, since: str, until: str = "HEAD") -> list[tuple[str, str, str]]:
    """(id, date, subject) of each commit from ``since`` to ``until`` (both included) that touched the
    rule's file or the tests, oldest first."""
    has_parent = subprocess.run(["git", "-C", str(repo), "rev-parse", "-q", "--verify", f"{since}^"],
                                capture_output=True).returncode == 0
    span = f"{since}^..{until}" if has_parent else until  # a root commit: everything up to until
    out = subprocess.run(["git", "-C", str(repo), "log", "--reverse", "--format=%H%x1f%cs%x1f%s",
                          span, "--", ENTRY_FILE, "op_tests"],
                         check=True, capture_output=True, text=True).stdout
    return [tuple(ln.split("\x1f", 2)) for ln in out.splitlines() if ln]


def merge_matrices(a: Matrix, b: Matrix) -> Matrix:
    def union(x, y):
        return tuple(sorted(set(x) | set(y), key=str))

    sources = {k: sorted(set(a.knob_sources.get(k, [])) | set(b.knob_sources.get(k, [])))
               for k in set(a.knob_sources) | set(b.knob_sources)}
    return Matrix(union(a.Ms, b.Ms), union(a.archs, b.archs), tuple(dict.fromkeys(a.activations + b.activations)),
                  union(a.weight_dtypes, b.weight_dtypes), union(a.shuffled, b.shuffled), tuple(sorted(sources)),
                  dict(sorted(sources.items())))


def _key(row: dict) -> tuple:
    return (row["M"], row["arch"], row["activation"], row["gate_mode"], row["weight_dtype"], row["shuffled"],
            tuple(sorted(row["env"].items())), row["env_timing"])


def _describe(key: tuple) -> str:
    M, arch, act, gate, w, sh, env, timing = key
    env_text = " ".join(f"{k}={v!r}({timing})" for k, v in env)
    return f"M={M} {arch} {act} {gate} {w}{' shuffled' if sh else ''} {env_text}".rstrip()


def history(repo: str | Path, since: str, until: str = "HEAD", progress=None) -> list[dict]:
    """One entry per commit whose rule, override or copies changed (by their text)."""
    repo = Path(repo)
    found = commits(repo, since, until)
    if not found:
        raise ValueError(f"no commit from {since} to {until} touches {ENTRY_FILE} or op_tests/")
    ends = [git_tree(repo, found[0][0]), git_tree(repo, found[-1][0])]
    matrix = merge_matrices(*(derive_matrix(t, locate(t)) for t in ends))
    entries, before, previous = [], None, None
    for sha, date, subject in found:
        tree = git_tree(repo, sha)
        try:
            located = locate(tree)
        except LookupError as exc:
            missing = f"rule not found: {exc}"
            if missing != previous:
                entries.append(dict(commit=sha[:12], date=date, subject=subject, error=missing))
                previous = missing
            continue
        fingerprint = _fingerprint(tree, located)
        if fingerprint == previous:
            continue
        previous = fingerprint
        if progress:
            progress(f"{sha[:12]} {date} {subject[:70]}")
        rows = check(tree, located, matrix)[0]
        answers = {_key(r): r for r in rows}
        entries.append(_entry(sha, date, subject, located, answers, before))
        before = answers
    return entries


def _fingerprint(tree, located) -> str:
    """The text that decides: the rule's body up to its last q_dtype_a statement, the override's body up
    to its branches, each copy, and the module constants they name (line numbers left out)."""
    parts = []
    for node in _functions_of(tree, located):
        if isinstance(node, ast.FunctionDef) and node.name == located.rule.name:
            node = ast.Module(node.body[: located.rule.stop + 1], [])
        elif located.keep and isinstance(node, ast.FunctionDef) and node.name == located.keep.name:
            node = ast.Module(node.body[: located.keep.stop + 1], [])
        parts.append(ast.unparse(node))
    return "\n".join(parts)


def _entry(sha, date, subject, located, answers, before) -> dict:
    runtime_changed, copy_changed = [], {}
    for key, row in answers.items():
        old = before.get(key) if before else None
        if old is None:
            continue
        if kind(row["runtime"]) != kind(old["runtime"]):  # line numbers inside reasons move with any edit
            runtime_changed.append(f"{_describe(key)}: {old['runtime']} -> {row['runtime']}")
        for name, value in row["copies"].items():
            if name not in old["copies"] or kind(value) != kind(old["copies"][name]):
                copy_changed.setdefault(name, []).append(f"{_describe(key)}: {old['copies'].get(name, 'absent')} "
                                                         f"-> {value}")
    disagree = [k for k, r in answers.items()
                if any(kind(c) is not None and kind(r["runtime"]) is not None and kind(c) != kind(r["runtime"])
                       for c in r["copies"].values())]
    return dict(commit=sha[:12], date=date, subject=subject, rule=f"{located.rule.name} ({located.rule.where})",
                copies=[s.name for s in located.copies], cases=len(answers),
                runtime_changed=len(runtime_changed), runtime_changes=runtime_changed[:12],
                copies_changed={k: len(v) for k, v in copy_changed.items()},
                copy_changes={k: v[:6] for k, v in copy_changed.items()},
                runtime_vs_copies=len(disagree), runtime_vs_copies_examples=[_describe(k) for k in disagree[:6]],
                disagree_with_selector=sum(r["disagrees"] for r in answers.values()))


def periods(entries: list[dict]) -> list[str]:
    """From when to when the runtime and a copy disagreed on some case."""
    out, start = [], None
    evaluated = [e for e in entries if "error" not in e]
    for e in evaluated:
        if e["runtime_vs_copies"] and start is None:
            start = e
        elif not e["runtime_vs_copies"] and start is not None:
            out.append(f"{start['commit']} ({start['date']}) to {e['commit']} ({e['date']})")
            start = None
    if start is not None:
        out.append(f"{start['commit']} ({start['date']}) to the last commit checked "
                   f"({evaluated[-1]['commit']}, {evaluated[-1]['date']}): still disagreeing")
    return out


def format_history(entries: list[dict], markdown: bool = False) -> str:
    lines = ["| commit | date | subject | rule | copies | runtime changed | copies changed | runtime vs copies |"
             " vs selector |", "|---|---|---|---|---|---|---|---|---|"] if markdown else []
    for e in entries:
        if "error" in e:
            cells = [e["commit"], e["date"], e["subject"][:60], e["error"], "", "", "", "", ""]
        else:
            changed = ", ".join(f"{k} {v}" for k, v in e["copies_changed"].items()) or "0"
            cells = [e["commit"], e["date"], e["subject"][:60], e["rule"].split(" ")[0], ", ".join(e["copies"]) or "-",
                     str(e["runtime_changed"]), changed, str(e["runtime_vs_copies"]), str(e["disagree_with_selector"])]
        if markdown:
            lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
        else:
            lines.append("  ".join(cells))
            for change in e.get("runtime_changes", [])[:4]:
                lines.append(f"      runtime: {change}")
            for name, changes in e.get("copy_changes", {}).items():
                for change in changes[:2]:
                    lines.append(f"      {name}: {change}")
    lines += ["", "runtime and copies disagree: " + ("; ".join(periods(entries)) or "never, on this matrix")]
    return "\n".join(lines)
