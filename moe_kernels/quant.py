"""Activation quantizers as Triton kernels: MXFP4, MXFP8 and per-token fp8 (emulation's bytes).

One pass over the input: a tile of [BLOCK_M, BLOCK_K] (a contiguous input: of BLOCK_M 32-blocks)
is read once (bf16 as 32-bit words of element pairs, or raw bits), each 32-element block's amax is an
integer max of the magnitude bits, the e8m0 byte follows, the elements are encoded with integer
arithmetic (``_numerics``), and codes (fp4x2-packed for MXFP4) and scales are written. The per-token
kernel (``_per_token``) owns groups of whole rows. Both are persistent (a few programs per SM) and load the next tile
before working on the current one, so that each program keeps memory busy while it computes.
Tiles and grids come from ``configs.json`` (an H100 sweep: ``benchmarks/bench_quant.py --sweep``).
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

import emulation as em
from emulation.validate import check_bool

from . import _per_token, _persistent, _runtime
from ._numerics import SCALE_MODE_IDS, KernelFormat, mx_quantize_pairs
from ._rows import bits_view, check_input, load_pairs, words_view
from ._tuning import CONFIGS

__all__ = ["quantize_mxfp4", "quantize_mxfp8", "quantize_fp8_per_token"]

_MX_BLOCK = em.BLOCK_SIZE
_FLOAT8 = {"e4m3fn": torch.float8_e4m3fn, "e4m3fnuz": torch.float8_e4m3fnuz}


@triton.jit
def _mx_quant_kernel(x_ptr, q_ptr, s_ptr, M, K, stride_xm, stride_xk, stride_qm, stride_sm,
                     IS_BF16: tl.constexpr, WORDS: tl.constexpr, PACK_FP4: tl.constexpr, MODE: tl.constexpr,
                     BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, F: tl.constexpr):
    """Persistent along the rows: program (p, c) owns row tiles p, p + P, ... of column tile c, and
    issues the next tile's load before this one's arithmetic."""
    HALF: tl.constexpr = BLOCK_K // 2
    pairs = tl.program_id(1) * HALF + tl.arange(0, HALF)  # pair j holds elements 2j (lo) and 2j+1 (hi)
    lo, hi = _mx_load(x_ptr, tl.program_id(0), pairs, M, K, stride_xm, stride_xk, IS_BF16, WORDS, BLOCK_M)
    for tile in range(tl.program_id(0), tl.cdiv(M, BLOCK_M), tl.num_programs(0)):
        next_lo, next_hi = _mx_load(x_ptr, tile + tl.num_programs(0), pairs, M, K, stride_xm, stride_xk, IS_BF16,
                                    WORDS, BLOCK_M)
        _mx_quant_store(q_ptr, s_ptr, lo, hi, tile * BLOCK_M + tl.arange(0, BLOCK_M), pairs, M, K, stride_qm,
                        stride_sm, PACK_FP4, MODE, BLOCK_M, BLOCK_K, F)
        lo, hi = next_lo, next_hi


@triton.jit
def _mx_load(x_ptr, tile, pairs, M, K, stride_xm, stride_xk, IS_BF16: tl.constexpr, WORDS: tl.constexpr,
             BLOCK_M: tl.constexpr):
    rows = tile * BLOCK_M + tl.arange(0, BLOCK_M)
    mask = (rows[:, None] < M) & (pairs[None, :] < K // 2)
    return load_pairs(x_ptr + rows[:, None].to(tl.int64) * stride_xm, pairs[None, :], mask, mask, stride_xk,
                      IS_BF16, WORDS)


@triton.jit
def _mx_quant_store(q_ptr, s_ptr, lo, hi, rows, pairs, M, K, stride_qm, stride_sm, PACK_FP4: tl.constexpr,
                    MODE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, F: tl.constexpr):
    NB: tl.constexpr = BLOCK_K // 32
    HALF: tl.constexpr = BLOCK_K // 2
    codes_lo, codes_hi, byte = mx_quantize_pairs(
        tl.reshape(lo, (BLOCK_M, NB, 16)), tl.reshape(hi, (BLOCK_M, NB, 16)), MODE, F)
    codes_lo = tl.reshape(codes_lo, (BLOCK_M, HALF))
    codes_hi = tl.reshape(codes_hi, (BLOCK_M, HALF))
    mask = (rows[:, None] < M) & (pairs[None, :] < K // 2)
    q_at = q_ptr + rows[:, None].to(tl.int64) * stride_qm + pairs[None, :]
    if PACK_FP4:  # fp4x2: element 2j in the low nibble
        tl.store(q_at, (codes_lo | (codes_hi << 4)).to(tl.uint8), mask=mask)
    else:  # two fp8 codes per 16-bit store (q_ptr is the codes viewed as int16), element 2j first
        tl.store(q_at, (codes_lo | (codes_hi << 8)).to(tl.int16), mask=mask)
    scols = tl.program_id(1) * NB + tl.arange(0, NB)
    smask = (rows[:, None] < M) & (scols[None, :] < K // 32)
    tl.store(s_ptr + rows[:, None].to(tl.int64) * stride_sm + scols[None, :], byte.to(tl.uint8), mask=smask)


def _mx_launch(x, M, K, pack, variant=()):
    """(grid, kernel arguments, meta, occupancy key) of one MX quantization of x [M, K] into q [M, K/2
    or K] and scales [M, K/32] (both contiguous); the tiling (``_mx_tiling``) is cached per layout, so
    that a call costs little more than its launch."""
    words = words_view(x)
    x_arg = words if words is not None else bits_view(x)
    rows, cols, stride_xm, q_stride, stride_s, n_tiles, col_tiles, meta, key = _mx_tiling(
        M, K, x_arg.stride(0), x.stride(1), x.dtype, words is not None, pack, variant,
        tuple(CONFIGS["quant"][k] for k in ("flat_blocks", "block_m", "block_k", "num_warps")))
    grid = (max(1, _persistent.programs(key, n_tiles, CONFIGS["quant"]["programs_per_sm"], x.device) // col_tiles),
            col_tiles)
    return grid, (x_arg, rows, cols, stride_xm, x.stride(1), q_stride, stride_s), dict(meta), key


@functools.lru_cache(maxsize=256)
def _mx_tiling(M, K, stride_row, stride_xk, dtype, words, pack, variant, tile):
    """A row-contiguous x is seen as [M * K/32, 32]: one row per 32-block, so tiles never straddle the
    end of a row (K = 2880 in 256-wide tiles would leave the last tile of each row a quarter full);
    else 2-D tiles of configs.json's "quant" entry. ``stride_row``: x's row stride in the loaded units
    (32-bit words of bf16 pairs where ``words``); ``tile``: configs.json's values (part of the cache key)."""
    flat_blocks, tile_m, tile_k, num_warps = tile
    row_len = K // 2 if words else K
    if stride_xk == 1 and stride_row == row_len:  # flat: 32-blocks as rows
        rows, cols, block_m, block_k = M * K // 32, 32, flat_blocks, 32
        stride_xm, stride_q, stride_s = stride_row * 32 // K, (16 if pack else 32), 1
    else:
        block_k = min(tile_k, triton.next_power_of_2(K))
        rows, cols, block_m = M, K, max(1, tile_m * tile_k // block_k)
        stride_xm, stride_q, stride_s = stride_row, (K // 2 if pack else K), K // 32
    q_stride = stride_q // (1 if pack else 2)  # fp8 codes are stored as int16 pairs
    meta = dict(IS_BF16=dtype == torch.bfloat16, WORDS=words, BLOCK_M=block_m, BLOCK_K=block_k,
                num_warps=num_warps)
    key = ("mx", pack, variant, tuple(sorted(meta.items())))  # one compiled kernel: one occupancy
    return rows, cols, stride_xm, q_stride, stride_s, triton.cdiv(rows, block_m), triton.cdiv(cols, block_k), meta, key


def _mx_quantize(x, fmt, scale_mode, pack):
    check_input(x, need_k32=True)
    kf = KernelFormat.of(fmt)
    mode = SCALE_MODE_IDS[em.ScaleMode.parse(scale_mode)]
    device = _runtime.launch_device(x)
    xd = x.to(device)
    M, K = xd.shape
    q = torch.empty((M, K // 2 if pack else K), dtype=torch.uint8, device=device)
    s = torch.empty((M, K // _MX_BLOCK), dtype=torch.uint8, device=device)
    if M and K:
        grid, (x_arg, rows, cols, stride_xm, stride_xk, stride_q, stride_s), meta, key = _mx_launch(
            xd, M, K, pack, (fmt, mode))
        _persistent.launch(_mx_quant_kernel, grid, key, xd.device, x_arg, q if pack else q.view(torch.int16), s,
                           rows, cols, stride_xm, stride_xk, stride_q, stride_s, PACK_FP4=pack, MODE=mode, **meta, F=kf)
    return q.to(x.device), s.to(x.device)


@_runtime.interpreter_quiet
def quantize_mxfp4(x: torch.Tensor, *, scale_mode="round_up"):
    """MXFP4 of x [M, K] (bf16 or fp32) along K -> (packed uint8 [M, K/2], scale_e8m0 uint8 [M, K/32]).

    Bit-exact with ``emulation.quantize_mxfp4(x, scale_mode=...)`` (ties to even, satfinite).
    """
    return _mx_quantize(x, "e2m1", scale_mode, pack=True)


@_runtime.interpreter_quiet
def quantize_mxfp8(x: torch.Tensor, *, fmt="e4m3fn", scale_mode="round_up", as_float8: bool = False):
    """MXFP8 of x [M, K] along K -> (codes [M, K], scale_e8m0 uint8 [M, K/32]); fmt e4m3fn or e4m3fnuz.

    Codes are uint8, or a view as torch's float8 dtype with ``as_float8=True``.
    """
    f = em.get_format(fmt)
    if f.name not in _FLOAT8:
        raise ValueError(f"fmt={fmt!r} is not valid; expected one of {list(_FLOAT8)}")
    check_bool(as_float8, "as_float8")
    codes, scale = _mx_quantize(x, f.name, scale_mode, pack=False)
    return (codes.view(_FLOAT8[f.name]) if as_float8 else codes), scale


@_runtime.interpreter_quiet
def quantize_fp8_per_token(x: torch.Tensor, *, fmt="e4m3fn", as_float8: bool = False):
    """Per-row fp8: scale = fl32(amax / max), codes of fl32(x * fl32(1 / scale)) -> (codes [M, K], scale fp32 [M, 1]).

    Bit-exact with ``emulation.quantize_fp8_per_token(x, fmt=fmt, reciprocal=True)``.
    """
    f = em.get_format(fmt)
    if f.name not in _FLOAT8:
        raise ValueError(f"fmt={fmt!r} is not valid; expected one of {list(_FLOAT8)}")
    check_input(x, need_k32=False)
    check_bool(as_float8, "as_float8")
    kf = KernelFormat.of(f)
    device = _runtime.launch_device(x)
    xd = x.to(device)
    M, K = xd.shape
    q = torch.empty((M, K), dtype=torch.uint8, device=device)
    s = torch.empty((M, 1), dtype=torch.float32, device=device)
    if M and K:
        grid, (x_arg, n_pairs, stride_xm, stride_xk, stride_q), meta, key = _per_token.launch(xd, K, (f.name,))
        q_arg = q.view(torch.int16) if meta["PAIR_STORE"] else q
        _persistent.launch(_per_token.fp8_per_token_kernel, grid, key, xd.device, x_arg, q_arg, s, M, K, n_pairs,
                           stride_xm, stride_xk, stride_q, **meta, F=kf)
    elif M:
        s.zero_()
    q, s = q.to(x.device), s.to(x.device)
    return (q.view(_FLOAT8[f.name]) if as_float8 else q), s
