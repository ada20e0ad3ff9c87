"""A peer's source files read where they are: a folder (a checkout or an unpacked package), a wheel
(read inside the zip), or one commit of a git repository (read with ``git cat-file``, no checkout).
Nothing is imported or executed; callers parse what they read."""

from __future__ import annotations

import subprocess
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["SourceTree", "open_tree", "git_tree"]


@dataclass
class SourceTree:
    """Text files by path relative to the tree's root (``aiter/fused_moe.py``). ``label`` names the tree
    in reports (a folder, a wheel's file name, or ``repo@commit``)."""

    label: str
    _read: object = field(repr=False)
    _list: object = field(repr=False)
    _cache: dict = field(default_factory=dict, repr=False)

    def read(self, path: str) -> str | None:
        """The file's text, or None where the tree has no such file."""
        if path not in self._cache:
            self._cache[path] = self._read(path)
        return self._cache[path]

    _grep: object = field(default=None, repr=False)

    def files(self, under: str = "") -> list[str]:
        """Every file path under the folder ``under`` (recursively)."""
        return [p for p in self._list() if p.startswith(under)]

    def containing(self, under: str, needles) -> list[str]:
        """The ``.py`` files under ``under`` whose text holds any of ``needles``."""
        needles = [n for n in needles if n]
        if self._grep is not None:
            return self._grep(under, needles)
        return [p for p in self.files(under) if p.endswith(".py") and any(n in (self.read(p) or "") for n in needles)]


def open_tree(path: str | Path) -> SourceTree:
    """A folder or a ``.whl`` file. A folder that holds the package itself (``.../aiter``) is taken at
    its parent, so that paths always start with the package's name."""
    path = Path(path)
    if path.is_file() and path.suffix == ".whl":
        zf = zipfile.ZipFile(path)
        names = set(zf.namelist())
        return SourceTree(path.name, lambda p: zf.read(p).decode() if p in names else None, lambda: sorted(names))
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: neither a folder nor a .whl file")
    if (path / "__init__.py").is_file() and not (path / path.name).is_dir():
        path = path.parent

    def read(p: str) -> str | None:
        f = path / p
        return f.read_text(errors="replace") if f.is_file() else None

    def listing() -> list[str]:
        return sorted(str(f.relative_to(path)) for f in path.rglob("*.py"))

    return SourceTree(str(path), read, listing)


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout


def git_tree(repo: str | Path, commit: str) -> SourceTree:
    """The tree of ``commit`` in the git repository ``repo`` (a checkout or a bare repository)."""
    repo = Path(repo)
    full = _git(repo, "rev-parse", "--verify", f"{commit}^{{commit}}").strip()
    listing = [ln for ln in _git(repo, "ls-tree", "-r", "--name-only", full).splitlines()]
    present = set(listing)

    def read(p: str) -> str | None:
        return _git(repo, "show", f"{full}:{p}") if p in present else None

    def grep(under: str, needles) -> list[str]:
        args = [a for n in needles for a in ("-e", n)]
        done = subprocess.run(["git", "-C", str(repo), "grep", "-l", "-F", *args, full, "--", f"{under}*.py"],
                              capture_output=True, text=True)
        return [ln.split(":", 1)[1] for ln in done.stdout.splitlines() if ":" in ln]

    return SourceTree(f"{repo.name}@{full[:12]}", read, lambda: listing, _grep=grep)
