"""Checking the two contract forms that return values instead of bytes:

- ``quantize_dequantize_mxfp4(x [M, K], scale_mode=...) -> values [M, K]`` ("fake quantization": what
  many libraries expose). Judged by value against the emulation's decode of its own quantization,
  bit for bit (NaN equals NaN, the sign of zero counts); the convention is found the same way as for a
  byte quantizer, by value. Where the decode makes it unique the bytes are recovered
  (``emulation.recover_mx``) and the check says in how many blocks they were and were not.
- ``dequantize_mxfp4(codes fp4x2 [M, K/2], scale e8m0 [M, K/32]) -> values [M, K]``: every e2m1 code
  at every e8m0 byte against the emulation's decode, with what it does at the bytes the formats
  leave to policy (0x00: 2^-127 or 0; 0xFF: NaN, Inf or 2^128) and in which order it reads nibbles.

Both give a :class:`~moe_oracle.quantizers.QuantizerCheck` counted in values, not bytes.
"""

from __future__ import annotations

import numpy as np

import emulation as em

from ._tensors import Kept, to_numpy, torch_module
from .contract import float_values
from .implementation import call_with

__all__ = ["fake_quant_check", "dequantizer_check", "dequantizer_input", "value_bits"]


def value_bits(values) -> np.ndarray:
    """float32 bits of ``values`` with every NaN as one pattern and -0 as +0: equal bits = equal values
    (IEEE equality, and NaN equals NaN). The sign of zero is reported apart (:func:`zero_sign_note`)."""
    v = np.asarray(values, np.float32)
    return np.where(np.isnan(v), np.uint32(0x7FC00000), np.where(v == 0, np.uint32(0), v.view(np.uint32)))


def zero_sign_note(got, want) -> tuple[str, ...]:
    """Where both are zero but of different signs: one line (the value forms compare +0 == -0)."""
    got, want = np.asarray(got, np.float32), np.asarray(want, np.float32)
    both = (got == 0) & (want == 0)
    lost = int((both & np.signbit(want) & ~np.signbit(got)).sum())
    made = int((both & ~np.signbit(want) & np.signbit(got)).sum())
    parts = ([f"-0 returned as +0 in {lost} values"] if lost else []) + ([f"+0 returned as -0 in {made} values"] if made else [])
    return (f"sign of zero: {', '.join(parts)} (equal values; the byte form would differ)",) if parts else ()


def _as_f32(values: np.ndarray, M: int, K: int) -> np.ndarray:
    """[M, K] fp32 of a fake quantizer's or a dequantizer's values: fp64 beyond fp32's range reads as +-inf
    (what an fp32 result would hold), without a NumPy overflow warning."""
    with np.errstate(over="ignore"):
        return values.reshape(M, K).astype(np.float32)


def fake_quant_check(fn, x, scale_mode, ties, input_dtype, device, name):
    from .inputs import BLOCK_KINDS, classify_blocks
    from .quantizers import QuantizerCheck, _mx_candidates, convention, tie_kinds

    torch = torch_module()
    M, K = x.shape
    xt = torch.from_numpy(x).to(device=device, dtype=getattr(torch, input_dtype), copy=True)  # never the data itself
    raw = _as_f32(to_numpy(float_values(name, call_with(fn, xt, scale_mode=scale_mode.value), M, K, "[M, K] values")),
                  M, K)
    got = value_bits(raw).reshape(M, -1, 32)
    kinds = classify_blocks(x)
    want_c, want_s = em.quantize_mx(x, "e2m1", scale_mode=scale_mode, ties=ties)
    want_raw = em.dequantize_mx(want_c, want_s, "e2m1")
    want = value_bits(want_raw).reshape(M, -1, 32)
    ok = (got == want).all(-1)
    kinds = tie_kinds(x, "e2m1", want_s, kinds)
    differing = {k: int((~ok & (kinds == k)).sum()) for k in BLOCK_KINDS}
    expected = f"{scale_mode.value}, ties {ties}"
    best, follows, closest, best_differing = convention(
        ((cand, (value_bits(em.dequantize_mx(c, sc, "e2m1")).reshape(M, -1, 32) == got).all(-1))
         for cand, c, sc in _mx_candidates(x, "e2m1")), kinds, expected)
    policies = {}
    for kind, contract in (("zero", "+-0 (sign kept)"), ("nan_inf", "every value NaN")):
        sel = kinds == kind
        if sel.any() and not ok[sel].all():
            policies[f"{kind} blocks"] = f"{_value_summary(raw.reshape(M, -1, 32)[sel])} (contract: {contract})"
    _, _, status = em.recover_mx(raw, "e2m1")
    n = status.size
    recovered = (f"bytes recovered from its values in {int((status == 1).sum())} of {n} blocks; ambiguous in "
                 f"{int((status == 2).sum())} (zero blocks, values that fit a coarser scale: judged by value); "
                 f"no MX decode in {int((status == 0).sum())}")
    return QuantizerCheck("quantize_dequantize_mxfp4", "e2m1", input_dtype, expected, int((got == want).sum()),
                          want.size, follows, closest, differing, policies, (recovered, *zero_sign_note(raw, want_raw)),
                          unit="values", best=best,
                          best_differing=best_differing)


def _value_summary(values: np.ndarray) -> str:
    v = np.asarray(values, np.float32).ravel()
    parts = [f"NaN {int(np.isnan(v).sum())}", f"inf {int(np.isinf(v).sum())}", f"+0 {int(((v == 0) & ~np.signbit(v)).sum())}",
             f"-0 {int(((v == 0) & np.signbit(v)).sum())}", f"other {int((np.isfinite(v) & (v != 0)).sum())}"]
    return "values: " + ", ".join(p for p in parts if not p.endswith(" 0"))


def dequantizer_input() -> tuple[np.ndarray, np.ndarray]:
    """Every (e2m1 code, e8m0 byte) pair: row r is one block of codes 0..15 twice at scale byte r
    -> (fp4x2 [256, 16], scale [256, 1])."""
    codes = np.tile(np.arange(16, dtype=np.uint8), (256, 2))
    return em.pack_fp4x2(codes), np.arange(256, dtype=np.uint8).reshape(256, 1)


def _describe_decode(values: np.ndarray) -> str:
    """One row of the sweep (codes 0..15 at one scale byte) in words: what code 1.0 (0x2) became."""
    one, v = float(values[2]), values
    if np.isnan(v).all():
        return "NaN"
    if np.isinf(one):
        return "inf"
    if one == 0:
        return "0 (flushed)"
    return f"2^{np.log2(one):g}" if one > 0 and np.log2(one).is_integer() else f"{one!r}"


def dequantizer_check(fn, device, name):
    from .quantizers import QuantizerCheck

    torch = torch_module()
    packed, scale = dequantizer_input()
    M, K = 256, 32
    handed = {n: torch.from_numpy(a).to(device) for n, a in (("codes", packed), ("scales", scale))}
    kept = Kept(handed)  # a write to either fails it, and is undone (on the CPU they are the oracle's own arrays)
    got = float_values(name, call_with(fn, *handed.values()), M, K, "[M, K] values")
    kept.put_back()
    raw = _as_f32(to_numpy(got), M, K)
    got, want_raw = value_bits(raw), em.dequantize_mxfp4(packed, scale)
    want = value_bits(want_raw)
    swapped = value_bits(em.dequantize_mxfp4((packed >> 4) | ((packed & 0xF) << 4), scale))
    ordinary = np.ones(256, bool)
    ordinary[[0, 255]] = False
    ok_rows = (got == want).all(-1)
    nibbles = "low nibble first"
    if (got[ordinary] == swapped[ordinary]).sum() > (got[ordinary] == want[ordinary]).sum():
        nibbles, want_order = "high nibble first (element 2i in the high nibble)", swapped
    else:
        want_order = want
    rows = np.arange(256)[ordinary]
    bad = [(int(rows[r]), int(c)) for r, c in zip(*np.nonzero(got[ordinary] != want_order[ordinary]))]
    examples = ", ".join(f"code 0x{c % 16:X} at scale 0x{r:02X}: {float(got.view(np.float32)[r, c])!r} (emulation "
                         f"{float(want_order.view(np.float32)[r, c])!r})" for r, c in bad[:3])
    policies = {"scale 0x00": f"{_describe_decode(got.view(np.float32)[0])} (contract: 2^-127)",
                "scale 0xFF": f"{_describe_decode(got.view(np.float32)[255])} (contract: NaN)"}
    follows = (f"the e2m1 x 2^(byte-127) decode at every other byte, {nibbles}" if not bad else None)
    closest = f"{len(bad)} of {int(ordinary.sum()) * K} (code, byte) values differ at bytes 0x01..0xFE" + (
        f", e.g. {examples}" if examples else "")
    differing = {"ordinary": int((~ok_rows[ordinary]).sum()), "zero": int(not ok_rows[0]), "nan_inf": int(not ok_rows[255])}
    return QuantizerCheck("dequantize_mxfp4", "e2m1", "e8m0 x fp4x2", "e2m1 x 2^(byte-127), 0xFF NaN, low nibble first",
                          int((got == want).sum()), want.size, follows, closest, differing, policies,
                          zero_sign_note(raw, want_raw), unit="values", wrote_input=bool(kept.written))
