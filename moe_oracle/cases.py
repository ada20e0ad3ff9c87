"""A case of the layer matrix (one call the oracle makes) and the typed keys of the references' cache."""

from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass

from moe_ref import Decision, MoESpec, select_activation_dtype

from .rows import CaseColumns

__all__ = ["LayerCase", "cases", "LayerKey", "ProblemKey", "RefKey", "DeviceKey"]


@dataclass(frozen=True)
class LayerCase:
    """``shape`` (E, H, I, topk), the token count M, the arch profile and environment the selector is
    asked with, and the call's gate layout and scale mode."""

    shape: dict
    M: int
    arch: str
    env: dict
    gate_mode: str
    scale_mode: str

    @property
    def shape_key(self) -> tuple:
        return tuple(self.shape.items())

    @property
    def group(self) -> tuple:
        """The cases that share a problem (one layer, one M's tokens) and so their references."""
        return self.shape_key, self.M

    @property
    def spec(self) -> MoESpec:
        """The call it makes: its gate layout and scale mode, the rest fused_moe's defaults."""
        return MoESpec(gate_mode=self.gate_mode, scale_mode=self.scale_mode)

    @functools.cached_property
    def decision(self) -> Decision:
        """The selector's answer for this case: the path it is judged on (computed once)."""
        return select_activation_dtype(self.M, arch=self.arch, gate_mode=self.gate_mode, env=self.env)

    @property
    def name(self) -> str:
        """A one-line id: E..-H..-I..-k..-M..-arch-gate_mode-scale_mode[-env]."""
        s = self.shape
        env = "-".join(f"{k}={v}" for k, v in self.env.items())
        return (f"E{s['E']}-H{s['H']}-I{s['I']}-k{s['topk']}-M{self.M}-{self.arch}-{self.gate_mode}-{self.scale_mode}"
                + (f"-{env}" if env else ""))

    def columns(self) -> CaseColumns:
        """The case's columns of a report row."""
        s = self.shape
        return CaseColumns(E=s["E"], H=s["H"], I=s["I"], topk=s["topk"], M=self.M, arch=self.arch, env=self.env,
                           gate_mode=self.gate_mode, scale_mode=self.scale_mode)


def cases(cfg, archs, gate_modes=None):
    """The product of the matrix; the extra scale modes run on fp4x2 cases of the first arch and env."""
    for shape, M, arch, env, gate_mode in itertools.product(cfg.shapes, cfg.M, archs, cfg.envs,
                                                            gate_modes or cfg.gate_modes):
        first = LayerCase(shape, M, arch, env, gate_mode, cfg.scale_modes[0])
        every_mode = first.decision.dtype == "fp4x2" and arch == archs[0] and env == cfg.envs[0]
        yield first
        for mode in (cfg.scale_modes[1:] if every_mode else ()):
            yield LayerCase(shape, M, arch, env, gate_mode, mode)


# The references' cache (``moe_oracle.references``): one key type per kind of entry.
@dataclass(frozen=True)
class LayerKey:
    seed: int
    shape: tuple
    with_bias: bool


@dataclass(frozen=True)
class ProblemKey:
    seed: int
    M: int
    shape: tuple
    with_bias: bool


@dataclass(frozen=True)
class RefKey:
    seed: int
    M: int
    shape: tuple
    act_dtype: str
    spec: MoESpec  # the case's call, with a diagnosis's convention where one is tried
    mma_k: int | None
    with_bias: bool


@dataclass(frozen=True)
class DeviceKey:
    w1_id: int  # the host layer's w1 (checked by identity on use)
    device: str
