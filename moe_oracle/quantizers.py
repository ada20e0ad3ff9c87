"""Checking a quantizer: its bytes against the emulation's, and when they differ, which convention
(scale mode x tie rule) it does follow, bit for bit, and in which kinds of blocks it still differs.

Works with torch and NumPy alone: the quantizer is any callable of the contract
(``moe_oracle.implementation``); the project's Triton kernels are not imported.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools

import numpy as np

import emulation as em

from ._tensors import same_bits, to_numpy, torch_module
from .contract import quantizer_pair
from .decodes import dequantizer_check, fake_quant_check
from .devices import parse_device
from .implementation import call_with, takes_keyword
from .inputs import (
    BLOCK_KINDS,
    _grid_midpoints,
    check_shape,
    classify_blocks,
    division_tie_values,
    given_input,
    quantizer_input,
)
from .interpreter import explained_by_interpreter

__all__ = ["QuantizerCheck", "check_quantizer", "MX_KINDS"]

MX_KINDS = {"quantize_mxfp4": "e2m1", "quantize_mxfp8": None, "quantize_dequantize_mxfp4": "e2m1"}  # mxfp8: its fp8
TIES = em.TIE_MODES


@dataclasses.dataclass(frozen=True)
class QuantizerCheck:
    """One quantizer on one input: the verdict, and the diagnosis."""

    kind: str  # quantize_mxfp4 | quantize_mxfp8 | quantize_fp8_per_token
    fmt: str
    input_dtype: str
    expected: str  # the convention judged against, e.g. "round_up, ties even"
    bytes_equal: int
    bytes_total: int
    follows: str | None  # the convention that reproduces its ordinary blocks bit for bit (None: none does)
    closest: str  # the best candidate, with how many blocks it misses
    differing: dict  # block kind -> number of blocks that differ from `expected`
    policies: dict  # what it does on zero / NaN-Inf blocks (rows), against the contract
    notes: tuple[str, ...] = ()
    seed: int | None = None
    unit: str = "bytes"  # what bytes_equal counts: "bytes", or "values" (fake quantizers, dequantizers)
    best: str = ""  # the candidate convention closest on ordinary and tie blocks (MX forms)
    best_differing: dict = dataclasses.field(default_factory=dict)  # block kind -> blocks `best` misses
    wrote_input: bool = False  # it changed the tensor it was handed (bit for bit)

    @property
    def verdict(self) -> str:
        return "PASS" if self.bytes_equal == self.bytes_total and not self.wrote_input else "FAIL"

    @property
    def passed(self) -> bool:
        return self.verdict == "PASS"

    def diagnosis(self) -> str:
        wrote = [WROTE_INPUT] if self.wrote_input else []
        if self.bytes_equal == self.bytes_total:
            return "; ".join([*wrote, f"bit-exact under {self.expected} ({self.bytes_total} {self.unit})",
                              *[f"{k}: {v}" for k, v in self.policies.items()], *self.notes])
        parts = [*wrote, f"{self.bytes_total - self.bytes_equal} of {self.bytes_total} {self.unit} differ from "
                         f"{self.expected}"]
        where = ", ".join(f"{k}: {n}" for k, n in self.differing.items() if n)
        if where:
            parts.append(f"differing blocks by kind: {where}")
        parts.append(f"follows {self.follows} bit for bit on ordinary and tie blocks" if self.follows
                     else f"no scale mode x tie rule reproduces it; closest {self.closest}")
        parts += [f"{k}: {v}" for k, v in self.policies.items()]
        return "; ".join(parts + list(self.notes))


def _call(fn, x_np, input_dtype, device, kind, **kw):
    torch = torch_module()
    x = torch.from_numpy(x_np).to(device=device, dtype=getattr(torch, input_dtype), copy=True)  # never the data itself
    q, s = quantizer_pair(_name(fn), kind, call_with(fn, x, **kw), *x_np.shape)
    s = to_numpy(s)
    return to_numpy(q), s if s.dtype == np.uint8 else s.astype(np.float32)


def _name(fn) -> str:
    return getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or type(fn).__name__


WROTE_INPUT = "it wrote to its input: a quantizer must leave the activations it reads unchanged"


def _watching_input(fn):
    """``fn`` (its name and signature kept) noting in the returned list each call that changed the
    tensor it was handed, bit for bit. The copy it compares with is kept on the host: a device copy
    allocated beside the input would be where a read past the input's end lands, unseen by --memcheck."""
    wrote = []

    @functools.wraps(fn)
    def watched(x, *args, **kwargs):
        host = (lambda t: t) if x.device.type == "meta" else (lambda t: t.detach().to("cpu", copy=True))
        given = host(x)
        out = fn(x, *args, **kwargs)
        if not same_bits(given, host(x)):
            wrote.append(_name(fn))
        return out

    watched.__qualname__ = _name(fn)
    return watched, wrote


def _mx_candidates(x, fmt):
    """Every convention the diagnosis tries: scale mode x tie rule, and the scale exponent off by one."""
    M = x.shape[0]
    blocks = x.reshape(M, -1, 32)
    for mode, ties in itertools.product(em.ScaleMode, TIES):
        codes, scale = em.quantize_mx(x, fmt, scale_mode=mode, ties=ties)
        yield f"{mode.value}, ties {ties}", codes, scale
        for off in (-1, 1):
            shifted = np.clip(scale.astype(np.int32) + off, 0, 254)  # within a factor 2 of the block's own: no overflow
            scaled = (blocks * np.ldexp(np.float32(1), 127 - shifted)[..., None]).astype(np.float32)
            yield (f"{mode.value} with the scale exponent {off:+d}, ties {ties}",
                   em.encode(scaled, fmt, ties=ties).reshape(x.shape), shifted.astype(np.uint8))


def tie_kinds(x, fmt, scale_e8m0, kinds):
    """``kinds`` with the ordinary blocks that hold an element exactly on a grid midpoint at their
    ``scale_e8m0`` relabelled "ties"."""
    M = x.shape[0]
    scale_v = np.ldexp(1.0, scale_e8m0.astype(np.int32) - 127)
    ratio = np.abs(x.reshape(M, -1, 32).astype(np.float64)) / scale_v[..., None]
    return np.where(np.isin(ratio, _grid_midpoints(fmt)).any(-1) & (kinds == "ordinary"), "ties", kinds)


def convention(scored, kinds, expected):
    """The candidate convention that reproduces the most ordinary and tie blocks: ``scored`` yields
    (name, per-block match) -> (best name, follows (None unless all of them), closest (with counts),
    blocks it misses per kind). Ties between candidates go to the expected one, then to plain ones."""
    core = np.isin(kinds, ["ordinary", "ties"])  # the convention is read off these; the rest are policies
    ranked = sorted(((int((~ok & core).sum()), name, ok) for name, ok in scored),
                    key=lambda t: (t[0], t[1] != expected, "exponent" in t[1], "nibbles" in t[1]))
    n_bad, best, best_ok = ranked[0]
    still = ", ".join(f"{k} {int((~best_ok & (kinds == k)).sum())}" for k in ("subnormal", "huge", "zero", "nan_inf")
                      if (~best_ok & (kinds == k)).any())
    follows = (best + (f" (except blocks: {still})" if still else "")) if n_bad == 0 else None
    closest = f"{best} ({n_bad} of {int(core.sum())} ordinary/tie blocks differ" + (f"; also {still}" if still else "") + ")"
    return best, follows, closest, {k: int((~best_ok & (kinds == k)).sum()) for k in BLOCK_KINDS}


def _mx_check(kind, fn, x, fmt, scale_mode, ties, input_dtype, device, pack):
    q, s = _call(fn, x, input_dtype, device, kind, scale_mode=scale_mode.value, fmt=fmt)
    M, K = x.shape
    codes = em.unpack_fp4x2(q) if pack else q
    if codes.shape != (M, K) or s.shape != (M, K // 32):
        raise ValueError(f"{kind}: returned codes {list(q.shape)} and scales {list(s.shape)}; expected "
                         f"[{M}, {K // 2 if pack else K}] and [{M}, {K // 32}]")
    kinds = classify_blocks(x)
    want_c, want_s = em.quantize_mx(x, fmt, scale_mode=scale_mode, ties=ties)
    expected = f"{scale_mode.value}, ties {ties}"
    want_q = em.pack_fp4x2(want_c) if pack else want_c
    equal = int((q == want_q).sum() + (s == want_s).sum())
    def blk(c, sc, got=codes):  # per block: codes and scale equal
        return (c.reshape(M, -1, 32) == got.reshape(M, -1, 32)).all(-1) & (sc == s)

    readings = {"": codes}  # how its bytes may be read: as packed by the contract, or nibbles swapped
    if pack:
        readings[", nibbles swapped (element 2i in the high nibble)"] = em.unpack_fp4x2((q >> 4) | ((q & 0xF) << 4))
    kinds = tie_kinds(x, fmt, want_s, kinds)
    ok = blk(want_c, want_s)
    differing = {k: int((~ok & (kinds == k)).sum()) for k in BLOCK_KINDS}
    conv = convention(((name + how, blk(c, sc, got)) for name, c, sc in _mx_candidates(x, fmt)
                       for how, got in readings.items()), kinds, expected)
    best, follows, closest, best_differing = conv
    core = np.isin(kinds, ["ordinary", "ties"])
    policies = {}
    for k, contract in (("zero", "scale 0x00, codes +-0"), ("nan_inf", "scale 0xFF, codes 0")):
        sel = kinds == k
        if sel.any() and not ok[sel].all():
            got = sorted({int(b) for b in s[sel]})
            codes_seen = sorted({int(c) for c in codes.reshape(M, -1, 32)[sel].ravel()})
            policies[f"{k} blocks"] = (f"scale byte(s) {[hex(b) for b in got]}, codes {[hex(c) for c in codes_seen][:6]} "
                                       f"(contract: {contract})")
    notes = ()
    if not pack:  # fp8 elements: under the interpreter, is it the cast? (its own scales, the contract's scaling)
        core_el = np.repeat(core & (want_s == s), 32, axis=1)
        with np.errstate(over="ignore"):  # its scale bytes may be anything: 2^127 x a large x overflows
            pre = (x * np.ldexp(np.float32(1), 127 - s.astype(np.int32)).repeat(32, axis=1)).astype(np.float32)
        why = explained_by_interpreter(pre[core_el], codes[core_el], want_c[core_el], fmt)
        notes = (why,) if why else ()
    return QuantizerCheck(kind, fmt, input_dtype, expected, equal, want_q.size + want_s.size, follows, closest,
                          differing, policies, notes, best=best, best_differing=best_differing)


def _per_token_check(fn, x, fmt, input_dtype, device):
    q, s = _call(fn, x, input_dtype, device, "quantize_fp8_per_token", fmt=fmt)
    M, K = x.shape
    s = s.reshape(M, -1)[:, :1].astype(np.float32)
    want_q, want_s = em.quantize_fp8_per_token(x, fmt=fmt, reciprocal=True)
    equal = int((q.reshape(M, K) == want_q).sum() + (s.view(np.uint32) == want_s.view(np.uint32)).sum())
    rows_finite = np.isfinite(x).all(1)
    zero = rows_finite & (np.abs(x).max(1) == 0)
    ordinary = rows_finite & ~zero
    scored = []
    for recip in (True, False):
        c, sc = em.quantize_fp8_per_token(x, fmt=fmt, reciprocal=recip)
        bad = ~((c == q.reshape(M, K)).all(1) & (sc.view(np.uint32) == s.view(np.uint32)).all(1))
        scored.append((int((bad & ordinary).sum()), "x * (1/s)" if recip else "x / s"))
    scored.sort()
    ok = (want_q == q.reshape(M, K)).all(1) & (want_s.view(np.uint32) == s.view(np.uint32)).all(1)
    differing = {"ordinary": int((~ok & ordinary).sum()), "zero": int((~ok & zero).sum()),
                 "nan_inf": int((~ok & ~rows_finite).sum())}
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):  # its own scale, the contract's product
        pre = (x * (np.float32(1) / s)).astype(np.float32)
    why = explained_by_interpreter(pre[ordinary], q.reshape(M, K)[ordinary], want_q[ordinary], fmt)
    policies = {}
    if differing["zero"]:
        policies["zero rows"] = f"scale {sorted({float(v) for v in s[zero, 0]})} (contract: 0.0, codes 0x00)"
    if differing["nan_inf"]:
        policies["NaN/Inf rows"] = f"scale {sorted({str(float(v)) for v in s[~rows_finite, 0]})} (contract: NaN, codes NaN)"
    return QuantizerCheck("quantize_fp8_per_token", fmt, input_dtype, "scale amax/max, x * (1/s), ties even",
                          equal, want_q.size + want_s.size, scored[0][1] if scored[0][0] == 0 else None,
                          f"{scored[0][1]} ({scored[0][0]} of {int(ordinary.sum())} rows differ)", differing, policies,
                          (why,) if why else ())


def _per_tensor_check(fn, x, fmt, input_dtype, device):
    """Per-tensor fp8 is per-token fp8 of the tensor as one row: the same check on x.reshape(1, -1)."""
    M, K = x.shape

    def as_one_row(x_row, fmt=fmt):
        q, s = quantizer_pair(_name(fn), "quantize_fp8_per_tensor", call_with(fn, x_row.reshape(M, K), fmt=fmt), M, K)
        return q.reshape(1, M * K), s.reshape(1, 1)

    check = _per_token_check(as_one_row, x.reshape(1, M * K), fmt, input_dtype, device)
    return dataclasses.replace(check, kind="quantize_fp8_per_tensor")


INPUT_DTYPES = ("bfloat16", "float16", "float32")
FP8_FORMATS = ("e4m3fn", "e4m3fnuz")  # the fp8 element formats of MX and of the per-token scales alike


def _check_arguments(fn, kind, fmt, input_dtype, seed) -> None:
    if not callable(fn):
        raise TypeError(f"fn: expected a callable quantizer, got {type(fn).__name__}")
    if input_dtype not in INPUT_DTYPES:
        raise ValueError(f"input_dtype={input_dtype!r} is not valid; expected one of {list(INPUT_DTYPES)}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed={seed!r}: expected a non-negative integer")
    fp4 = kind in MX_KINDS and MX_KINDS[kind] == "e2m1"
    if fmt is not None and fmt not in (("e2m1",) if fp4 else FP8_FORMATS):
        raise ValueError(f"fmt={fmt!r} is not valid for {kind}; expected " + (
            "None or 'e2m1'" if fp4 else f"None (e4m3fn) or one of {list(FP8_FORMATS)}"))


def check_quantizer(fn, kind: str, *, scale_mode="round_up", ties: str = "even", fmt: str | None = None,
                    input_dtype: str = "bfloat16", device="cpu", seed: int = 0, M: int = 32, K: int = 256,
                    x: np.ndarray | None = None) -> QuantizerCheck:
    """Check one quantizer callable of the contract (``kind``: quantize_mxfp4, quantize_mxfp8,
    quantize_fp8_per_token, quantize_fp8_per_tensor, quantize_dequantize_mxfp4, dequantize_mxfp4) against the emulation under ``scale_mode`` and ``ties`` on fresh nasty
    data drawn from ``seed`` (or on ``x``, fp32 [M, K]); see :class:`QuantizerCheck`."""
    kinds = (*MX_KINDS, "quantize_fp8_per_token", "quantize_fp8_per_tensor", "dequantize_mxfp4")
    if kind not in kinds:
        raise ValueError(f"kind={kind!r} is not valid; expected one of {list(kinds)}")
    if ties not in TIES:
        raise ValueError(f"ties={ties!r} is not valid; expected one of {list(TIES)}")
    mode = em.ScaleMode.parse(scale_mode)
    _check_arguments(fn, kind, fmt, input_dtype, seed)
    device = parse_device(device)
    if kind == "dequantize_mxfp4":  # a fixed sweep of every (code, scale byte): no data, no seed
        return dequantizer_check(fn, device, _name(fn))
    elem = MX_KINDS.get(kind) or fmt or "e4m3fn"
    if x is not None:
        x = given_input(x, blocks=kind in MX_KINDS)
    if x is None and kind == "quantize_fp8_per_tensor":
        check_shape(M, K, blocks=False)
        x = division_tie_values(np.random.default_rng(seed), (M, K), elem, zeros=True)  # one scale: x / s apart
    if x is None:
        x = quantizer_input(np.random.default_rng(seed), M, K, elem, per_row=kind == "quantize_fp8_per_token")
    torch = torch_module()
    x = torch.from_numpy(x.astype(np.float32)).to(getattr(torch, input_dtype)).float().numpy()  # as the kernel sees it
    fn, wrote = _watching_input(fn)
    if kind == "quantize_fp8_per_token":
        result = _per_token_check(fn, x, elem, input_dtype, device)
    elif kind == "quantize_fp8_per_tensor":
        result = _per_tensor_check(fn, x, elem, input_dtype, device)
    elif kind == "quantize_dequantize_mxfp4":
        result = fake_quant_check(fn, x, mode, ties, input_dtype, device, _name(fn))
    else:
        result = _mx_check(kind, fn, x, elem, mode, ties, input_dtype, device, pack=kind == "quantize_mxfp4")
    if not takes_keyword(fn, "scale_mode") and kind in MX_KINDS:
        result = dataclasses.replace(result, notes=result.notes + ("takes no scale_mode: its own fixed mode",))
    return dataclasses.replace(result, seed=seed, wrote_input=bool(wrote))
