"""The contract for an implementation under test, and how a user's objects become one.

An implementation provides any subset of five callables, each with the signature, layouts and return
values of the project's own (``moe_kernels``):

- ``quantize_mxfp4(x [M, K] bf16/fp32, *, scale_mode=...) -> (fp4x2 uint8 [M, K/2], e8m0 uint8 [M, K/32])``
- ``quantize_mxfp8(x, *, fmt="e4m3fn", scale_mode=...) -> (codes uint8 [M, K], e8m0 uint8 [M, K/32])``
- ``quantize_fp8_per_token(x, *, fmt="e4m3fn") -> (codes uint8 [M, K], scale fp32 [M, 1])``
- ``quantize_fp8_per_tensor(x, *, fmt="e4m3fn") -> (codes uint8 [M, K], scale fp32 [1])``
- ``quantize_dequantize_mxfp4(x, *, scale_mode=...) -> values [M, K]`` (fake quantization; judged by value)
- ``dequantize_mxfp4(codes fp4x2 uint8 [M, K/2], scale e8m0 [M, K/32]) -> values [M, K]``
- ``moe_gemm_stage(hidden, w, w_scale, topk_weights, topk_ids, *, mul_routed_weight, out=None)``
  ``-> bf16 [M, topk, N]``: one grouped GEMM without activation (``moe_oracle.stage``)
- ``fused_moe(hidden, w1, w1_scale, w2, w2_scale, topk_weights, topk_ids, *, gate_mode, bias1, bias2, ...)``
  ``-> out bf16 [M, H]`` (or a :class:`LayerResult`, which may also say which activation path ran)
- ``select_act_dtype(M, *, arch, gate_mode, env) -> "bf16" | "fp4x2" | "fp8"`` (its own dispatch)

A dequantizer is swept over every e2m1 code at every e8m0 byte (``moe_oracle.decodes``).

Keyword arguments a callable does not name are not passed (``scale_mode``, ``fmt``, ``arch``,
``env``, ``poison``, ``bias1``, ...; ``**kwargs`` names none); an ``env`` it does not name is applied
to ``os.environ`` for the call, as a process environment would be. Codes may come back as float8 tensors (viewed as bytes), scales as
float8_e8m0fnu or uint8, and transposed or strided views: they are compared by value.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import inspect
import os
import types
from collections.abc import Callable, Mapping

__all__ = ["Implementation", "Quantizer", "LayerResult", "accepts", "QUANTIZER_KINDS", "as_implementation", "call_with",
           "applied_env", "takes_keyword"]

QUANTIZER_KINDS = ("quantize_mxfp4", "quantize_mxfp8", "quantize_fp8_per_token", "quantize_fp8_per_tensor",
                   "quantize_dequantize_mxfp4", "dequantize_mxfp4")
_CALLABLES = (*QUANTIZER_KINDS, "moe_gemm_stage", "fused_moe", "select_act_dtype")


@dataclasses.dataclass(frozen=True)
class LayerResult:
    """What a richer ``fused_moe`` adapter returns: the output, and what it knows of its own run."""

    out: object  # [M, H] tensor
    act_dtype: str | None = None  # the activation path it took ("bf16", "fp4x2", "fp8"), if it says
    a_q: object = None  # stage-1 input as quantized (fp4x2 / e4m3 codes, bf16), if it exposes it
    a_scale: object = None  # its e8m0 scales [M, H/32]


@dataclasses.dataclass(frozen=True)
class Quantizer:
    """One quantizer to check: ``kind`` names its contract (one of QUANTIZER_KINDS); ``scale_modes``
    the modes it can be asked for through ``scale_mode=`` (None: any; () : its one fixed mode,
    ``fixed_mode``); ``note``: what the adapter had to do to run it."""

    label: str
    kind: str
    fn: Callable
    scale_modes: tuple[str, ...] | None = None
    fixed_mode: str = "round_up"
    fp8_formats: tuple[str, ...] = ("e4m3fn",)
    note: str = ""
    input_dtypes: tuple[str, ...] = ("bfloat16", "float32")


@dataclasses.dataclass(frozen=True)
class Implementation:
    """An implementation under test. ``scale_modes``: the modes its MX quantizers can be asked for
    (None: any, through ``scale_mode=``); ``declared``: conventions it claims (e.g. {"ties": "even"}),
    checked against what is measured; ``archs``: the arch profiles it can be run at (None: any, through
    ``arch=``; else only these, e.g. the device's own); ``fixed_path``: a layer with one activation path
    and no dispatch (it is judged on that path's reference; the selector's choice is noted); ``note``:
    one line for the report."""

    name: str
    quantize_mxfp4: Callable | None = None
    quantize_mxfp8: Callable | None = None
    quantize_fp8_per_token: Callable | None = None
    quantize_fp8_per_tensor: Callable | None = None
    quantize_dequantize_mxfp4: Callable | None = None
    dequantize_mxfp4: Callable | None = None
    moe_gemm_stage: Callable | None = None
    fused_moe: Callable | None = None
    select_act_dtype: Callable | None = None
    scale_modes: tuple[str, ...] | None = None
    fp8_formats: tuple[str, ...] = ("e4m3fn",)
    declared: Mapping[str, str] = dataclasses.field(default_factory=dict)
    archs: tuple[str, ...] | None = None
    version: str = ""
    note: str = ""
    extra_quantizers: tuple[Quantizer, ...] = ()
    fixed_path: str | None = None  # the one activation path its layer implements (no dispatch of its own)

    def provides(self) -> list[str]:
        return [n for n in _CALLABLES if getattr(self, n) is not None] + [q.label for q in self.extra_quantizers]

    def quantizers(self) -> list[Quantizer]:
        """Every quantizer to check: the contract's callables, then the extra ones."""
        found = []
        for kind in QUANTIZER_KINDS:
            fn = getattr(self, kind)
            if fn is None:
                continue
            takes_mode = kind in ("quantize_mxfp4", "quantize_mxfp8", "quantize_dequantize_mxfp4") and takes_keyword(
                fn, "scale_mode")
            found.append(Quantizer(kind, kind, fn, self.scale_modes if takes_mode else (),
                                   self.declared.get("scale_mode", "round_up"), self.fp8_formats))
        return found + list(self.extra_quantizers)


def as_implementation(obj, name: str | None = None) -> Implementation:
    """An :class:`Implementation` from what a user has: one already, a module or object with attributes
    named like ours (any subset), a mapping of those names, or one callable (taken as ``fused_moe``)."""
    if isinstance(obj, Implementation):
        return obj
    if isinstance(obj, Mapping):
        unknown = sorted(set(obj) - set(_CALLABLES))
        if unknown:
            raise ValueError(f"impl: unknown callable name(s) {unknown}; expected some of {list(_CALLABLES)}")
        found = dict(obj)
    elif callable(obj) and not isinstance(obj, (types.ModuleType, type)):
        found = {"fused_moe": obj}
    else:
        found = {n: getattr(obj, n) for n in _CALLABLES if callable(getattr(obj, n, None))}
    if not found:
        raise ValueError(f"impl: {obj!r} provides none of {list(_CALLABLES)}")
    label = name or getattr(obj, "__name__", None) or type(obj).__name__
    return Implementation(label, **found)


def _import(spec: str, dotted: str):
    """The module, or a ValueError naming ``spec``: it cannot be found, or its own code raised on import
    (a SyntaxError names the file and the line)."""
    try:
        return importlib.import_module(dotted)
    except ImportError as exc:
        raise ValueError(f"impl={spec!r}: cannot import {dotted}: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - the user's module: whatever it raises is reported, not a traceback
        raise ValueError(f"impl={spec!r}: importing {dotted} raised {type(exc).__name__}: {exc}") from exc


def _positional_capacity(fn) -> int:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return 99
    if any(p.kind is p.VAR_POSITIONAL for p in params):
        return 99
    return sum(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in params)


def load_spec(spec: str) -> Implementation:
    """``module`` (a module with any of the contract's names) or ``module:attr`` (attr an
    Implementation, a factory returning one, a module or object with the contract's names, a callable
    named after one of them, or a fused_moe-shaped callable)."""
    module_name, sep, attr = spec.partition(":")
    if not module_name or (sep and not attr):
        raise ValueError(f"impl={spec!r}: expected a registered name, a module, or module:attr")
    obj = _import(spec, module_name)
    for i, part in enumerate(attr.split(".") if attr else []):
        if hasattr(obj, part):
            obj = getattr(obj, part)
        elif isinstance(obj, types.ModuleType) and hasattr(obj, "__path__"):  # a submodule its package did not import
            obj = _import(spec, f"{obj.__name__}.{part}")
        else:
            raise ValueError(f"impl={spec!r}: {'.'.join([module_name, *attr.split('.')[:i]])} has no attribute {part}")
    if inspect.isfunction(obj) and not inspect.signature(obj).parameters:  # a factory
        obj = obj()
    name = attr.split(".")[-1] if attr else ""
    if callable(obj) and not isinstance(obj, (types.ModuleType, type, Implementation)):
        if name in _CALLABLES:
            return Implementation(spec, **{name: obj})
        if _positional_capacity(obj) < 7:
            raise ValueError(f"impl={spec!r}: {name} takes {_positional_capacity(obj)} positional argument(s), so it "
                             f"is not a fused_moe (hidden, w1, w1_scale, w2, w2_scale, topk_weights, topk_ids); name "
                             f"it after the contract ({', '.join(_CALLABLES)}) or point --impl at its module")
    return as_implementation(obj, name=spec)


def accepts(fn, name: str) -> bool:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == name or p.kind is p.VAR_KEYWORD for p in params)


@contextlib.contextmanager
def applied_env(env: Mapping[str, str] | None):
    """``os.environ`` with ``env`` set for the duration (restored after, also on error)."""
    saved = {k: os.environ.get(k) for k in (env or {})}
    try:
        os.environ.update(env or {})
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def takes_keyword(fn, name: str) -> bool:
    """``fn`` names the parameter ``name`` (``**kwargs`` does not count)."""
    try:
        return name in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def call_with(fn, *args, env: Mapping[str, str] | None = None, **kwargs):
    """Call ``fn`` with the keyword arguments it names; ``**kwargs`` names none (a ``def f(*a, **k)``
    wrapper is not handed ``bias1`` it would pass on to a function without it: name the keywords to
    get them). An ``env`` it does not name is applied to ``os.environ`` for the call."""
    passed = {k: v for k, v in kwargs.items() if takes_keyword(fn, k)}
    if env is not None and takes_keyword(fn, "env"):
        return fn(*args, env=env, **passed)
    with applied_env(env):
        return fn(*args, **passed)
