"""The Python API: check a quantizer or a ``fused_moe`` and get structured results with the diagnosis;
one assertion helper that fails with the oracle's message."""

from __future__ import annotations

import dataclasses

from .config import QUICK, VerifyConfig
from .implementation import Implementation, as_implementation
from .quantizers import QuantizerCheck, check_quantizer

__all__ = ["check_quantizer", "check_moe", "assert_conforms", "QuantizerCheck"]


def _config(config) -> VerifyConfig:
    if config is None:
        return dataclasses.replace(QUICK, seed=0)
    if isinstance(config, VerifyConfig):
        return config.validated()
    return VerifyConfig.from_mapping(dict(config), source="config")


def check_moe(impl, config=None, *, device="cpu", archs=None, workers: int = 1) -> list[dict]:
    """Run a ``fused_moe``-shaped callable (or an :class:`Implementation`) over a case matrix (a
    VerifyConfig, a mapping of its keys, or None: the quick matrix, seed 0) -> one row per case, with
    ``verdict``, ``margin``, ``bound_at_worst`` and ``diagnosis`` (see ``moe_oracle.report.LEGEND``)."""
    from . import engine

    impl = impl if isinstance(impl, Implementation) else as_implementation(impl)
    if impl.fused_moe is None:
        raise ValueError(f"impl: {impl.name} provides no fused_moe")
    cfg = _config(config)
    archs = list(archs or cfg.archs or ("gfx942", "gfx950"))
    layer_archs = engine.layer_archs(impl, archs)
    if layer_archs is None:
        from moe_ref import detect_arch

        layer_archs = [detect_arch()]
    return engine.run_layers(impl, cfg, device=device, archs=layer_archs, workers=workers)


def assert_conforms(result) -> None:
    """AssertionError with the oracle's diagnosis unless ``result`` (a QuantizerCheck, a row of
    :func:`check_moe`, or a list of them) passes."""
    items = result if isinstance(result, list) else [result]
    bad = []
    for r in items:
        if isinstance(r, QuantizerCheck):
            if r.verdict != "PASS":
                bad.append(f"{r.kind} [{r.fmt}, {r.input_dtype}, seed {r.seed}]: {r.diagnosis()}")
        elif r.get("verdict") != "PASS":
            where = (f"M={r['M']} arch={r['arch']} env={r['env']} gate={r['gate_mode']} scale={r['scale_mode']} "
                     f"E/H/I/topk={r['E']}/{r['H']}/{r['I']}/{r['topk']}")
            why = r.get("error") or "; ".join(r["diagnosis"])
            bad.append(f"{where}: {why}" + (f" (margin {r['margin']:.3g})" if "margin" in r else ""))
    if bad:
        raise AssertionError(f"moe-oracle: {len(bad)} of {len(items)} checks fail\n  " + "\n  ".join(bad))
