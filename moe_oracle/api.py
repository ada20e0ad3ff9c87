"""The Python API: check a quantizer or a ``fused_moe`` and get structured results with the diagnosis;
one assertion helper that fails with the oracle's message."""

from __future__ import annotations

import dataclasses
import secrets

from moe_ref.selector import normalize_arch

from .config import QUICK, VerifyConfig
from .devices import default_device, parse_device
from .implementation import Implementation, as_implementation
from .quantizers import QuantizerCheck, check_quantizer

__all__ = ["check_quantizer", "check_moe", "assert_conforms", "QuantizerCheck", "MoECheck"]


def _config(config) -> VerifyConfig:
    """The matrix of a check: None (the quick one, seed 0), a VerifyConfig or a mapping of its keys; a
    config without a seed gets a fresh one (on the result: ``.seed``)."""
    if config is None:
        return dataclasses.replace(QUICK, seed=0)
    cfg = config.validated() if isinstance(config, VerifyConfig) else VerifyConfig.from_mapping(dict(config), source="config")
    return cfg if cfg.seed is not None else dataclasses.replace(cfg, seed=secrets.randbits(32))


class MoECheck(list):
    """What :func:`check_moe` returns: one row (a dict, see ``moe_oracle.report.LEGEND``) per case, and
    like :class:`QuantizerCheck` a ``verdict`` ("PASS" only when every case passes), ``passed`` and
    ``diagnosis()``; ``seed``: the matrix's data seed (rerun with ``{"seed": ...}``)."""

    def __init__(self, rows, seed: int):
        super().__init__(rows)
        self.seed = seed

    @property
    def verdict(self) -> str:
        return "PASS" if self and all(r.get("verdict") == "PASS" for r in self) else "FAIL"

    @property
    def passed(self) -> bool:
        return self.verdict == "PASS"

    def diagnosis(self) -> str:
        bad = [_row_text(r) for r in self if r.get("verdict") != "PASS"]
        return f"all {len(self)} cases pass (seed {self.seed})" if not bad else \
            f"{len(bad)} of {len(self)} cases fail (seed {self.seed}):\n  " + "\n  ".join(bad)


def _row_text(r: dict) -> str:
    where = (f"E/H/I/topk={r['E']}/{r['H']}/{r['I']}/{r['topk']} M={r['M']} arch={r['arch']} env={r['env']} "
             f"gate={r['gate_mode']} scale={r['scale_mode']}")
    why = r.get("error") or "; ".join(r["diagnosis"])
    return f"{where}: {why}" + (f" (margin {r['margin']:.3g})" if "margin" in r else "")


def _archs(archs) -> list[str] | None:
    if archs is None:
        return None
    if isinstance(archs, str) or not isinstance(archs, (list, tuple)):
        raise TypeError(f"archs={archs!r}: expected a list of arch names, e.g. ['gfx950']")
    if not archs:
        raise ValueError("archs=[]: expected at least one arch name (None: the config's, else the defaults)")
    try:
        return list(dict.fromkeys(normalize_arch(a) for a in archs))
    except ValueError as exc:
        raise ValueError(f"archs: {exc}") from None


def check_moe(impl, config=None, *, device="cpu", archs=None, workers: int = 1, progress: bool = False) -> MoECheck:
    """Run a ``fused_moe``-shaped callable (or an :class:`Implementation`) over a case matrix (a
    VerifyConfig, a mapping of its keys, or None: the quick matrix, seed 0) -> :class:`MoECheck`, one
    row per case with ``verdict``, ``margin``, ``bound_at_worst`` and ``diagnosis``. ``progress``:
    a progress line on stderr."""
    from . import engine

    if isinstance(workers, bool) or not isinstance(workers, int):
        raise TypeError(f"workers={workers!r}: expected an int >= 1")
    if workers < 1:
        raise ValueError(f"workers={workers}: expected an int >= 1")
    device, archs = parse_device(device), _archs(archs)
    if device != "cpu" and default_device() != "cuda":  # as --device: the kernels run on the CPU then
        raise ValueError(f"device={device!r}: TRITON_INTERPRET=1 runs the kernels on the CPU")
    impl = impl if isinstance(impl, Implementation) else as_implementation(impl)
    if impl.fused_moe is None:
        raise ValueError(f"impl: {impl.name} provides no fused_moe")
    cfg = _config(config)
    archs = list(archs or cfg.archs or ("gfx942", "gfx950"))
    layer_archs = engine.layer_archs(impl, archs)
    if layer_archs is None:
        from moe_ref import detect_arch

        layer_archs = [detect_arch()]
    rows = engine.run_layers(impl, cfg, device=device, archs=layer_archs, workers=workers, progress=progress)
    if not rows:
        raise ValueError("config: the matrix has no case: nothing was checked")
    return MoECheck(rows, cfg.seed)


def assert_conforms(result) -> None:
    """AssertionError with the oracle's diagnosis unless ``result`` (a QuantizerCheck, a MoECheck, a row
    of one, or a list of them) passes. Its frames are hidden from pytest's traceback: a failure shows
    the test's line and the diagnosis."""
    __tracebackhide__ = True
    items = list(result) if isinstance(result, list) else [result]
    if not items:
        raise AssertionError("moe-oracle: nothing was checked (an empty result)")
    bad = []
    for r in items:
        if not isinstance(r, (QuantizerCheck, dict)):
            raise TypeError(f"result: expected a QuantizerCheck, a MoECheck, a row of one or a list of them; got "
                            f"{type(r).__name__}")
        if isinstance(r, QuantizerCheck):
            if r.verdict != "PASS":
                bad.append(f"{r.kind} [{r.fmt}, {r.input_dtype}, seed {r.seed}]: {r.diagnosis()}")
        elif r.get("verdict") != "PASS":
            bad.append(_row_text(r))
    if bad:
        raise AssertionError(f"moe-oracle: {len(bad)} of {len(items)} checks fail\n  " + "\n  ".join(bad))
