"""The one activation-dtype selector for MoE with MXFP4 / MXFP8 weights.

Kernels' dispatch and every test import :func:`select_activation_dtype`; nobody re-derives it. The
rules are data (:data:`DECISION_TABLE`): the first rule whose condition matches decides; inside a
rule the overrides are tried in order and the first that fires gives the dtype, else the rule's
default. ``python -m moe_ref`` prints the table from the same data.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

from .env import ENV_VARS, read_env
from .paths import ACTIVATION_PATHS

__all__ = [
    "ACTIVATIONS", "GATE_MODES", "WEIGHT_DTYPES", "QUANT_TYPES", "ACT_DTYPES", "Override", "Rule",
    "DECISION_TABLE", "Decision", "select_activation_dtype", "detect_arch", "format_decision_table", "AMD_ARCHS",
    "normalize_arch", "known_archs_text",
]

ACTIVATIONS = ("swiglu", "silu", "gelu")
GATE_MODES = ("separated", "interleave")
WEIGHT_DTYPES = ("fp4x2", "fp8", "bf16")
QUANT_TYPES = ("per_1x32", "per_tensor", "per_token", "per_1x128", "no")
ACT_DTYPES = tuple(ACTIVATION_PATHS)  # the selector's answers: the activation paths' dtypes (moe_ref.paths)


@dataclass(frozen=True)
class Override:
    """One way a rule's default gives way: ``kind`` is "flag" (env bool set), "arch_not_in"
    (arch outside ``archs``) or "m_below" (M < the env bound)."""

    kind: str
    dtype: str
    env: str | None = None
    archs: tuple[str, ...] = ()

    def describe(self) -> str:
        if self.kind == "flag":
            return f"{self.env}=1 -> {self.dtype}"
        if self.kind == "arch_not_in":
            return f"arch not in {{{', '.join(self.archs)}}} -> {self.dtype}"
        return f"M < {self.env} (default {ENV_VARS[self.env].default}) -> {self.dtype}"


@dataclass(frozen=True)
class Rule:
    """Matches when any alternative in ``when`` matches (every field in it has an allowed value)."""

    number: int
    when: tuple[tuple[tuple[str, tuple[str, ...]], ...], ...]
    default: str
    overrides: tuple[Override, ...] = ()

    def matches(self, facts: Mapping[str, str]) -> bool:
        return any(all(facts[field] in allowed for field, allowed in alt) for alt in self.when)

    def describe_when(self) -> str:
        alts = [" and ".join(f"{f} in {{{', '.join(v)}}}" if len(v) > 1 else f"{f}={v[0]}" for f, v in alt)
                for alt in self.when]
        return " or ".join(f"({a})" if len(alts) > 1 else a for a in alts)


_FORCE = Override("flag", "bf16", env="AITER_MOE_FORCE_BF16_ACT")

DECISION_TABLE: tuple[Rule, ...] = (
    Rule(1, ((("weight_dtype", ("fp8",)),),), "fp8"),
    Rule(2, ((("weight_dtype", ("fp4x2",)), ("arch", ("gfx1250",))),), "fp4x2",
         (Override("flag", "fp8", env="AITER_FORCE_A8W4"),)),
    Rule(3, ((("weight_dtype", ("fp4x2",)), ("activation", ("swiglu",)), ("gate_mode", ("separated",))),), "fp4x2",
         (_FORCE, Override("m_below", "bf16", env="GPTOSS_SWIGLU_MXFP4_BF16_BOUND"))),
    Rule(4, ((("weight_dtype", ("fp4x2",)), ("activation", ("swiglu",))),
             (("weight_dtype", ("fp4x2",)), ("gate_mode", ("interleave",)))), "fp8",
         (_FORCE, Override("arch_not_in", "bf16", archs=("gfx950",)),
          Override("m_below", "bf16", env="AITER_MOE_BF16_FP8_BOUND"))),
    Rule(5, ((("weight_dtype", ("fp4x2",)),),), "fp4x2"),
    Rule(6, ((("weight_dtype", ("bf16",)),),), "bf16"),
)


@dataclass(frozen=True)
class Decision:
    """What the selector chose: ``dtype``, the ``rule`` number that fired, the ``override`` that fired
    inside it (None: the rule's default) and a one-line ``reason``."""

    dtype: str
    rule: int
    override: str | None
    reason: str
    M: int
    arch: str


def _check(value, valid, arg):
    if value not in valid:
        raise ValueError(f"{arg}={value!r} is not valid; expected one of {list(valid)}")


# Arch names the selector knows: AMD targets by gfx name, NVIDIA as sm<major><minor> (what
# ``detect_arch`` returns for any CUDA device), and "cpu". Anything else is a typo, not an arch.
AMD_ARCHS = ("gfx90a", "gfx942", "gfx950", "gfx1100", "gfx1101", "gfx1200", "gfx1201", "gfx1250")
_NVIDIA_ARCH = re.compile(r"sm[1-9][0-9]{1,2}a?")


def known_archs_text() -> str:
    return f"{', '.join(AMD_ARCHS)}, sm<NN> (NVIDIA, e.g. sm90, sm100) or cpu"


def normalize_arch(arch: str) -> str:
    """"gfx950:sramecc+:xnack-" -> "gfx950"; lower-case; ValueError for a non-string, empty or unknown arch."""
    if not isinstance(arch, str) or not arch.split(":")[0].strip():
        raise ValueError(f"arch={arch!r} is not valid; expected one of {known_archs_text()}")
    name = arch.split(":")[0].strip().lower()
    if name not in AMD_ARCHS and name != "cpu" and not _NVIDIA_ARCH.fullmatch(name):
        raise ValueError(f"arch={arch!r} is not a known arch; expected one of {known_archs_text()}")
    return name


def detect_arch() -> str:
    """The running device's arch: ROCm gcnArchName without features, CUDA "smXY", else "cpu"."""
    try:
        import torch
    except ImportError:
        return "cpu"
    if os.environ.get("TRITON_INTERPRET") == "1" or not torch.cuda.is_available():
        return "cpu"
    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    if getattr(torch.version, "hip", None):
        return normalize_arch(props.gcnArchName)
    return f"sm{props.major}{props.minor}"


def _fire(ov: Override, M: int, arch: str, env) -> tuple[bool, str]:
    if ov.kind == "flag":
        value, source = read_env(ov.env, env)
        return bool(value), f"{ov.env}={int(value)}" + ("" if source == ov.env else f" ({source})")
    if ov.kind == "arch_not_in":
        fired = arch not in ov.archs
        return fired, f"arch={arch} {'not in' if fired else 'in'} {{{', '.join(ov.archs)}}}"
    bound, source = read_env(ov.env, env)
    name = ov.env if source in (ov.env, "default") else source
    fired = M < bound
    return fired, f"M={M} < {name}={bound}{' (default)' if source == 'default' else ''} is {str(fired).lower()}"


def select_activation_dtype(M: int, *, arch: str, weight_dtype: str = "fp4x2", activation: str = "swiglu",
                            gate_mode: str = "separated", quant_type: str = "per_1x32",
                            env: Mapping[str, str] | None = None) -> Decision:
    """Choose the activation dtype ("bf16", "fp4x2" or "fp8") for a MoE call with ``M`` tokens.

    ``env`` is read now (default ``os.environ``); invalid values raise ValueError naming the variable.
    """
    if isinstance(M, bool) or not isinstance(M, int) or M < 0:
        raise ValueError(f"M={M!r} is not valid; expected an integer >= 0 (the raw token count)")
    arch = normalize_arch(arch)
    _check(weight_dtype, WEIGHT_DTYPES, "weight_dtype")
    _check(activation, ACTIVATIONS, "activation")
    _check(gate_mode, GATE_MODES, "gate_mode")
    _check(quant_type, QUANT_TYPES, "quant_type")
    if weight_dtype == "fp4x2" and quant_type != "per_1x32":
        raise ValueError(f"quant_type={quant_type!r} is not valid for fp4x2 (MXFP4) weights; expected 'per_1x32'")
    for name in ENV_VARS:  # every knob is validated on every call, also those this rule does not read
        read_env(name, env)
    facts = {"weight_dtype": weight_dtype, "arch": arch, "activation": activation, "gate_mode": gate_mode}
    rule = next(r for r in DECISION_TABLE if r.matches(facts))
    checked = []
    for ov in rule.overrides:
        fired, why = _fire(ov, M, arch, env)
        checked.append(why)
        if fired:
            return Decision(ov.dtype, rule.number, ov.kind, f"rule {rule.number}: {why} -> {ov.dtype}", M, arch)
    why = "; ".join(checked) if checked else rule.describe_when()
    return Decision(rule.default, rule.number, None, f"rule {rule.number}: {why} -> {rule.default}", M, arch)


def format_decision_table() -> str:
    """The decision table as Markdown, generated from :data:`DECISION_TABLE`."""
    lines = ["| rule | when | first override that fires | otherwise |", "|---|---|---|---|"]
    for r in DECISION_TABLE:
        ovs = "; then ".join(o.describe() for o in r.overrides) or "-"
        lines.append(f"| {r.number} | {r.describe_when()} | {ovs} | {r.default} |")
    lines += ["", "Environment (read at every call; invalid values raise ValueError):"]
    for v in ENV_VARS.values():
        legacy = f" (legacy name {v.legacy} honoured when unset)" if v.legacy else ""
        kind = "0/1/true/false" if v.kind == "bool" else "integer >= 0"
        lines.append(f"- {v.name} ({kind}, default {int(v.default)}): {v.doc}{legacy}")
    return "\n".join(lines)
