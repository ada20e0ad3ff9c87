"""The registry of implementations by name: ``ours`` (moe_kernels), the peers (loaded only when
asked: ``aiter-triton``, ``triton-kernels``, and the MXFP4 libraries of ``moe_oracle.ecosystem``:
``torchao``, ``amd-quark``, ``sglang``, ``vllm``, ``triton-kernels-torch``, ``aiter-torch``, ``flashinfer``), or any
``module:attr``."""

from __future__ import annotations

import importlib
import importlib.util

from .implementation import Implementation, LayerResult, load_spec

__all__ = ["REGISTRY", "resolve", "ours"]


def ours() -> Implementation:
    """The project's own Triton kernels, through the same contract as any other implementation."""
    import moe_kernels as mk

    def fused_moe(*args, gate_mode="separated", bias1=None, bias2=None, scale_mode="round_up", arch=None, env=None,
                  poison=False):
        out, run = mk.fused_moe(*args, gate_mode=gate_mode, bias1=bias1, bias2=bias2, scale_mode=scale_mode,
                                arch=arch, env=env, return_trace=True, poison=poison)
        return LayerResult(out, act_dtype=run.plan.act_dtype, a_q=run.a_q, a_scale=run.a_scale)

    return Implementation(
        "ours", quantize_mxfp4=mk.quantize_mxfp4, quantize_mxfp8=mk.quantize_mxfp8,
        quantize_fp8_per_token=mk.quantize_fp8_per_token, fused_moe=fused_moe, fp8_formats=("e4m3fn", "e4m3fnuz"),
        declared={"ties": "even"}, note="moe_kernels (this package's Triton kernels)")


def _aiter() -> Implementation:
    from .adapters import aiter_triton

    return aiter_triton.implementation()


def _triton_kernels() -> Implementation:
    from .adapters import triton_kernels

    return triton_kernels.implementation()


def _peer(module: str, loader: str):
    """A peer library's loader (``moe_oracle.adapters.<module>.<loader>``), imported when asked for."""

    def load() -> Implementation:
        return getattr(importlib.import_module(f".adapters.{module}", __package__), loader)()

    return load


REGISTRY = {"ours": ours, "aiter-triton": _aiter, "aiter": _aiter, "triton-kernels": _triton_kernels,
            "torchao": _peer("mx_peers", "torchao"), "amd-quark": _peer("quark_vllm", "quark"),
            "sglang": _peer("mx_peers", "sglang"), "vllm": _peer("quark_vllm", "vllm"),
            "triton-kernels-torch": _peer("mx_peers", "triton_kernels_refs"),
            "aiter-torch": _peer("mx_peers", "aiter_torch"), "flashinfer": _peer("flashinfer", "flashinfer")}


def resolve(spec) -> Implementation:
    """A registered name, a ``module:attr`` string, or an object :func:`as_implementation` accepts."""
    if not isinstance(spec, str):
        from .implementation import as_implementation

        return as_implementation(spec)
    if not spec.strip():
        raise ValueError(f"impl={spec!r} is empty; expected one of {sorted(REGISTRY)}, a module or module:attr")
    if spec in REGISTRY:
        return REGISTRY[spec]()
    if ":" in spec:
        return load_spec(spec)
    if importlib.util.find_spec(spec.split(".")[0]) is not None:
        return load_spec(spec)  # a module with any of the contract's names
    raise ValueError(f"impl={spec!r} is not known and is no importable module; expected one of {sorted(REGISTRY)}, "
                     f"a module or module:attr (the current folder is importable)")
