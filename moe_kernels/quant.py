"""Activation quantizers as Triton kernels: MXFP4, MXFP8 and per-token fp8 (emulation's bytes).

One pass over the input: a tile of [BLOCK_M, BLOCK_K] (a contiguous input: of BLOCK_M 32-blocks)
is read once (bf16 as 32-bit words of element pairs, or raw bits), each 32-element block's amax is an
integer max of the magnitude bits, the e8m0 byte follows, the elements are encoded with integer
arithmetic (``_numerics``), and codes (fp4x2-packed for MXFP4) and scales are written. The per-token
kernel owns groups of whole rows. Both are persistent (a few programs per SM) and load the next tile
before working on the current one, so that each program keeps memory busy while it computes.
Tiles and grids come from ``configs.json`` (an H100 sweep: ``benchmarks/bench_quant.py --sweep``).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

import emulation as em

from . import _persistent, _runtime
from ._numerics import (
    SCALE_MODE_IDS,
    KernelFormat,
    bf16_bits_to_f32_bits,
    encode_magnitude,
    encode_scaled,
    mx_quantize_pairs,
)
from ._tuning import CONFIGS

__all__ = ["quantize_mxfp4", "quantize_mxfp8", "quantize_fp8_per_token"]

_MX_BLOCK = em.BLOCK_SIZE
_FLOAT8 = {"e4m3fn": torch.float8_e4m3fn, "e4m3fnuz": torch.float8_e4m3fnuz}


@triton.jit
def load_f32_bits(ptr, offs, mask, IS_BF16: tl.constexpr):
    """fp32 bit patterns (int32) of a bf16 (loaded as int16) or fp32 (loaded as int32) tensor."""
    if IS_BF16:
        bits = bf16_bits_to_f32_bits(tl.load(ptr + offs, mask=mask, other=0))
    else:
        bits = tl.load(ptr + offs, mask=mask, other=0)
    return bits


@triton.jit
def load_pairs(x_row, pairs, mask_lo, mask_hi, stride_xk, IS_BF16: tl.constexpr, WORDS: tl.constexpr):
    """fp32 bit patterns (int32) of elements 2j (lo) and 2j+1 (hi) for pair indices ``pairs`` (0 where
    masked; the masks differ only at the end of an odd row).

    WORDS: contiguous bf16 read as little-endian 32-bit words (``x_row`` an int32 pointer, even rows),
    one vector load for both; else two strided loads of bf16 (int16) or fp32 (int32) patterns."""
    if WORDS:
        word = tl.load(x_row + pairs, mask=mask_lo, other=0)
        lo = word << 16
        hi = word & -65536
    else:
        lo = load_f32_bits(x_row, (2 * pairs) * stride_xk, mask_lo, IS_BF16)
        hi = load_f32_bits(x_row, (2 * pairs + 1) * stride_xk, mask_hi, IS_BF16)
    return lo, hi


@triton.jit
def _mx_quant_kernel(x_ptr, q_ptr, s_ptr, M, K, stride_xm, stride_xk, stride_qm, stride_sm,
                     IS_BF16: tl.constexpr, WORDS: tl.constexpr, PACK_FP4: tl.constexpr, MODE: tl.constexpr,
                     BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr,
                     MAN_BITS: tl.constexpr, EMIN: tl.constexpr, EMAX: tl.constexpr, MAX_CODE: tl.constexpr,
                     NAN_CODE: tl.constexpr, SIGN_SHIFT: tl.constexpr, HAS_NEG_ZERO: tl.constexpr,
                     MAX_FINITE: tl.constexpr, TINY_BITS: tl.constexpr):
    """Persistent along the rows: program (p, c) owns row tiles p, p + P, ... of column tile c, and
    issues the next tile's load before this one's arithmetic."""
    HALF: tl.constexpr = BLOCK_K // 2
    pairs = tl.program_id(1) * HALF + tl.arange(0, HALF)  # pair j holds elements 2j (lo) and 2j+1 (hi)
    lo, hi = _mx_load(x_ptr, tl.program_id(0), pairs, M, K, stride_xm, stride_xk, IS_BF16, WORDS, BLOCK_M)
    for tile in range(tl.program_id(0), tl.cdiv(M, BLOCK_M), tl.num_programs(0)):
        next_lo, next_hi = _mx_load(x_ptr, tile + tl.num_programs(0), pairs, M, K, stride_xm, stride_xk, IS_BF16,
                                    WORDS, BLOCK_M)
        _mx_quant_store(q_ptr, s_ptr, lo, hi, tile * BLOCK_M + tl.arange(0, BLOCK_M), pairs, M, K, stride_qm,
                        stride_sm, PACK_FP4, MODE, BLOCK_M, BLOCK_K, MAN_BITS, EMIN, EMAX, SIGN_SHIFT, HAS_NEG_ZERO,
                        MAX_FINITE, TINY_BITS)
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
                    MODE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, MAN_BITS: tl.constexpr,
                    EMIN: tl.constexpr, EMAX: tl.constexpr, SIGN_SHIFT: tl.constexpr, HAS_NEG_ZERO: tl.constexpr,
                    MAX_FINITE: tl.constexpr, TINY_BITS: tl.constexpr):
    NB: tl.constexpr = BLOCK_K // 32
    HALF: tl.constexpr = BLOCK_K // 2
    codes_lo, codes_hi, byte = mx_quantize_pairs(
        tl.reshape(lo, (BLOCK_M, NB, 16)), tl.reshape(hi, (BLOCK_M, NB, 16)), MODE, MAN_BITS, EMIN, EMAX,
        SIGN_SHIFT, HAS_NEG_ZERO, MAX_FINITE, TINY_BITS)
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


@triton.jit
def _fp8_per_token_kernel(x_ptr, q_ptr, s_ptr, M, K, n_pairs, stride_xm, stride_xk, stride_qm,
                          IS_BF16: tl.constexpr, WORDS: tl.constexpr, PAIR_STORE: tl.constexpr,
                          BLOCK_M: tl.constexpr, W1: tl.constexpr, W2: tl.constexpr, W3: tl.constexpr,
                          ONE_CHUNK: tl.constexpr,
                          MAN_BITS: tl.constexpr, EMIN: tl.constexpr, EMAX: tl.constexpr, MAX_CODE: tl.constexpr,
                          NAN_CODE: tl.constexpr, SIGN_SHIFT: tl.constexpr, HAS_NEG_ZERO: tl.constexpr,
                          MAX_FINITE: tl.constexpr, TINY_BITS: tl.constexpr):
    """Persistent: program p owns row groups p, p + P, ... of BLOCK_M rows.

    ONE_CHUNK: a row's element pairs are up to three power-of-two parts W1 + W2 + W3 (K = 2880: 1024 +
    512 for 1440 pairs; one power of two would be 2048, and the padding costs issue slots, which is
    what bounds this kernel), each group read once, the next group's load issued before this one's
    arithmetic (a row's amax has to be known before any of its codes). Else rows are walked in
    chunks of W1 pairs twice: amax first, then (the rows still in L1/L2) the codes."""
    n_groups = tl.cdiv(M, BLOCK_M)
    c1 = tl.arange(0, W1)[None, :]
    if ONE_CHUNK:
        c2 = W1 + tl.arange(0, W2)[None, :]
        c3 = W1 + W2 + tl.arange(0, W3)[None, :]
        parts = _per_token_load_parts(x_ptr, tl.program_id(0), c1, c2, c3, M, K, n_pairs, stride_xm, stride_xk,
                                      IS_BF16, WORDS, BLOCK_M)
        for group in range(tl.program_id(0), n_groups, tl.num_programs(0)):
            next_parts = _per_token_load_parts(x_ptr, group + tl.num_programs(0), c1, c2, c3, M, K, n_pairs,
                                               stride_xm, stride_xk, IS_BF16, WORDS, BLOCK_M)
            lo1, hi1, lo2, hi2, lo3, hi3 = parts
            rows = group * BLOCK_M + tl.arange(0, BLOCK_M)
            amax = tl.maximum(tl.maximum(_amax_bits(lo1, hi1), _amax_bits(lo2, hi2)), _amax_bits(lo3, hi3))
            inv, fill, plain = _per_token_scale(amax, s_ptr, rows, M, MAX_FINITE, NAN_CODE, TINY_BITS)
            if plain:  # every row finite with a normal scale: no special values anywhere
                _per_token_store_parts(parts, c1, c2, c3, q_ptr, inv, fill, rows, M, K, n_pairs, stride_qm, PAIR_STORE,
                                       True, MAN_BITS, EMIN, MAX_FINITE, SIGN_SHIFT, HAS_NEG_ZERO, NAN_CODE)
            else:
                _per_token_store_parts(parts, c1, c2, c3, q_ptr, inv, fill, rows, M, K, n_pairs, stride_qm, PAIR_STORE,
                                       False, MAN_BITS, EMIN, MAX_FINITE, SIGN_SHIFT, HAS_NEG_ZERO, NAN_CODE)
            parts = next_parts
    else:
        for group in range(tl.program_id(0), n_groups, tl.num_programs(0)):
            rows = group * BLOCK_M + tl.arange(0, BLOCK_M)
            amax = tl.zeros((BLOCK_M,), tl.int32)
            for p0 in range(0, n_pairs, W1):
                lo, hi = _per_token_load(x_ptr, group, p0 + c1, M, K, n_pairs, stride_xm, stride_xk, IS_BF16, WORDS,
                                         BLOCK_M)
                amax = tl.maximum(amax, _amax_bits(lo, hi))
            inv, fill, plain = _per_token_scale(amax, s_ptr, rows, M, MAX_FINITE, NAN_CODE, TINY_BITS)
            for p0 in range(0, n_pairs, W1):
                lo, hi = _per_token_load(x_ptr, group, p0 + c1, M, K, n_pairs, stride_xm, stride_xk, IS_BF16, WORDS,
                                         BLOCK_M)
                _per_token_store(lo, hi, p0 + c1, q_ptr, inv, fill, rows, M, K, n_pairs, stride_qm, PAIR_STORE, False,
                                 MAN_BITS, EMIN, MAX_FINITE, SIGN_SHIFT, HAS_NEG_ZERO, NAN_CODE)


@triton.jit
def _per_token_load_parts(x_ptr, group, c1, c2, c3, M, K, n_pairs, stride_xm, stride_xk, IS_BF16: tl.constexpr,
                          WORDS: tl.constexpr, BLOCK_M: tl.constexpr):
    lo1, hi1 = _per_token_load(x_ptr, group, c1, M, K, n_pairs, stride_xm, stride_xk, IS_BF16, WORDS, BLOCK_M)
    lo2, hi2 = _per_token_load(x_ptr, group, c2, M, K, n_pairs, stride_xm, stride_xk, IS_BF16, WORDS, BLOCK_M)
    lo3, hi3 = _per_token_load(x_ptr, group, c3, M, K, n_pairs, stride_xm, stride_xk, IS_BF16, WORDS, BLOCK_M)
    return lo1, hi1, lo2, hi2, lo3, hi3


@triton.jit
def _per_token_store_parts(parts, c1, c2, c3, q_ptr, inv, fill, rows, M, K, n_pairs, stride_qm,
                           PAIR_STORE: tl.constexpr, PLAIN: tl.constexpr, MAN_BITS: tl.constexpr, EMIN: tl.constexpr,
                           MAX_FINITE: tl.constexpr, SIGN_SHIFT: tl.constexpr, HAS_NEG_ZERO: tl.constexpr,
                           NAN_CODE: tl.constexpr):
    lo1, hi1, lo2, hi2, lo3, hi3 = parts
    _per_token_store(lo1, hi1, c1, q_ptr, inv, fill, rows, M, K, n_pairs, stride_qm, PAIR_STORE, PLAIN, MAN_BITS,
                     EMIN, MAX_FINITE, SIGN_SHIFT, HAS_NEG_ZERO, NAN_CODE)
    _per_token_store(lo2, hi2, c2, q_ptr, inv, fill, rows, M, K, n_pairs, stride_qm, PAIR_STORE, PLAIN, MAN_BITS,
                     EMIN, MAX_FINITE, SIGN_SHIFT, HAS_NEG_ZERO, NAN_CODE)
    _per_token_store(lo3, hi3, c3, q_ptr, inv, fill, rows, M, K, n_pairs, stride_qm, PAIR_STORE, PLAIN, MAN_BITS,
                     EMIN, MAX_FINITE, SIGN_SHIFT, HAS_NEG_ZERO, NAN_CODE)


@triton.jit
def _amax_bits(lo, hi):
    return tl.max(tl.maximum(lo & 0x7FFFFFFF, hi & 0x7FFFFFFF), axis=1)


@triton.jit
def _per_token_load(x_ptr, group, pairs, M, K, n_pairs, stride_xm, stride_xk, IS_BF16: tl.constexpr,
                    WORDS: tl.constexpr, BLOCK_M: tl.constexpr):
    """Element pairs ``pairs`` [1, P] of row group ``group`` as fp32 patterns (0 past M or K)."""
    rows = group * BLOCK_M + tl.arange(0, BLOCK_M)[:, None]
    x_rows = x_ptr + rows.to(tl.int64) * stride_xm
    return load_pairs(x_rows, pairs, (rows < M) & (pairs < n_pairs), (rows < M) & (2 * pairs + 1 < K),
                      stride_xk, IS_BF16, WORDS)


@triton.jit
def _per_token_scale(amax, s_ptr, rows, M, MAX_FINITE: tl.constexpr, NAN_CODE: tl.constexpr, TINY_BITS: tl.constexpr):
    """Store the rows' scales fl32(amax / max) (NaN for a row with NaN/Inf) -> (fl32(1 / scale) [R, 1],
    the code that overrides every element [R, 1]: 0 for a zero row, NaN for a non-finite one, else -1;
    plain: every row of the group finite with a normal scale (amax >= max * 2^-126), so that
    |x * inv| <= max (1 + 2^-22) rounds to at most max, and no product is NaN or infinite)."""
    finite = amax < 0x7F800000
    scale = tl.math.div_rn(amax.to(tl.float32, bitcast=True), MAX_FINITE)
    inv = tl.math.div_rn(tl.full(amax.shape, 1.0, tl.float32), tl.where(amax == 0, 1.0, scale))
    tl.store(s_ptr + rows, tl.where(finite, scale, float("nan")), mask=rows < M)
    plain = tl.min((finite & (amax >= TINY_BITS)).to(tl.int32), axis=0) == 1
    return inv[:, None], tl.where(amax == 0, 0, tl.where(finite, -1, NAN_CODE))[:, None], plain


@triton.jit
def _per_token_store(lo, hi, pairs, q_ptr, inv, fill, rows, M, K, n_pairs, stride_qm, PAIR_STORE: tl.constexpr,
                     PLAIN: tl.constexpr, MAN_BITS: tl.constexpr, EMIN: tl.constexpr, MAX_FINITE: tl.constexpr,
                     SIGN_SHIFT: tl.constexpr, HAS_NEG_ZERO: tl.constexpr, NAN_CODE: tl.constexpr):
    """Encode and store element pairs (2j, 2j + 1) of the rows: two codes per 16-bit store where K is even."""
    codes_lo = _per_token_codes(lo, inv, fill, PLAIN, MAN_BITS, EMIN, MAX_FINITE, SIGN_SHIFT, HAS_NEG_ZERO, NAN_CODE)
    codes_hi = _per_token_codes(hi, inv, fill, PLAIN, MAN_BITS, EMIN, MAX_FINITE, SIGN_SHIFT, HAS_NEG_ZERO, NAN_CODE)
    q_rows = q_ptr + rows[:, None].to(tl.int64) * stride_qm
    mask_lo = (rows[:, None] < M) & (pairs < n_pairs)
    if PAIR_STORE:  # q_ptr: the codes viewed as int16, element 2j in the low byte
        tl.store(q_rows + pairs, (codes_lo | (codes_hi << 8)).to(tl.int16), mask=mask_lo)
    else:
        tl.store(q_rows + 2 * pairs, codes_lo.to(tl.uint8), mask=mask_lo)
        tl.store(q_rows + 2 * pairs + 1, codes_hi.to(tl.uint8), mask=(rows[:, None] < M) & (2 * pairs + 1 < K))


@triton.jit
def _per_token_codes(bits, inv, fill, PLAIN: tl.constexpr, MAN_BITS: tl.constexpr, EMIN: tl.constexpr,
                     MAX_FINITE: tl.constexpr, SIGN_SHIFT: tl.constexpr, HAS_NEG_ZERO: tl.constexpr,
                     NAN_CODE: tl.constexpr):
    """Codes of fl32(x * inv) (``_per_token_scale``). PLAIN: |x| * inv needs no clamp or checks; else
    clamped, NaN products (0 * inf when 1/scale overflows) give NaN, and ``fill`` >= 0 overrides."""
    if PLAIN:
        v = tl.abs(bits.to(tl.float32, bitcast=True)) * inv
        codes = encode_magnitude(v, bits, MAN_BITS, EMIN, SIGN_SHIFT, HAS_NEG_ZERO)
    else:
        scaled = (bits.to(tl.float32, bitcast=True) * inv).to(tl.int32, bitcast=True)
        codes = encode_scaled(scaled, tl.full(scaled.shape, 127, tl.int32), MAN_BITS, EMIN, MAX_FINITE, SIGN_SHIFT,
                              HAS_NEG_ZERO)
        codes = tl.where((scaled & 0x7FFFFFFF) > 0x7F800000, NAN_CODE, codes)
        codes = tl.where(fill >= 0, fill, codes)
    return codes


def _check_input(x, *, need_k32: bool) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x: expected a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in (torch.bfloat16, torch.float32):
        raise TypeError(f"x: expected dtype torch.bfloat16 or torch.float32, got {x.dtype}")
    if x.dim() != 2:
        raise ValueError(f"x: expected a 2-D tensor [M, K], got shape {list(x.shape)}")
    if need_k32 and x.shape[1] % _MX_BLOCK:
        raise ValueError(f"x: K={x.shape[1]} is not a multiple of {_MX_BLOCK} (one e8m0 scale per 32 values)")


def _bits_view(x: torch.Tensor) -> torch.Tensor:
    return x.view(torch.int16) if x.dtype == torch.bfloat16 else x.view(torch.int32)


def _words_view(x: torch.Tensor) -> torch.Tensor | None:
    """bf16 [M, K] with unit K stride as int32 words [M, K/2] (pairs of elements), if it can be viewed so."""
    if x.dtype != torch.bfloat16 or x.stride(1) != 1 or x.shape[1] % 2 or x.stride(0) % 2 or x.storage_offset() % 2:
        return None
    return x.view(torch.int32)


def _mx_launch(x, M, K, pack, variant=()):
    """(grid, kernel arguments) of one MX quantization of x [M, K] into q [M, K/2 or K] and scales
    [M, K/32] (both contiguous). A row-contiguous x is seen as [M * K/32, 32]: one row per 32-block,
    so tiles never straddle the end of a row (K = 2880 in 256-wide tiles would leave the last tile
    of each row a quarter full); else 2-D tiles of configs.json's "quant" entry."""
    tile = CONFIGS["quant"]
    words = _words_view(x)
    x_arg = words if words is not None else _bits_view(x)
    row_len = K // 2 if words is not None else K
    if x.stride(1) == 1 and x_arg.stride(0) == row_len:  # flat: 32-blocks as rows
        rows, cols, block_m, block_k = M * K // 32, 32, tile["flat_blocks"], 32
        stride_xm, stride_q, stride_s = x_arg.stride(0) * 32 // K, (16 if pack else 32), 1
    else:
        block_k = min(tile["block_k"], triton.next_power_of_2(K))
        rows, cols, block_m = M, K, max(1, tile["block_m"] * tile["block_k"] // block_k)
        stride_xm, stride_q, stride_s = x_arg.stride(0), (K // 2 if pack else K), K // 32
    col_tiles = triton.cdiv(cols, block_k)
    q_stride = stride_q // (1 if pack else 2)  # fp8 codes are stored as int16 pairs
    args = (x_arg, rows, cols, stride_xm, x.stride(1), q_stride, stride_s)
    meta = dict(IS_BF16=x.dtype == torch.bfloat16, WORDS=words is not None, BLOCK_M=block_m, BLOCK_K=block_k,
                num_warps=tile["num_warps"])
    key = ("mx", pack, variant, tuple(sorted(meta.items())))  # one compiled kernel: one occupancy
    grid = (max(1, _persistent.programs(key, triton.cdiv(rows, block_m), tile["programs_per_sm"], x.device)
                // col_tiles), col_tiles)
    return grid, args, meta, key


def _per_token_launch(x, K, variant=()):
    """(grid, kernel arguments) of the per-token quantization of x [M, K] into contiguous codes: word
    pairs where x allows, int16 pair stores where K is even; tile and persistent grid from
    configs.json's "per_token"."""
    tile = CONFIGS["per_token"]
    words = _words_view(x)
    x_arg, stride_xm = (words, words.stride(0)) if words is not None else (_bits_view(x), x.stride(0))
    pair_store = K % 2 == 0
    n_pairs = (K + 1) // 2
    one_chunk = n_pairs <= tile["max_pairs"]
    widths = _three_powers_of_two(n_pairs) if one_chunk else (tile["max_pairs"], 1, 1)
    pairs_p2 = triton.next_power_of_2(min(n_pairs, tile["max_pairs"]))
    block_m = max(1, tile["tile_pairs"] // pairs_p2)
    warps = min(16, max(4, block_m * pairs_p2 // tile["pairs_per_thread"] // 32))
    groups = triton.cdiv(x.shape[0], block_m)
    meta = dict(IS_BF16=x.dtype == torch.bfloat16, WORDS=words is not None, PAIR_STORE=pair_store,
                BLOCK_M=block_m, W1=widths[0], W2=widths[1], W3=widths[2], ONE_CHUNK=one_chunk, num_warps=warps)
    key = ("per_token", variant, tuple(sorted(meta.items())))
    grid = _persistent.programs(key, groups, tile["programs_per_sm"], x.device)
    return (grid,), (x_arg, stride_xm, x.stride(1), K // 2 if pair_store else K), meta, key


def _three_powers_of_two(n: int) -> tuple[int, int, int]:
    """Powers of two w1 >= w2 >= w3 with w1 + w2 + w3 >= n and the fewest padded lanes, then the
    fewest parts (1440 -> 1024, 512, -; 3584 -> 2048, 1024, 512); a part not needed is 1 (past the
    row's end: fully masked)."""
    w1 = 1 << (n.bit_length() - 1)
    rest = n - w1
    if rest == 0:
        return w1, 1, 1
    two = (w1, triton.next_power_of_2(rest), 1)
    w2 = 1 << (rest.bit_length() - 1)
    three = (w1, w2, triton.next_power_of_2(rest - w2) if rest > w2 else 1)
    return two if sum(two[:2]) <= sum(three) - (three[2] == 1) else three


def _mx_quantize(x, fmt, scale_mode, pack):
    _check_input(x, need_k32=True)
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
        compiled = _mx_quant_kernel[grid](x_arg, q if pack else q.view(torch.int16), s, rows, cols, stride_xm,
                                          stride_xk, stride_q, stride_s, PACK_FP4=pack, MODE=mode, **meta,
                                          **kf.constexprs())
        _persistent.record(key, xd.device, compiled, meta["num_warps"])
    return q.to(x.device), s.to(x.device)


def quantize_mxfp4(x: torch.Tensor, *, scale_mode="round_up"):
    """MXFP4 of x [M, K] (bf16 or fp32) along K -> (packed uint8 [M, K/2], scale_e8m0 uint8 [M, K/32]).

    Bit-exact with ``emulation.quantize_mxfp4(x, scale_mode=...)`` (ties to even, satfinite).
    """
    return _mx_quantize(x, "e2m1", scale_mode, pack=True)


def quantize_mxfp8(x: torch.Tensor, *, fmt="e4m3fn", scale_mode="round_up", as_float8: bool = False):
    """MXFP8 of x [M, K] along K -> (codes [M, K], scale_e8m0 uint8 [M, K/32]); fmt e4m3fn or e4m3fnuz.

    Codes are uint8, or a view as torch's float8 dtype with ``as_float8=True``.
    """
    f = em.get_format(fmt)
    if f.name not in _FLOAT8:
        raise ValueError(f"fmt={fmt!r} is not valid; expected one of {list(_FLOAT8)}")
    codes, scale = _mx_quantize(x, f.name, scale_mode, pack=False)
    return (codes.view(_FLOAT8[f.name]) if as_float8 else codes), scale


def quantize_fp8_per_token(x: torch.Tensor, *, fmt="e4m3fn", as_float8: bool = False):
    """Per-row fp8: scale = fl32(amax / max), codes of fl32(x * fl32(1 / scale)) -> (codes [M, K], scale fp32 [M, 1]).

    Bit-exact with ``emulation.quantize_fp8_per_token(x, fmt=fmt, reciprocal=True)``.
    """
    f = em.get_format(fmt)
    if f.name not in _FLOAT8:
        raise ValueError(f"fmt={fmt!r} is not valid; expected one of {list(_FLOAT8)}")
    _check_input(x, need_k32=False)
    kf = KernelFormat.of(f)
    device = _runtime.launch_device(x)
    xd = x.to(device)
    M, K = xd.shape
    q = torch.empty((M, K), dtype=torch.uint8, device=device)
    s = torch.empty((M, 1), dtype=torch.float32, device=device)
    if M and K:
        grid, (x_arg, stride_xm, stride_xk, stride_q), meta, key = _per_token_launch(xd, K, (f.name,))
        compiled = _fp8_per_token_kernel[grid](x_arg, q.view(torch.int16) if meta["PAIR_STORE"] else q, s, M, K,
                                               (K + 1) // 2, stride_xm, stride_xk, stride_q, **meta, **kf.constexprs())
        _persistent.record(key, xd.device, compiled, meta["num_warps"])
    elif M:
        s.zero_()
    q, s = q.to(x.device), s.to(x.device)
    return (q.view(_FLOAT8[f.name]) if as_float8 else q), s
