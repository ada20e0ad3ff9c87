"""A NumPy interpreter for the few PTX instructions the kernels' inline asm uses, so that the asm text a
GPU runs is checked on the CPU too (the Triton interpreter does not run inline asm).

Supported: ``mov``, ``and``, ``or``, ``shl``, ``shr`` (.b32, logical), ``shf.r.wrap.b32`` (funnel shift
right of {b, a} by c mod 32: a rotation where a is b), ``prmt.b32`` (default mode:
each selector nibble picks one of the 8 bytes {b, a}; its bit 3 replicates the picked byte's top bit)
and ``fma.rn.bf16x2`` (each half a * b + c, one rounding to the nearest bf16, ties to even, subnormals
kept, overflow to inf; NaN in, canonical NaN 0x7FFF out). Operands: ``$n`` (the asm's operands, outputs
first), registers declared with ``.reg .b32``, decimal immediates. Anything else raises: a simulator
that guessed would prove nothing.
"""

from __future__ import annotations

import re

import numpy as np

__all__ = ["run_ptx"]

_MASK = np.uint64(0xFFFFFFFF)


def _bf16_to_f64(half: np.ndarray) -> np.ndarray:
    return (half.astype(np.uint32) << np.uint32(16)).view(np.float32).astype(np.float64)


def _f64_to_bf16(x: np.ndarray) -> np.ndarray:
    """Nearest bf16 (ties to even) of float64 values, as uint16 patterns."""
    out = np.empty(x.shape, dtype=np.float64)
    finite = np.isfinite(x) & (x != 0)
    mag = np.abs(np.where(finite, x, 1.0))
    quantum = np.exp2(np.maximum(np.floor(np.log2(mag)), -126.0) - 7.0)  # bf16: 8 significant bits
    out[...] = np.where(finite, np.round(np.where(finite, x, 0.0) / quantum) * quantum, x)
    out = np.where(np.abs(out) >= 2.0**128, np.copysign(np.inf, x), out)
    bits = (out.astype(np.float32).view(np.uint32) >> np.uint32(16)).astype(np.uint16)
    return np.where(np.isnan(x), np.uint16(0x7FFF), bits)


def _prmt(a: np.ndarray, b: np.ndarray, sel: np.ndarray) -> np.ndarray:
    pool = (b.astype(np.uint64) << np.uint64(32)) | a.astype(np.uint64)
    out = np.zeros(np.broadcast(a, b, sel).shape, dtype=np.uint64)
    for i in range(4):
        nib = (sel.astype(np.uint64) >> np.uint64(4 * i)) & np.uint64(0xF)
        byte = (pool >> (np.uint64(8) * (nib & np.uint64(7)))) & np.uint64(0xFF)
        byte = np.where(nib & np.uint64(8), np.where(byte & np.uint64(0x80), np.uint64(0xFF), np.uint64(0)), byte)
        out |= byte << np.uint64(8 * i)
    return out


def _fma_bf16x2(a, b, c) -> np.ndarray:
    halves = []
    for shift in (0, 16):
        h = [((v >> np.uint64(shift)) & np.uint64(0xFFFF)).astype(np.uint16) for v in (a, b, c)]
        with np.errstate(invalid="ignore", over="ignore"):  # inf * 0 is NaN, as in IEEE
            prod = _bf16_to_f64(h[0]) * _bf16_to_f64(h[1]) + _bf16_to_f64(h[2])  # exact in float64 for bf16 inputs
        halves.append(_f64_to_bf16(prod).astype(np.uint64) << np.uint64(shift))
    return halves[0] | halves[1]


_OPS = {
    "mov.b32": lambda a: a,
    "and.b32": lambda a, b: a & b,
    "or.b32": lambda a, b: a | b,
    "shl.b32": lambda a, b: (a << b) & _MASK,
    "shr.b32": lambda a, b: a >> b,
    "shf.r.wrap.b32": lambda a, b, c: (((b << np.uint64(32)) | a) >> (c & np.uint64(31))) & _MASK,
    "prmt.b32": _prmt,
    "fma.rn.bf16x2": _fma_bf16x2,
}


def run_ptx(asm: str, inputs: list[np.ndarray], n_outputs: int) -> list[np.ndarray]:
    """Run ``asm`` (the text given to ``tl.inline_asm_elementwise``) on uint32 arrays: ``inputs`` are
    $n_outputs.., the result the $0.. values (uint32)."""
    regs: dict[str, np.ndarray] = {f"${n_outputs + i}": np.asarray(v, dtype=np.uint64) for i, v in enumerate(inputs)}
    declared = set()
    body = asm.strip().removeprefix("{").removesuffix("}")
    for stmt in filter(None, (s.strip() for s in body.split(";"))):
        if stmt.startswith(".reg .b32"):
            declared |= {r.strip() for r in stmt.removeprefix(".reg .b32").split(",")}
            continue
        m = re.fullmatch(r"([a-z0-9.]+)\s+(.+)", stmt, flags=re.S)
        if m is None or m.group(1) not in _OPS:
            raise ValueError(f"unsupported PTX: {stmt!r}")
        dst, *srcs = (t.strip() for t in m.group(2).split(","))
        if not (dst in declared or re.fullmatch(r"\$\d+", dst)):
            raise ValueError(f"undeclared destination {dst!r} in {stmt!r}")
        unwritten = [t for t in srcs if not re.fullmatch(r"-?\d+", t) and t not in regs]
        if unwritten:
            raise ValueError(f"{unwritten[0]!r} read before it is written in {stmt!r}")
        args = [np.uint64(int(t) & 0xFFFFFFFF) if re.fullmatch(r"-?\d+", t) else regs[t] for t in srcs]
        regs[dst] = _OPS[m.group(1)](*args) & _MASK
    return [regs[f"${i}"].astype(np.uint32) for i in range(n_outputs)]
