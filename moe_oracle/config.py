"""The report's configuration: the case matrix (shapes, M, archs, envs, gate and scale modes), from
defaults or a JSON/TOML file, validated where it is read."""

from __future__ import annotations

import dataclasses
import difflib
import json
from pathlib import Path

import emulation as em
from moe_ref.env import ENV_VARS, bound_points
from moe_ref.selector import ACT_DTYPES, normalize_arch

__all__ = ["VerifyConfig", "DEFAULT_CPU", "DEFAULT_GPU", "QUICK", "DEFAULT_ARCHS", "load_config"]

DEFAULT_ARCHS = ("gfx942", "gfx950")


def seed_problem(flag: str, seed: int | None) -> str | None:
    """A command line's seed (``--seed``, ``--moe-oracle-seed``): None when absent or in [0, 2^63)."""
    if seed is not None and not 0 <= seed < 2**63:
        return f"{flag} must be an integer in [0, 2**63), got {seed}"
    return None


@dataclasses.dataclass(frozen=True)
class VerifyConfig:
    # the second shape spans several K tiles of the usual sizes (64, 128) with a partial last one
    shapes: tuple = ({"E": 4, "H": 64, "I": 64, "topk": 2}, {"E": 4, "H": 288, "I": 96, "topk": 2})
    M: tuple = (1, *bound_points())  # both sides of every selector bound (moe_ref.env)
    archs: tuple | None = None  # None: DEFAULT_ARCHS and the detected device's arch
    envs: tuple = ({}, {"AITER_MOE_FORCE_BF16_ACT": "1"})
    gate_modes: tuple = ("separated", "interleave")
    scale_modes: tuple = tuple(m.value for m in em.ScaleMode)  # each for the fp4x2 path (emulation's modes)
    seed: int | None = None  # None: a fresh seed per run, printed and saved in the report
    tolerance_scale: float = 1.0  # < 1 tightens the derived bound (to demonstrate failures)
    reference_act_dtype: str | None = None  # compare against this path's reference instead of the selected one
    impl: str = "ours"  # the implementation under test (moe_oracle.implementations)
    guard_bands: bool = True  # one more run per case with poisoned slack around every input (moe_oracle.guard)

    @classmethod
    def from_mapping(cls, data: dict, *, source: str = "config") -> VerifyConfig:
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - fields)
        if unknown:
            raise ValueError(f"{source}: unknown key(s) {unknown}; expected some of {sorted(fields)}")
        kw = {}
        for key, value in data.items():
            if key == "seed":
                if not isinstance(value, int) or isinstance(value, bool):
                    raise ValueError(f"{source}: seed must be an integer, got {value!r}")
            elif key == "tolerance_scale":
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < float("inf"):
                    raise ValueError(f"{source}: tolerance_scale must be a finite number > 0, got {value!r}")
            elif key == "reference_act_dtype":
                if value is not None and value not in ACT_DTYPES:
                    raise ValueError(f"{source}: reference_act_dtype must be one of {list(ACT_DTYPES)}, got {value!r}")
            elif key == "guard_bands":
                if not isinstance(value, bool):
                    raise ValueError(f"{source}: guard_bands must be true or false, got {value!r}")
            elif key == "impl":
                if not isinstance(value, str) or not value:
                    raise ValueError(f"{source}: impl must be a name or module:attr string, got {value!r}")
            else:
                if not isinstance(value, list) or not value:
                    raise ValueError(f"{source}: {key} must be a non-empty list, got {value!r}")
                value = tuple(value)
            kw[key] = value
        return cls(**kw).validated(source)

    def validated(self, source: str = "config") -> VerifyConfig:
        """This config with arch names normalized; ValueError naming the key for anything invalid."""
        for s in self.shapes:
            if not isinstance(s, dict) or set(s) != {"E", "H", "I", "topk"}:
                raise ValueError(f"{source}: each shape needs exactly E, H, I, topk; got {s!r}")
            if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in s.values()):
                raise ValueError(f"{source}: shape {s} needs positive integers")
            if s["H"] % 32 or s["I"] % 32:
                raise ValueError(f"{source}: shape {s} has H or I not a multiple of 32")
            if s["topk"] > s["E"]:
                raise ValueError(f"{source}: shape {s} has topk > E")
        for m in self.M:
            if not isinstance(m, int) or isinstance(m, bool) or m < 0:
                raise ValueError(f"{source}: M values must be integers >= 0, got {m!r}")
        known = sorted({n for v in ENV_VARS.values() for n in (v.name, v.legacy) if n})
        for env in self.envs:
            if not isinstance(env, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
                raise ValueError(f"{source}: envs must be mappings of variable -> string, got {env!r}")
            for name in env:
                if name not in known:
                    close = difflib.get_close_matches(name, known, n=1)
                    raise ValueError(f"{source}: envs: {name!r} is not a variable the selector reads"
                                     + (f" (did you mean {close[0]!r}?)" if close else "") + f"; expected one of {known}")
        for mode in self.scale_modes:
            em.ScaleMode.parse(mode, arg=f"{source}: scale_modes")
        for gm in self.gate_modes:
            if gm not in ("separated", "interleave"):
                raise ValueError(f"{source}: gate_modes: {gm!r} is not valid; expected 'separated' or 'interleave'")
        archs = self.archs
        if archs is not None:
            try:
                archs = tuple(dict.fromkeys(normalize_arch(a) for a in archs))
            except ValueError as exc:
                raise ValueError(f"{source}: archs: {exc}") from None
        return dataclasses.replace(self, archs=archs)


DEFAULT_CPU = VerifyConfig()
QUICK = VerifyConfig(M=(1, 64, 256, 512), envs=({},), scale_modes=("round_up", "even"))
DEFAULT_GPU = VerifyConfig(shapes=({"E": 32, "H": 2880, "I": 2880, "topk": 4},), M=(1, 64, *bound_points()))


def load_config(path: str, flag: str = "--config") -> VerifyConfig:
    """The config file at ``path``; errors name it as ``flag`` (the option the user typed)."""
    p = Path(path)
    if not p.exists():
        raise ValueError(f"{flag}: no file {path}")
    text = p.read_text()
    if p.suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{flag} {path}: invalid JSON: {exc}") from None
    elif p.suffix == ".toml":
        try:
            import tomllib
        except ImportError:  # Python 3.10
            import tomli as tomllib
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ValueError(f"{flag} {path}: invalid TOML: {exc}") from None
    else:
        raise ValueError(f"{flag} {path}: expected a .json or .toml file")
    if not isinstance(data, dict):
        raise ValueError(f"{flag} {path}: expected a table/object at the top level")
    return VerifyConfig.from_mapping(data, source=f"{flag} {path}")
