"""Load Triton files of a peer package without running its top-level ``__init__`` (which may need
ROCm, compiled extensions or a GPU): the package's folders are registered as empty namespace modules,
so ``import pkg.sub.mod`` executes only the files it names."""

from __future__ import annotations

import importlib
import os
import sys
import types
import zipfile
from pathlib import Path

__all__ = ["PeerUnavailable", "locate", "stub_packages", "import_file_module"]


class PeerUnavailable(RuntimeError):
    """The peer is not installed, not found, or does not run here (one line for the report)."""


def locate(package: str, env_var: str, *, inner: str = "", cache: Path | None = None) -> Path:
    """The folder holding ``package/``: from ``env_var`` (a folder, or a .whl extracted once into a
    cache), else an installed distribution's location (found without importing it)."""
    given = os.environ.get(env_var)
    if given:
        path = Path(given)
        if path.suffix == ".whl":
            target = (cache or Path.home() / ".cache" / "moe-oracle") / path.stem
            if not (target / inner / package).is_dir():
                with zipfile.ZipFile(path) as z:
                    z.extractall(target, [n for n in z.namelist() if n.startswith(f"{inner}/{package}/".lstrip("/"))])
            path = target
        path = path / inner if inner else path
        if (path / package).is_dir():
            return path
        if path.name == package and path.is_dir():
            return path.parent
        raise PeerUnavailable(f"{env_var}={given}: no {package}/ folder there")
    top = sys.modules.get(package.split(".")[0])
    if getattr(top, "__moe_oracle_stub__", False):  # already registered by stub_packages (it has no __spec__)
        return Path(top.__path__[0]).parent
    spec = importlib.util.find_spec(package.split(".")[0])
    if spec is None or not spec.submodule_search_locations:
        raise PeerUnavailable(f"{package} is not installed; set {env_var} to its folder or wheel")
    return Path(next(iter(spec.submodule_search_locations))).parent


def stub_packages(root: Path, dotted: str) -> None:
    """Register ``a``, ``a.b``, ... of ``dotted`` as namespace modules over ``root`` (if not imported)."""
    parts = dotted.split(".")
    for i in range(1, len(parts) + 1):
        name = ".".join(parts[:i])
        folder = root.joinpath(*parts[:i])
        mod = sys.modules.get(name)
        if mod is None or getattr(mod, "__moe_oracle_stub__", False):
            mod = types.ModuleType(name)
            mod.__path__ = [str(folder)]
            mod.__moe_oracle_stub__ = True
            sys.modules[name] = mod
            if i > 1:
                setattr(sys.modules[".".join(parts[: i - 1])], parts[i - 1], mod)


def import_file_module(name: str):
    try:
        return importlib.import_module(name)
    except Exception as exc:  # noqa: BLE001 - any failure to load a peer is one line, not a crash
        raise PeerUnavailable(f"cannot import {name}: {type(exc).__name__}: {exc}") from exc
