"""Attributing fp8 differences to the Triton interpreter: its float8 casts are not hardware-faithful
(NUMERICS.md section 5), so a foreign kernel that casts with ``.to(float8)`` differs from the
emulation under the interpreter even when its arithmetic is right. The check is the cast itself:
the interpreter's conversion of the right pre-cast values, compared with the kernel's bytes."""

from __future__ import annotations

import functools
import os

import numpy as np

__all__ = ["interpreter_active", "interpreter_cast", "explained_by_interpreter", "interpreter_bf16",
           "bf16_explained_by_interpreter"]


def interpreter_active() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


@functools.cache
def _bf16_kernel():
    import triton
    import triton.language as tl

    @triton.jit
    def cast(x_ptr, y_ptr, n, BLOCK: tl.constexpr):
        i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        tl.store(y_ptr + i, tl.load(x_ptr + i, mask=i < n).to(tl.bfloat16), mask=i < n)

    return cast


def interpreter_bf16(values: np.ndarray) -> np.ndarray:
    """The interpreter's fp32 -> bf16 ``.to(tl.bfloat16)`` of ``values``, as float64."""
    import torch

    x = torch.from_numpy(np.ascontiguousarray(values, np.float32).reshape(-1))
    y = torch.empty(x.numel(), dtype=torch.bfloat16)
    if x.numel():
        _bf16_kernel()[((x.numel() + 1023) // 1024,)](x, y, x.numel(), BLOCK=1024)
    return y.float().numpy().astype(np.float64).reshape(np.shape(values))


def bf16_explained_by_interpreter(ref_f32: np.ndarray, fp32_bound: np.ndarray, got: np.ndarray,
                                  outside: np.ndarray) -> str | None:
    """A note when every output outside the bound lies between the interpreter's own bf16 casts of
    ref - bound and ref + bound (the kernel's fp32 result is in that interval, and the cast is monotonic)."""
    if not interpreter_active() or not outside.any():
        return None
    r, b = ref_f32[outside].astype(np.float64), fp32_bound[outside]
    lo, hi = interpreter_bf16((r - b).astype(np.float32)), interpreter_bf16((r + b).astype(np.float32))
    g = got[outside]
    if np.all((g >= lo) & (g <= hi)):
        return (f"all {int(outside.sum())} outputs outside the bound are the Triton interpreter's own fp32->bf16 cast "
                f"(it truncates, NUMERICS.md section 5) of values within the fp32 bound: attributed to the interpreter")
    return None


@functools.cache
def _cast_kernel():
    import triton
    import triton.language as tl

    @triton.jit
    def cast(x_ptr, y_ptr, n, FNUZ: tl.constexpr, BLOCK: tl.constexpr):
        i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        v = tl.load(x_ptr + i, mask=i < n)
        if FNUZ:
            tl.store(y_ptr + i, v.to(tl.float8e4b8).to(tl.uint8, bitcast=True), mask=i < n)
        else:
            tl.store(y_ptr + i, v.to(tl.float8e4nv).to(tl.uint8, bitcast=True), mask=i < n)

    return cast


def interpreter_cast(values: np.ndarray, fmt: str) -> np.ndarray:
    """The interpreter's ``.to(float8)`` of fp32 ``values`` -> uint8 codes (same shape)."""
    import torch

    x = torch.from_numpy(np.ascontiguousarray(values, np.float32).reshape(-1))
    y = torch.empty(x.numel(), dtype=torch.uint8)
    if x.numel():
        _cast_kernel()[((x.numel() + 1023) // 1024,)](x, y, x.numel(), FNUZ=fmt == "e4m3fnuz", BLOCK=1024)
    return y.numpy().reshape(np.shape(values))


def explained_by_interpreter(pre_cast: np.ndarray, got: np.ndarray, want: np.ndarray, fmt: str) -> str | None:
    """A note when every code that differs from the emulation is the interpreter's cast of the
    emulation's own pre-cast value (None when not under the interpreter, or not explained)."""
    differ = got != want
    if not interpreter_active() or not differ.any():
        return None
    cast = interpreter_cast(pre_cast[differ], fmt)
    if np.array_equal(cast, got[differ]):
        return (f"all {int(differ.sum())} differing fp8 codes are the Triton interpreter's own .to(float8) of the right "
                f"values (its casts are not hardware-faithful, NUMERICS.md section 5): attributed to the interpreter, "
                f"not the kernel")
    return None
