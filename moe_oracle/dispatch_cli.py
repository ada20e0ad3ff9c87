"""``moe-oracle verify --impl aiter --only dispatch``: AITER's dispatch (its runtime rule and its tests'
copies, read from the tree at ``MOE_ORACLE_AITER_PATH``: a checkout or a wheel; default the
installed amd-aiter) against the selector; with ``--aiter-repo DIR --since REV``, through the
repository's history. Exit 1 where the runtime or a copy disagrees with the selector; 2 bad usage."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

__all__ = ["run"]

AITER_IMPLS = ("aiter", "aiter-triton")


def _tree():
    from .adapters._loader import PeerUnavailable, locate
    from .adapters.sources import open_tree

    given = os.environ.get("MOE_ORACLE_AITER_PATH")
    if given and Path(given).suffix == ".whl":
        return open_tree(given)
    try:
        return open_tree(locate("aiter", "MOE_ORACLE_AITER_PATH"))
    except PeerUnavailable as exc:
        raise ValueError(str(exc)) from exc


def _usage(message: str) -> int:
    print(f"moe-oracle verify: {message}", file=sys.stderr)
    return 2


def run(args) -> int:
    impl = args.impl or "aiter"
    if impl not in AITER_IMPLS:
        return _usage(f"--only dispatch reads AITER's dispatch from its source: use --impl aiter (got {impl!r}); "
                      "MOE_ORACLE_AITER_PATH names a checkout or a wheel")
    out = Path(args.out) if args.out else None
    if out is not None and out.exists() and not out.is_dir():
        return _usage(f"--out {out}: exists and is not a folder")
    if args.aiter_repo:
        return _history(args, out)
    if args.since or args.until:
        return _usage("--since / --until walk a history: give --aiter-repo DIR too")
    from .adapters.aiter_dispatch import locate
    from .dispatch_check import check, exit_status, format_report

    try:
        tree = _tree()
        located = locate(tree)
    except (ValueError, LookupError, FileNotFoundError) as exc:
        return _usage(f"AITER's dispatch: {exc}")
    t0 = time.perf_counter()
    rows, matrix, located = check(tree, located)
    if not rows:
        return _usage("the matrix is empty: nothing was checked")
    print(format_report(rows, matrix, located, tree.label, limit=40))
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "report.json").write_text(json.dumps(dict(
            tree=tree.label, rule=located.rule.where, rule_function=located.rule.name,
            override=located.keep.where if located.keep else None,
            copies={s.name: s.where for s in located.copies}, knobs=matrix.knob_sources, dispatch=rows), indent=1))
        (out / "report.md").write_text(format_report(rows, matrix, located, tree.label, markdown=True) + "\n")
        print(f"wrote {out / 'report.json'}, {out / 'report.md'}")
    bad = sum(r["disagrees"] for r in rows)
    print(f"checked {len(rows)} cases in {time.perf_counter() - t0:.0f} s; "
          f"{bad} disagree with the selector (runtime or a copy)")
    return exit_status(rows)


def _history(args, out: Path | None) -> int:
    from .dispatch_history import format_history, history

    if not args.since:
        return _usage("--aiter-repo needs --since REV: the first commit to check (e.g. AITER #1667's, 5998faf470)")
    if not (Path(args.aiter_repo) / ".git").exists() and not (Path(args.aiter_repo) / "HEAD").is_file():
        return _usage(f"--aiter-repo {args.aiter_repo}: not a git repository")
    try:
        entries = history(args.aiter_repo, args.since, args.until or "HEAD", progress=lambda s: print(s, flush=True))
    except (ValueError, LookupError, OSError) as exc:
        return _usage(f"--aiter-repo: {exc}")
    except Exception as exc:  # noqa: BLE001 - git's own errors (an unknown revision)
        return _usage(f"--aiter-repo: {type(exc).__name__}: {getattr(exc, 'stderr', '') or exc}")
    print(format_history(entries))
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "history.json").write_text(json.dumps(entries, indent=1))
        (out / "history.md").write_text(format_history(entries, markdown=True) + "\n")
        print(f"wrote {out / 'history.json'}, {out / 'history.md'}")
    last = next((e for e in reversed(entries) if "error" not in e), None)
    if last is None:
        return _usage("no commit in the range has the rule")
    print(f"{len(entries)} commits evaluated; at the last one ({last['commit']}) {last['disagree_with_selector']} "
          f"cases disagree with the selector")
    return 1 if last["disagree_with_selector"] else 0
