"""The kernels' format helpers (``moe_kernels._numerics``) against the independent nearest-value oracle."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import triton
import triton.language as tl

import emulation as em
from moe_kernels._decode import FOLDED_PTX
from moe_kernels._numerics import KernelFormat, encode_scaled
from moe_kernels.moe_gemm import WEIGHT_FORMAT, load_mxfp4_rows_bf16, load_rows_f32_bits
from moe_kernels.prepared import prepare_mxfp4, prepare_scales

from ..emulation.oracle import oracle_encode

FORMATS = ["e2m1", "e4m3fn", "e4m3fnuz"]


@triton.jit
def _encode_kernel(x_ptr, out_ptr, n, byte, BLOCK: tl.constexpr, F: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    bits = tl.load(x_ptr + offs, mask=offs < n, other=0)
    codes = encode_scaled(bits, tl.full((BLOCK,), byte, tl.int32), F)
    tl.store(out_ptr + offs, codes, mask=offs < n)


def _finite_inputs(rng) -> np.ndarray:
    """Every finite bf16 pattern (ties, subnormals, +-0, extremes) and random finite fp32 patterns."""
    bf16 = (np.arange(1 << 16, dtype=np.uint32) << 16).view(np.float32)
    fp32 = rng.integers(0, 1 << 32, 1 << 14, dtype=np.uint64).astype(np.uint32).view(np.float32)
    x = np.concatenate([bf16, fp32])
    return x[np.isfinite(x)]


@pytest.mark.parametrize("where", ["interpreter", pytest.param("gpu", marks=pytest.mark.gpu)])
@pytest.mark.parametrize("fmt", FORMATS)
def test_encoder_is_exact_at_every_scale(fmt, where, rng, device):
    """``encode_scaled`` at every scale byte equals the oracle's code of x * 2^-s (computed exactly in
    float64; byte 255, a NaN block, gives 0), on every finite bf16 pattern (fp32 subnormals included)
    and random fp32 patterns whose scaled magnitude stays below 2^127 (MX blocks stay below
    2^(emax + 1))."""
    kf = KernelFormat.of(fmt)
    x = _finite_inputs(rng)
    x_t = torch.from_numpy(x.view(np.int32).copy()).to(device)
    out = torch.empty_like(x_t)
    for byte in range(256):
        scale_exp = byte - 127
        scaled = x.astype(np.float64) * 2.0**-scale_exp
        keep = np.abs(scaled) < 2.0**127
        out.fill_(-1)  # poison
        block = 1 << 13
        _encode_kernel[(triton.cdiv(x.size, block),)](x_t, out, x.size, byte, BLOCK=block, F=kf)
        got = out.cpu().numpy()[keep]
        want = oracle_encode(scaled[keep].astype(np.float32), fmt) if byte < 255 else np.zeros(keep.sum(), int)
        bad = np.flatnonzero(got != want)
        assert bad.size == 0, (f"{fmt} scale 2^{scale_exp}: x={x[keep][bad[:4]]} -> {got[bad[:4]]}, "
                               f"want {want[bad[:4]]}")



_FOLDED: tl.constexpr = tl.constexpr(FOLDED_PTX)


@triton.jit
def _weight_decode_kernel(w_ptr, s_ptr, out_ptr, R, K, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr,
                          W: tl.constexpr, DECODE: tl.constexpr, PREPARED: tl.constexpr = False, ROW_BYTES=None,
                          SCALE_ROW_BYTES=None):
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    k0 = tl.program_id(1) * BLOCK_K
    if DECODE == "exact":  # the activations' decode (_decode.decode_scaled_bits), fp32 patterns
        w = (load_rows_f32_bits(w_ptr, s_ptr, rows, K // 2, K // 32, k0, K, rows < R, 1, BLOCK_K, W) >> 16).to(tl.int16)
    else:  # the GEMMs' weight decode: portable fp32 or PTX
        ptx: tl.constexpr = _FOLDED if DECODE == "ptx-folded" else DECODE == "ptx"
        w = load_mxfp4_rows_bf16(w_ptr, s_ptr, rows, ROW_BYTES if PREPARED else K // 2,
                                 SCALE_ROW_BYTES if PREPARED else K // 32, k0, K, rows < R,
                                 BLOCK_K, W, ptx, PREPARED).to(tl.int16, bitcast=True)
    cols = k0 + tl.arange(0, BLOCK_K)
    tl.store(out_ptr + rows[:, None] * K + cols[None, :], w, mask=(rows < R)[:, None])


_DECODES = ["exact", "fp32"] + (["ptx"] if torch.version.hip is None else [])  # PTX: NVIDIA only


_WHERE_DECODE = [("interpreter", d) for d in ("exact", "fp32")] + [("gpu", d) for d in _DECODES]
_WHERE_DECODE += [("gpu", "ptx-folded")] if "ptx" in _DECODES else []  # prepared weights, scale bytes <= 128
_TILES = [(32, False), (128, False), (64, True), (128, True), (256, True)]  # prepared: BLOCK_K 64 to 512


@pytest.mark.parametrize("where, decode, block_k, prepared", [
    pytest.param(where, decode, block_k, prepared, marks=[pytest.mark.gpu] if where == "gpu" else [],
                 id=f"{where}-{decode}-k{block_k}" + ("-prepared" if prepared else ""))
    for where, decode in _WHERE_DECODE for block_k, prepared in _TILES
    if not (prepared and decode == "exact") and (prepared or decode != "ptx-folded")])  # exact: activations only;
# the folded decode: prepared weights only
def test_weight_decode_is_exact_at_every_scale(block_k, prepared, where, decode, device):
    """The three MXFP4 decodes (``moe_kernels._decode``: the exact integer one of the activations, and
    the GEMMs' weight decodes, portable fp32 and, on NVIDIA, the bf16x2 PTX that fused_moe uses there):
    every fp4x2 byte at every scale byte (row r has scale byte r in all its blocks) gives the bf16 of
    ``emulation.dequantize_mxfp4``, bit for bit: 6 * 2^127 -> inf, byte 255 -> NaN, and subnormal
    results (scale bytes near 0) exact in the weight decodes; the exact decode gives +-0 below 2^-126
    (its documented flush: no such activation value reaches an fp32 accumulator's ulp). ``prepared``: the
    weights in ``moe_kernels.prepared``'s layout, read by the left-operand GEMMs (``PREPARED=True``):
    the same values at every byte and scale byte (decode(prepared) == decode(public)), with the scales
    prepared too (``prepare_scales``) and each block's byte its own (row r, block b: (r + 17 b) mod 256,
    every scale byte at every code still), so that a scale read from the neighbouring block shows.
    ``ptx-folded``: the prepared weights' one-multiplication decode (``_decode.FOLDED_PTX``), at the scale
    bytes it serves (0..128: blocks of larger bytes are not compared)."""
    R, K = 256, 512  # each row: the 256 byte values, one block of 16 bytes after another
    packed = np.tile(np.arange(256, dtype=np.uint8), (R, 1))
    scale = np.repeat(np.arange(256, dtype=np.uint8)[:, None], K // 32, axis=1)
    if prepared:
        scale = ((np.arange(R)[:, None] + 17 * np.arange(K // 32)[None, :]) % 256).astype(np.uint8)
    want = em.dequantize_mxfp4(packed, scale)
    assert np.array_equal(em.round_to_bf16(want), want, equal_nan=True)  # every value is a bf16
    if decode == "exact":
        want = np.where(np.abs(want) < 2.0**-126, np.copysign(np.float32(0), want), want).astype(np.float32)
    out = torch.full((R, K), -1, dtype=torch.int16, device=device)  # poison
    w = prepare_mxfp4(torch.from_numpy(packed)) if prepared else torch.from_numpy(packed)
    assert not prepared or not torch.equal(w, torch.from_numpy(packed))  # a real permutation
    s = prepare_scales(torch.from_numpy(scale)) if prepared else torch.from_numpy(scale)
    assert s.shape[1] % 16 == 0
    _weight_decode_kernel[(R // 16, K // block_k)](w.to(device), s.to(device),
                                                   out, R, K, BLOCK_R=16, BLOCK_K=block_k, W=WEIGHT_FORMAT,
                                                   DECODE=decode, PREPARED=prepared, ROW_BYTES=w.shape[1],
                                                   SCALE_ROW_BYTES=s.shape[1])
    got = (out.cpu().numpy().astype(np.int32).view(np.uint32) << 16).view(np.float32)
    if decode == "ptx-folded":
        served = np.repeat(scale <= 128, 32, axis=1)
        got, want = got[served], want[served]
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    keep = ~np.isnan(want)
    bad = np.flatnonzero(got[keep].view(np.uint32) != want[keep].view(np.uint32))
    assert bad.size == 0, f"{bad.size} wrong: got {got[keep][bad[:4]]}, want {want[keep][bad[:4]]}"
