"""What an implementation returns, checked against the contract before anything reads it: a mismatch
is "``fn`` returned X; the contract says Y" (:class:`ContractError`), never a crash inside the oracle
that reads as the implementation raising."""

from __future__ import annotations

__all__ = ["ContractError", "describe", "quantizer_pair", "layer_output", "float_values"]

_ONE_BYTE = ("uint8", "float8_e4m3fn", "float8_e4m3fnuz", "float8_e5m2", "float8_e5m2fnuz", "float8_e8m0fnu")
_SCALE_BYTES = ("uint8", "float8_e8m0fnu")
_FLOATS = ("bfloat16", "float16", "float32", "float64")


class ContractError(TypeError):
    """An implementation's return value is not what the contract allows (the message says both)."""


def _dtype(value) -> str | None:
    dtype = getattr(value, "dtype", None)
    return None if dtype is None else str(dtype).removeprefix("torch.")


def describe(value) -> str:
    """``a tensor float32 [32, 8]``, ``a list of 1``, ``None``: what came back, in a few words."""
    if value is None:
        return "None"
    dtype, shape = _dtype(value), getattr(value, "shape", None)
    if dtype is not None and shape is not None:
        kind = "a tensor" if type(value).__module__.startswith("torch") else "an array"
        return f"{kind} {dtype} {list(shape)}"
    if isinstance(value, (list, tuple)):
        return f"a {type(value).__name__} of {len(value)}"
    return f"a {type(value).__name__}"


def _fail(fn_name: str, got: str, wanted: str):
    raise ContractError(f"{fn_name} returned {got}; the contract says {wanted}")


def quantizer_pair(fn_name: str, kind: str, value, M: int, K: int):
    """(codes, scale) of a quantizer of ``kind`` for an [M, K] input, checked: a pair; codes one byte
    per element (uint8 or a float8 dtype, read as its bytes), [M, K/2] for fp4x2, [M, K] otherwise;
    MX scales e8m0 bytes [M, K/32]; per-token scales float32 with M values, per-tensor one value."""
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        _fail(fn_name, describe(value), "a pair (codes, scale)")
    codes, scale = value
    width = K // 2 if kind == "quantize_mxfp4" else K
    if _dtype(codes) not in _ONE_BYTE:
        _fail(fn_name, f"codes as {describe(codes)}", f"one byte per code: uint8 or a float8 dtype, [{M}, {width}]")
    if _numel(codes) != M * width:
        _fail(fn_name, f"codes as {describe(codes)}", f"[{M}, {width}] codes")
    if kind in ("quantize_mxfp4", "quantize_mxfp8"):
        if _dtype(scale) not in _SCALE_BYTES:
            _fail(fn_name, f"scale as {describe(scale)}", f"e8m0 bytes (uint8 or float8_e8m0fnu) [{M}, {K // 32}]")
        if _numel(scale) != M * (K // 32):
            _fail(fn_name, f"scale as {describe(scale)}", f"[{M}, {K // 32}] e8m0 scales (one per 32 values)")
    else:
        want = M if kind == "quantize_fp8_per_token" else 1
        if _dtype(scale) != "float32" or _numel(scale) != want:
            _fail(fn_name, f"scale as {describe(scale)}", f"float32 scale{'s' if want > 1 else ''} with {want} "
                                                          f"value{'s' if want > 1 else ''}")
    return codes, scale


def _numel(value) -> int:
    shape = getattr(value, "shape", None)
    if shape is None:
        return -1
    n = 1
    for d in shape:
        n *= int(d)
    return n


def float_values(fn_name: str, value, M: int, K: int, what: str):
    """A floating tensor of M * K values (a fake quantizer's or a dequantizer's output), checked."""
    if _dtype(value) not in _FLOATS or _numel(value) != M * K:
        _fail(fn_name, describe(value), f"a floating tensor {what} = [{M}, {K}]")
    return value


def layer_output(fn_name: str, value, M: int, H: int):
    """The [M, H] floating output of a ``fused_moe`` (a tensor, a ``(out, ...)`` tuple's first item,
    or a LayerResult's ``out``), checked."""
    from .implementation import LayerResult

    out = value.out if isinstance(value, LayerResult) else value[0] if isinstance(value, tuple) and value else value
    if _dtype(out) not in _FLOATS:
        _fail(fn_name, describe(value), f"a floating tensor [{M}, {H}] (bf16), a (out, ...) tuple or a LayerResult")
    if tuple(out.shape) != (M, H):
        _fail(fn_name, describe(out), f"[M={M}, H={H}]")
    return value if isinstance(value, LayerResult) else LayerResult(out)
