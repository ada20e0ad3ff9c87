"""The environment knobs of the activation-dtype selector, parsed strictly at call time."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from emulation.validate import check_mapping_of_str, parse_ascii_uint

__all__ = ["EnvVar", "ENV_VARS", "read_env", "bound_points"]

_TRUE, _FALSE = ("1", "true"), ("0", "false")


@dataclass(frozen=True)
class EnvVar:
    name: str
    kind: str  # "bool" or "bound" (an integer >= 0)
    default: bool | int
    legacy: str | None = None  # an older name honoured when ``name`` is unset
    doc: str = ""


ENV_VARS: dict[str, EnvVar] = {
    v.name: v
    for v in (
        EnvVar("AITER_MOE_FORCE_BF16_ACT", "bool", False, doc="force bf16 activations on both SwiGLU rules"),
        EnvVar("AITER_FORCE_A8W4", "bool", False, doc="gfx1250: fp8 activations with fp4x2 weights"),
        EnvVar("GPTOSS_SWIGLU_MXFP4_BF16_BOUND", "bound", 256, doc="M below this -> bf16 (SwiGLU, separated)"),
        EnvVar("AITER_MOE_BF16_FP8_BOUND", "bound", 512, legacy="AITER_BF16_FP8_MOE_BOUND",
               doc="M below this -> bf16 (SwiGLU interleaved / interleave layout)"),
    )
}


def bound_points() -> tuple[int, ...]:
    """M on both sides of every default bound of the selector's knobs (M = bound - 1 and M = bound):
    what a matrix must hold to see each bound, read from the knobs, never retyped."""
    return tuple(sorted({m for v in ENV_VARS.values() if v.kind == "bound" for m in (v.default - 1, v.default)}))


def _parse(var: EnvVar, name: str, raw: str):  # raw is a str: os.environ's, or checked by check_mapping_of_str
    text = raw.strip().lower()
    if var.kind == "bool":
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
        raise ValueError(f"environment variable {name}={raw!r} is invalid: expected 0, 1, true or false")
    return parse_ascii_uint(raw, name)


def read_env(name: str, env: Mapping[str, str] | None = None) -> tuple[bool | int, str]:
    """Value of knob ``name`` from ``env`` (default: ``os.environ``, read now) and where it came from.

    Returns ``(value, source)`` where source is the variable's name, its legacy name, or "default".
    """
    var = ENV_VARS[name]
    env = os.environ if env is None else check_mapping_of_str(env)
    raw = env.get(var.name)
    legacy_raw = env.get(var.legacy) if var.legacy else None
    value = _parse(var, var.name, raw) if raw is not None else None
    legacy_value = _parse(var, var.legacy, legacy_raw) if legacy_raw is not None else None
    if value is not None and legacy_value is not None and value != legacy_value:
        raise ValueError(
            f"environment variables {var.name}={raw!r} and {var.legacy}={legacy_raw!r} disagree; "
            f"set only {var.name}"
        )
    if value is not None:
        return value, var.name
    if legacy_value is not None:
        return legacy_value, var.legacy
    return var.default, "default"
