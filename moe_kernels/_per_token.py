"""Per-token fp8 quantization kernel (``quant.quantize_fp8_per_token``): one fp32 scale per row,
codes of fl32(x * fl32(1 / scale)), the emulation's bytes.

A persistent program owns row groups; a row that fits 4096 element pairs is read once, held in
registers as up to three power-of-two parts, and the next group's load is issued before this one's
arithmetic (a row's amax must be known before any of its codes). Longer rows are read twice
(amax, then codes, from L1/L2).
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from . import _persistent
from ._numerics import encode_magnitude, encode_scaled
from ._rows import bits_view, load_pairs, words_view
from ._tuning import CONFIGS


@triton.jit
def fp8_per_token_kernel(x_ptr, q_ptr, s_ptr, M, K, n_pairs, stride_xm, stride_xk, stride_qm,
                         IS_BF16: tl.constexpr, WORDS: tl.constexpr, PAIR_STORE: tl.constexpr,
                         BLOCK_M: tl.constexpr, W1: tl.constexpr, W2: tl.constexpr, W3: tl.constexpr,
                         ONE_CHUNK: tl.constexpr, ONE_REDUCTION: tl.constexpr, F: tl.constexpr):
    """Persistent: program p owns row groups p, p + P, ... of BLOCK_M rows.

    ONE_CHUNK: a row's element pairs are up to three power-of-two parts W1 + W2 + W3 (K = 2880: 3 x
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
            if ONE_REDUCTION:  # parts of width W1 or 1 (broadcast; fully masked): one cross-warp reduction
                amax = tl.max(tl.maximum(tl.maximum(_abs_max(lo1, hi1), _abs_max(lo2, hi2)), _abs_max(lo3, hi3)),
                              axis=1)
            else:
                amax = tl.maximum(tl.maximum(_amax_bits(lo1, hi1), _amax_bits(lo2, hi2)), _amax_bits(lo3, hi3))
            inv, fill, plain = _per_token_scale(amax, s_ptr, rows, M, F)
            if plain:  # every row finite with a normal scale: no special values anywhere
                _per_token_store_parts(parts, c1, c2, c3, q_ptr, inv, fill, rows, M, K, n_pairs, stride_qm, PAIR_STORE,
                                       True, F)
            else:
                _per_token_store_parts(parts, c1, c2, c3, q_ptr, inv, fill, rows, M, K, n_pairs, stride_qm, PAIR_STORE,
                                       False, F)
            parts = next_parts
    else:
        for group in range(tl.program_id(0), n_groups, tl.num_programs(0)):
            rows = group * BLOCK_M + tl.arange(0, BLOCK_M)
            amax = tl.zeros((BLOCK_M,), tl.int32)
            for p0 in range(0, n_pairs, W1):
                lo, hi = _per_token_load(x_ptr, group, p0 + c1, M, K, n_pairs, stride_xm, stride_xk, IS_BF16, WORDS,
                                         BLOCK_M)
                amax = tl.maximum(amax, _amax_bits(lo, hi))
            inv, fill, plain = _per_token_scale(amax, s_ptr, rows, M, F)
            for p0 in range(0, n_pairs, W1):
                lo, hi = _per_token_load(x_ptr, group, p0 + c1, M, K, n_pairs, stride_xm, stride_xk, IS_BF16, WORDS,
                                         BLOCK_M)
                _per_token_store(lo, hi, p0 + c1, q_ptr, inv, fill, rows, M, K, n_pairs, stride_qm, PAIR_STORE, False,
                                 F)


@triton.jit
def _per_token_load_parts(x_ptr, group, c1, c2, c3, M, K, n_pairs, stride_xm, stride_xk, IS_BF16: tl.constexpr,
                          WORDS: tl.constexpr, BLOCK_M: tl.constexpr):
    lo1, hi1 = _per_token_load(x_ptr, group, c1, M, K, n_pairs, stride_xm, stride_xk, IS_BF16, WORDS, BLOCK_M)
    lo2, hi2 = _per_token_load(x_ptr, group, c2, M, K, n_pairs, stride_xm, stride_xk, IS_BF16, WORDS, BLOCK_M)
    lo3, hi3 = _per_token_load(x_ptr, group, c3, M, K, n_pairs, stride_xm, stride_xk, IS_BF16, WORDS, BLOCK_M)
    return lo1, hi1, lo2, hi2, lo3, hi3


@triton.jit
def _per_token_store_parts(parts, c1, c2, c3, q_ptr, inv, fill, rows, M, K, n_pairs, stride_qm,
                           PAIR_STORE: tl.constexpr, PLAIN: tl.constexpr, F: tl.constexpr):
    lo1, hi1, lo2, hi2, lo3, hi3 = parts
    _per_token_store(lo1, hi1, c1, q_ptr, inv, fill, rows, M, K, n_pairs, stride_qm, PAIR_STORE, PLAIN, F)
    _per_token_store(lo2, hi2, c2, q_ptr, inv, fill, rows, M, K, n_pairs, stride_qm, PAIR_STORE, PLAIN, F)
    _per_token_store(lo3, hi3, c3, q_ptr, inv, fill, rows, M, K, n_pairs, stride_qm, PAIR_STORE, PLAIN, F)


@triton.jit
def _abs_max(lo, hi):
    return tl.maximum(lo & 0x7FFFFFFF, hi & 0x7FFFFFFF)


@triton.jit
def _amax_bits(lo, hi):
    return tl.max(_abs_max(lo, hi), axis=1)


@triton.jit
def _per_token_load(x_ptr, group, pairs, M, K, n_pairs, stride_xm, stride_xk, IS_BF16: tl.constexpr,
                    WORDS: tl.constexpr, BLOCK_M: tl.constexpr):
    """Element pairs ``pairs`` [1, P] of row group ``group`` as fp32 patterns (0 past M or K)."""
    rows = group * BLOCK_M + tl.arange(0, BLOCK_M)[:, None]
    x_rows = x_ptr + rows.to(tl.int64) * stride_xm
    return load_pairs(x_rows, pairs, (rows < M) & (pairs < n_pairs), (rows < M) & (2 * pairs + 1 < K),
                      stride_xk, IS_BF16, WORDS)


@triton.jit
def _per_token_scale(amax, s_ptr, rows, M, F: tl.constexpr):
    """Store the rows' scales fl32(amax / max) (NaN for a row with NaN/Inf) -> (fl32(1 / scale) [R, 1],
    the code that overrides every element [R, 1]: 0 for a zero row, NaN for a non-finite one, else -1;
    plain: every row of the group finite with a normal scale (amax >= max * 2^-126), so that
    |x * inv| <= max (1 + 2^-22) rounds to at most max, and no product is NaN or infinite)."""
    finite = amax < 0x7F800000
    scale = tl.math.div_rn(amax.to(tl.float32, bitcast=True), F.max_finite)
    inv = tl.math.div_rn(tl.full(amax.shape, 1.0, tl.float32), tl.where(amax == 0, 1.0, scale))
    tl.store(s_ptr + rows, tl.where(finite, scale, float("nan")), mask=rows < M)
    plain = tl.min((finite & (amax >= F.tiny_bits)).to(tl.int32), axis=0) == 1
    return inv[:, None], tl.where(amax == 0, 0, tl.where(finite, -1, F.nan_code))[:, None], plain


@triton.jit
def _per_token_store(lo, hi, pairs, q_ptr, inv, fill, rows, M, K, n_pairs, stride_qm, PAIR_STORE: tl.constexpr,
                     PLAIN: tl.constexpr, F: tl.constexpr):
    """Encode and store element pairs (2j, 2j + 1) of the rows: two codes per 16-bit store where K is even."""
    codes_lo = _per_token_codes(lo, inv, fill, PLAIN, F)
    codes_hi = _per_token_codes(hi, inv, fill, PLAIN, F)
    q_rows = q_ptr + rows[:, None].to(tl.int64) * stride_qm
    mask_lo = (rows[:, None] < M) & (pairs < n_pairs)
    if PAIR_STORE:  # q_ptr: the codes viewed as int16, element 2j in the low byte
        tl.store(q_rows + pairs, (codes_lo | (codes_hi << 8)).to(tl.int16), mask=mask_lo)
    else:
        tl.store(q_rows + 2 * pairs, codes_lo.to(tl.uint8), mask=mask_lo)
        tl.store(q_rows + 2 * pairs + 1, codes_hi.to(tl.uint8), mask=(rows[:, None] < M) & (2 * pairs + 1 < K))


@triton.jit
def _per_token_codes(bits, inv, fill, PLAIN: tl.constexpr, F: tl.constexpr):
    """Codes of fl32(x * inv) (``_per_token_scale``). PLAIN: |x| * inv needs no clamp or checks; else
    clamped, NaN products (0 * inf when 1/scale overflows) give NaN, and ``fill`` >= 0 overrides."""
    if PLAIN:
        v = tl.abs(bits.to(tl.float32, bitcast=True)) * inv
        codes = encode_magnitude(v, bits, F)
    else:
        scaled = (bits.to(tl.float32, bitcast=True) * inv).to(tl.int32, bitcast=True)
        codes = encode_scaled(scaled, tl.full(scaled.shape, 127, tl.int32), F)
        codes = tl.where((scaled & 0x7FFFFFFF) > 0x7F800000, F.nan_code, codes)
        codes = tl.where(fill >= 0, fill, codes)
    return codes


def launch(x, K, variant=()):
    """(grid, kernel arguments, meta, occupancy key) of the per-token quantization of x [M, K] into
    contiguous codes: word pairs where x allows, int16 pair stores where K is even; the tiling
    (``_tiling``, cached) and the persistent grid from configs.json's "per_token"."""
    tile = CONFIGS["per_token"]
    words = words_view(x)
    x_arg, stride_xm = (words, words.stride(0)) if words is not None else (bits_view(x), x.stride(0))
    meta, key = _tiling(K, x.dtype, words is not None, variant,
                        tuple(tile[k] for k in ("max_pairs", "tile_pairs", "pairs_per_thread")))
    grid = _persistent.programs(key, triton.cdiv(x.shape[0], meta["BLOCK_M"]), tile["programs_per_sm"], x.device)
    n_pairs = (K + 1) // 2
    return (grid,), (x_arg, n_pairs, stride_xm, x.stride(1), K // 2 if meta["PAIR_STORE"] else K), dict(meta), key


@functools.lru_cache(maxsize=256)
def _tiling(K, dtype, words, variant, tile):
    """Rows of a group and warps such that each thread holds pairs_per_thread pairs of the widest part
    (``tile``: configs.json's max_pairs, tile_pairs, pairs_per_thread; part of the cache key)."""
    max_pairs, tile_pairs, pairs_per_thread = tile
    n_pairs = (K + 1) // 2
    one_chunk = n_pairs <= max_pairs
    widths = row_parts(n_pairs) if one_chunk else (max_pairs, 1, 1)
    block_m = max(1, tile_pairs // triton.next_power_of_2(min(n_pairs, max_pairs)))
    warps = min(16, max(4, block_m * widths[0] // pairs_per_thread // 32))
    meta = dict(IS_BF16=dtype == torch.bfloat16, WORDS=words, PAIR_STORE=K % 2 == 0,
                BLOCK_M=block_m, W1=widths[0], W2=widths[1], W3=widths[2], ONE_CHUNK=one_chunk,
                ONE_REDUCTION=all(w in (1, widths[0]) for w in widths), num_warps=warps)
    return meta, ("per_token", variant, tuple(sorted(meta.items())))


@functools.cache
def row_parts(n: int) -> tuple[int, int, int]:
    """Powers of two w1 >= w2 >= w3 with w1 + w2 + w3 >= n and the fewest lanes; among those, equal
    widths (one amax reduction instead of one per part), then the fewest parts (1440 -> 512 x 3;
    3584 -> 2048, 1024, 512; 4096 -> 4096, 1, 1). A part past the row's end (width 1) is fully masked."""
    powers = [1 << i for i in range(triton.next_power_of_2(n).bit_length())]
    triples = [(a, b, c) for a in powers for b in powers if b <= a for c in powers if c <= b and a + b + c >= n]

    def rank(ws):
        used = [w for w, start in zip(ws, (0, ws[0], ws[0] + ws[1])) if start < n]
        return sum(used), len(set(used)) > 1, len(used)
    return min(triples, key=rank)
