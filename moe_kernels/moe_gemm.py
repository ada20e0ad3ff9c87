"""The two grouped GEMMs of the MoE, with SwiGLU and the stage-2 quantizer fused into stage 1.

Both kernels walk the ``moe_align_block_size`` layout: program (b, n) owns block b of BLOCK_M sorted
(token, slot) pairs, all routed to one expert, and BLOCK_N output columns. Operands are decoded
exactly to bf16 tiles in registers (e2m1 / e4m3 values times an e8m0 scale are exact in bf16 for
every scale of real tensors) and multiplied on the tensor cores with fp32 accumulation. Activations
come in as bf16: the dispatcher decodes the quantized stage-1 input once (``_dequant_rows_kernel``)
instead of every column tile decoding it again, and stage 1 stores the stage-2 input as the bf16
values of its quantized codes (the codes and scales themselves only when asked for).

Stage 1: A = the token's quantized hidden row, W = w1[e] gate and up rows (SEPARATED: j and I + j;
INTERLEAVE: 2j and 2j + 1) -> two fp32 accumulators -> + bias1 -> activation (``moe_ref.activation``,
fp32, correctly rounded division) -> (routing weight) -> the stage-2 quantizer (bf16 RNE, or MX per
32 columns along I with the same scale mode) -> intermediate row of the pair, as bf16 values.
Stage 2: A = the pair's intermediate row, W = w2[e] -> + bias2 -> (routing weight) -> y[pair] fp32.
"""

from __future__ import annotations

from typing import NamedTuple

import triton
import triton.language as tl

from moe_ref.paths import ACTIVATION_PATHS

from ._decode import decode_scaled_bits, e2m1x2_to_bf16, e2m1x8_words_to_bf16
from ._numerics import KernelFormat, f32_to_bf16_bits, mx_quantize_pairs

# the activation paths' kinds (moe_ref.paths): the kernels' KIND / OUT_KIND constexpr, named here for the branches
KIND_BF16, KIND_FP4, KIND_FP8 = (tl.constexpr(ACTIVATION_PATHS[d].kind) for d in ("bf16", "fp4x2", "fp8"))
WEIGHT_FORMAT = KernelFormat.of("e2m1")  # the GEMMs' W constexpr: MXFP4 weights


class GatedActivation(NamedTuple):
    """Stage 1's activation as one constexpr: kind (0 SwiGLU, 1 SiLU-gated; ``moe_ref.activation``)
    and SwiGLU's alpha and limit."""

    kind: int
    alpha: float
    limit: float


@triton.jit
def mma(a, b, acc, INTERPRET: tl.constexpr):
    """acc + a @ b for exact bf16 tiles. The Triton interpreter (3.9) multiplies bf16 tiles as raw
    integers, so there both are widened to fp32 (exactly) and multiplied in IEEE fp32."""
    if INTERPRET:
        out = tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    else:
        out = tl.dot(a, b, acc)
    return out


@triton.jit
def zeros_acc(BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, W_LEFT: tl.constexpr):
    """A GEMM accumulator: [BLOCK_M, BLOCK_N] fp32 zeros, transposed with W_LEFT (``weight_mma``)."""
    if W_LEFT:
        acc = tl.zeros((BLOCK_N, BLOCK_M), tl.float32)
    else:
        acc = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
    return acc


@triton.jit
def weight_mma(a, w, acc, W_LEFT: tl.constexpr, INTERPRET: tl.constexpr):
    """acc + a @ w^T for activations a [BLOCK_M, K] and decoded weights w [BLOCK_N, K]. W_LEFT: acc is
    held transposed and the product is acc^T + w @ a^T, the weights the MMA's left operand, which
    Hopper's wgmma reads from registers (the decoded tile never goes through shared memory; the
    weights then come in ``moe_kernels.prepared``'s layout). Same products, fp32 sums either way."""
    if W_LEFT:
        out = mma(w, tl.trans(a), acc, INTERPRET)
    else:
        out = mma(a, tl.trans(w), acc, INTERPRET)
    return out


@triton.jit
def acc_rows_first(acc, W_LEFT: tl.constexpr):
    """The accumulator as [BLOCK_M, BLOCK_N] (the epilogue's orientation)."""
    if W_LEFT:
        acc = tl.trans(acc)
    return acc


@triton.jit
def load_scale_bytes(scale_ptr, rows, scale_stride, k0, K, row_mask, BLOCK_K: tl.constexpr):
    """The e8m0 bytes of columns k0 .. k0 + BLOCK_K of rows ``rows``, int32 [R, BLOCK_K/32, 1] (0 masked)."""
    sb = k0 // 32 + tl.arange(0, BLOCK_K // 32)
    return tl.load(scale_ptr + rows[:, None] * scale_stride + sb[None, :],
                   mask=row_mask[:, None] & (sb < K // 32)[None, :], other=0).to(tl.int32)[:, :, None]


@triton.jit
def load_fp4x2_blocks(ptr, rows, stride, k0, K, row_mask, BLOCK_K: tl.constexpr):
    """fp4x2 bytes of columns k0 .. k0 + BLOCK_K of rows ``rows`` (one contiguous load of BLOCK_K/2 bytes
    a row), uint8 [R, BLOCK_K/32, 16]: byte j holds element 2j in its low nibble, 2j + 1 in its high."""
    R: tl.constexpr = rows.shape[0]
    j = k0 // 2 + tl.arange(0, BLOCK_K // 2)
    packed = tl.load(ptr + rows[:, None] * stride + j[None, :], mask=row_mask[:, None] & (j < K // 2)[None, :],
                     other=0)
    return tl.reshape(packed, (R, BLOCK_K // 32, 16))


@triton.jit
def load_rows_f32_bits(ptr, scale_ptr, rows, stride, scale_stride, k0, K, row_mask, KIND: tl.constexpr,
                       BLOCK_K: tl.constexpr, F: tl.constexpr):
    """Columns k0 .. k0 + BLOCK_K of rows ``rows`` of an MX operand [rows, K], decoded exactly to fp32
    patterns (int32; every value is a bf16).

    KIND 1: fp4x2 (K/2 bytes a row) with e8m0 scales (K/32 a row): one contiguous load of BLOCK_K/2
    bytes and BLOCK_K/32 scale bytes per row, low and high nibbles decoded apart and interleaved back
    (element 2j is byte j's low nibble). KIND 2: e4m3 codes with e8m0 scales. K is a multiple of 32,
    so masks hold per 32-block.
    """
    NB: tl.constexpr = BLOCK_K // 32
    R: tl.constexpr = rows.shape[0]
    byte = load_scale_bytes(scale_ptr, rows, scale_stride, k0, K, row_mask, BLOCK_K)
    if KIND == KIND_FP4:
        packed = load_fp4x2_blocks(ptr, rows, stride, k0, K, row_mask, BLOCK_K).to(tl.int32)
        lo = decode_scaled_bits(packed & 0xF, byte, F)
        hi = decode_scaled_bits(packed >> 4, byte, F)
        bits = tl.reshape(tl.join(lo, hi), (R, BLOCK_K))
    else:
        k = k0 + tl.arange(0, BLOCK_K)
        code = tl.load(ptr + rows[:, None] * stride + k[None, :], mask=row_mask[:, None] & (k < K)[None, :],
                       other=0).to(tl.int32)
        bits = tl.reshape(decode_scaled_bits(tl.reshape(code, (R, NB, 32)), byte, F), (R, BLOCK_K))
    return bits


@triton.jit
def load_bf16_rows(ptr, rows, stride, k0, K, row_mask, BLOCK_K: tl.constexpr):
    """Columns k0 .. k0 + BLOCK_K of rows ``rows`` of a bf16 [rows, K] operand."""
    k = k0 + tl.arange(0, BLOCK_K)
    return tl.load(ptr + rows[:, None] * stride + k[None, :], mask=row_mask[:, None] & (k < K)[None, :], other=0.0)


@triton.jit
def load_mxfp4_rows_bf16(ptr, scale_ptr, rows, stride, scale_stride, k0, K, row_mask, BLOCK_K: tl.constexpr,
                         W: tl.constexpr, PTX: tl.constexpr = False, PREPARED: tl.constexpr = False):
    """Columns k0 .. k0 + BLOCK_K of rows ``rows`` of an MXFP4 weight matrix (format W; PREPARED: weights
    and scales in ``moe_kernels.prepared``'s layouts, BLOCK_K 64, 128, 256 or 512) as an exact bf16 tile. The weight decode
    is what MoE GEMMs issue most instructions for: ``_decode.e2m1x2_to_bf16`` (PTX: NVIDIA's bf16x2
    decode, ~3 instructions a weight; else the portable fp32 one, ~9), ``e2m1x8_words_to_bf16`` for
    prepared weights (PTX: ~2 a weight)."""
    R: tl.constexpr = rows.shape[0]
    if PREPARED:
        tl.static_assert(BLOCK_K % 64 == 0 and 512 % BLOCK_K == 0, "prepared weights: BLOCK_K 64, 128, 256 or 512")
        G: tl.constexpr = BLOCK_K // 64
        j = k0 // 8 + tl.arange(0, BLOCK_K // 8)  # words: in each 64-wide group, lane q's block b at 2q + b
        words = tl.load(ptr.to(tl.pointer_type(tl.int32)) + rows[:, None] * (stride // 4) + j[None, :],
                        mask=row_mask[:, None] & (j < tl.cdiv(K, 64) * 8)[None, :], other=0)
        words = tl.reshape(words, (R, G, 4, 2))
        # scale bytes as 32-bit words of 4 blocks (rows padded to 16 bytes, zeros past K): loads that Triton's
        # pipeline copies ahead like the words (byte loads it issues in the loop and waits for, triton 3.6-3.9)
        if G == 1:  # this step's half of its 128-wide group's word
            sw = tl.load(scale_ptr.to(tl.pointer_type(tl.int32)) + rows * (scale_stride // 4) + k0 // 128,
                         mask=row_mask, other=0)
            byte = (sw[:, None] >> (16 * ((k0 // 64) % 2) + 8 * tl.arange(0, 2))[None, :]) & 255
        else:  # one word a 128-wide group, its bytes split by joins (shifts by a [G, 2] tensor of offsets
            # instead made Triton convert the decoded tile through shared memory)
            sw = tl.load(scale_ptr.to(tl.pointer_type(tl.int32)) + rows[:, None] * (scale_stride // 4)
                         + (k0 // 128 + tl.arange(0, G // 2))[None, :], mask=row_mask[:, None], other=0)
            even = tl.join(sw & 255, (sw >> 8) & 255)  # [R, G/2, b]: the even 64-wide group's two blocks
            odd = tl.join((sw >> 16) & 255, (sw >> 24) & 255)
            byte = tl.permute(tl.join(even, odd), (0, 1, 3, 2))  # [R, G/2, group parity, b]
        byte = tl.broadcast_to(tl.reshape(byte, (R, G, 1, 2)), (R, G, 4, 2))
        p0, p1, p2, p3 = e2m1x8_words_to_bf16(words, byte, PTX)
        pairs = tl.join(tl.join(p0, p1), tl.join(p2, p3))  # [R, G, q, b, u, t]: pair 2t + u
        halves = tl.join(pairs.to(tl.int16), (pairs >> 16).to(tl.int16))  # [.., h]
        tile = tl.reshape(tl.permute(halves, (0, 1, 3, 5, 4, 2, 6)), (R, BLOCK_K))  # k = 64g + 32b + 16t + 8u + 2q + h
    else:
        byte = load_scale_bytes(scale_ptr, rows, scale_stride, k0, K, row_mask, BLOCK_K)
        packed = load_fp4x2_blocks(ptr, rows, stride, k0, K, row_mask, BLOCK_K)
        lo, hi = e2m1x2_to_bf16(packed, byte, W, PTX)
        tile = tl.reshape(tl.join(lo, hi), (R, BLOCK_K))
    return tile.to(tl.bfloat16, bitcast=True)


@triton.jit
def _dequant_rows_kernel(q_ptr, s_ptr, out_ptr, R, K, stride_q, stride_s, stride_o, KIND: tl.constexpr,
                         BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr, F: tl.constexpr):
    """MX rows (KIND 1 fp4x2 / 2 e4m3, with e8m0 scales) -> their exact bf16 values, stored as bf16
    patterns (``out_ptr`` int16): the GEMMs then read each activation once instead of decoding it again
    in every column tile (the products, and so the results, are the same)."""
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    k0 = tl.program_id(1) * BLOCK_K
    bits = load_rows_f32_bits(q_ptr, s_ptr, rows, stride_q, stride_s, k0, K, rows < R, KIND, BLOCK_K, F)
    cols = k0 + tl.arange(0, BLOCK_K)
    tl.store(out_ptr + rows[:, None].to(tl.int64) * stride_o + cols[None, :], (bits >> 16).to(tl.int16),
             mask=(rows < R)[:, None] & (cols < K)[None, :])


@triton.jit
def store_quantized_rows(val_ptr, out_ptr, out_scale_ptr, h, rows, col0, row_mask, ncols, stride_v, stride,
                         scale_stride, KIND: tl.constexpr, MODE: tl.constexpr, STORE_CODES: tl.constexpr,
                         BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, F: tl.constexpr):
    """Quantize fp32 h [BLOCK_M, BLOCK_N] (columns col0 + arange) along the columns; store the quantized
    values as bf16 patterns (``val_ptr`` int16: what stage 2 reads; the MX values decoded exactly as
    ``_dequant_rows_kernel`` does, without a pass of their own) and, with STORE_CODES, the MX codes
    (``out_ptr``) and scale bytes (``out_scale_ptr``)."""
    cols = col0 + tl.arange(0, BLOCK_N)
    col_mask = cols < ncols
    mask = row_mask[:, None] & col_mask[None, :]
    if KIND == KIND_BF16:
        tl.store(val_ptr + rows[:, None] * stride_v + cols[None, :], f32_to_bf16_bits(h).to(tl.int16), mask=mask)
    else:
        NB: tl.constexpr = BLOCK_N // 32
        HALF: tl.constexpr = BLOCK_N // 2
        bits = tl.where(mask, h.to(tl.int32, bitcast=True), 0)
        lo, hi = tl.split(tl.reshape(bits, (BLOCK_M, HALF, 2)))
        codes_lo, codes_hi, byte = mx_quantize_pairs(
            tl.reshape(lo, (BLOCK_M, NB, 16)), tl.reshape(hi, (BLOCK_M, NB, 16)), MODE, F)
        codes = tl.reshape(tl.join(codes_lo, codes_hi), (BLOCK_M, NB, 32))  # element order within each block
        vals = tl.reshape(decode_scaled_bits(codes, byte[:, :, None], F), (BLOCK_M, BLOCK_N))
        tl.store(val_ptr + rows[:, None] * stride_v + cols[None, :], (vals >> 16).to(tl.int16), mask=mask)
        if STORE_CODES:
            if KIND == KIND_FP4:
                pcols = col0 // 2 + tl.arange(0, HALF)
                tl.store(out_ptr + rows[:, None] * stride + pcols[None, :],
                         tl.reshape(codes_lo | (codes_hi << 4), (BLOCK_M, HALF)).to(tl.uint8),
                         mask=row_mask[:, None] & (pcols < ncols // 2)[None, :])
            else:
                tl.store(out_ptr + rows[:, None] * stride + cols[None, :],
                         tl.reshape(codes, (BLOCK_M, BLOCK_N)).to(tl.uint8), mask=mask)
            scols = col0 // 32 + tl.arange(0, NB)
            tl.store(out_scale_ptr + rows[:, None] * scale_stride + scols[None, :], byte.to(tl.uint8),
                     mask=row_mask[:, None] & (scols < ncols // 32)[None, :])


@triton.jit
def program_block(sorted_ptr, expert_ptr, num_valid, N, w_ptr, ws_ptr, stride_we, stride_wse, BLOCK_M: tl.constexpr,
                  BLOCK_N: tl.constexpr):
    """This program's block of sorted (token, slot) pairs and its BLOCK_N output columns: (expert e,
    pairs, valid, the expert's w and scale bases, first column, columns n, n < N).

    The grid is 1-D, column tiles fastest: programs that run together share one block's activation
    rows and one expert's weights in L2 (blocks are sorted by expert), instead of all blocks' rows
    streaming from memory again for every column tile. It has an upper bound of blocks (no host sync
    to count them); blocks past the last expert's have expert id -1, and the kernels skip them."""
    n_tiles = tl.cdiv(N, BLOCK_N)
    block = tl.program_id(0) // n_tiles
    e = tl.load(expert_ptr + block).to(tl.int64)
    pairs = tl.load(sorted_ptr + block * BLOCK_M + tl.arange(0, BLOCK_M))
    col0 = (tl.program_id(0) % n_tiles) * BLOCK_N
    n = col0 + tl.arange(0, BLOCK_N)
    return e, pairs, pairs < num_valid, w_ptr + e * stride_we, ws_ptr + e * stride_wse, col0, n, n < N


@triton.jit
def _moe_stage1_kernel(a_ptr, w_ptr, ws_ptr, bias_ptr, tw_ptr, sorted_ptr, expert_ptr, val_ptr, out_ptr,
                       out_scale_ptr, num_valid, topk, H, I,
                       stride_a, stride_we, stride_wr, stride_wse, stride_wsr, stride_v, stride_o, stride_os,
                       OUT_KIND: tl.constexpr, STORE_CODES: tl.constexpr, INTERLEAVED: tl.constexpr,
                       ACT: tl.constexpr, HAS_BIAS: tl.constexpr, DOWEIGHT: tl.constexpr, MODE: tl.constexpr,
                       BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, INTERPRET: tl.constexpr,
                       F: tl.constexpr, W: tl.constexpr, W_PTX: tl.constexpr, W_LEFT: tl.constexpr = False):
    """Formats as one constexpr each (``KernelFormat``): F the stage-2 input's (the quantizer), W the
    weights'; ACT a ``GatedActivation``; INTERLEAVED: gate and up rows 2j, 2j + 1 (else j, I + j);
    W_LEFT: prepared weights, the MMA's left operand (``weight_mma``)."""
    e, pairs, valid, w_e, ws_e, col0, n, n_mask = program_block(sorted_ptr, expert_ptr, num_valid, I, w_ptr, ws_ptr,
                                                                stride_we, stride_wse, BLOCK_M, BLOCK_N)
    if e >= 0:  # -1: a block past the last expert's
        tokens = tl.where(valid, pairs // topk, 0)
        gate_rows = n * (2 if INTERLEAVED else 1)
        up_rows = gate_rows + (1 if INTERLEAVED else I)
        acc_g = zeros_acc(BLOCK_M, BLOCK_N, W_LEFT)
        acc_u = zeros_acc(BLOCK_M, BLOCK_N, W_LEFT)
        for k0 in range(0, H, BLOCK_K):
            a = load_bf16_rows(a_ptr, tokens, stride_a, k0, H, valid, BLOCK_K)
            w_g = load_mxfp4_rows_bf16(w_e, ws_e, gate_rows, stride_wr, stride_wsr, k0, H, n_mask, BLOCK_K, W,
                                       W_PTX, W_LEFT)
            w_u = load_mxfp4_rows_bf16(w_e, ws_e, up_rows, stride_wr, stride_wsr, k0, H, n_mask, BLOCK_K, W, W_PTX,
                                       W_LEFT)
            acc_g = weight_mma(a, w_g, acc_g, W_LEFT, INTERPRET)
            acc_u = weight_mma(a, w_u, acc_u, W_LEFT, INTERPRET)
        acc_g = acc_rows_first(acc_g, W_LEFT)
        acc_u = acc_rows_first(acc_u, W_LEFT)
        if HAS_BIAS:
            acc_g = acc_g + tl.load(bias_ptr + e * 2 * I + gate_rows, mask=n_mask, other=0.0)[None, :]
            acc_u = acc_u + tl.load(bias_ptr + e * 2 * I + up_rows, mask=n_mask, other=0.0)[None, :]
        if ACT.kind == 0:  # SwiGLU (moe_ref.activation)
            LIMIT: tl.constexpr = ACT.limit
            g = tl.minimum(acc_g, LIMIT, propagate_nan=tl.PropagateNan.ALL)
            u = tl.minimum(tl.maximum(acc_u, -LIMIT, propagate_nan=tl.PropagateNan.ALL), LIMIT,
                           propagate_nan=tl.PropagateNan.ALL)
            s = tl.math.div_rn(tl.full((BLOCK_M, BLOCK_N), 1.0, tl.float32), 1.0 + tl.exp(-(ACT.alpha * g)))
            h = (g * s) * (u + 1.0)
        else:  # SiLU-gated
            s = tl.math.div_rn(tl.full((BLOCK_M, BLOCK_N), 1.0, tl.float32), 1.0 + tl.exp(-acc_g))
            h = (acc_g * s) * acc_u
        if DOWEIGHT:
            h = h * tl.load(tw_ptr + pairs, mask=valid, other=0.0)[:, None]
        store_quantized_rows(val_ptr, out_ptr, out_scale_ptr, h, pairs, col0, valid, I, stride_v, stride_o, stride_os,
                             OUT_KIND, MODE, STORE_CODES, BLOCK_M, BLOCK_N, F)


@triton.jit
def _moe_stage2_kernel(a_ptr, w_ptr, ws_ptr, bias_ptr, tw_ptr, sorted_ptr, expert_ptr, y_ptr,
                       num_valid, H, I,
                       stride_a, stride_we, stride_wr, stride_wse, stride_wsr, stride_y,
                       HAS_BIAS: tl.constexpr, WEIGHT_HERE: tl.constexpr,
                       BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, INTERPRET: tl.constexpr,
                       W: tl.constexpr, W_PTX: tl.constexpr, W_LEFT: tl.constexpr = False):
    e, pairs, valid, w_e, ws_e, _, n, n_mask = program_block(sorted_ptr, expert_ptr, num_valid, H, w_ptr, ws_ptr,
                                                             stride_we, stride_wse, BLOCK_M, BLOCK_N)
    if e >= 0:  # -1: a block past the last expert's
        rows = tl.where(valid, pairs, 0)
        acc = zeros_acc(BLOCK_M, BLOCK_N, W_LEFT)
        for k0 in range(0, I, BLOCK_K):
            a = load_bf16_rows(a_ptr, rows, stride_a, k0, I, valid, BLOCK_K)
            w = load_mxfp4_rows_bf16(w_e, ws_e, n, stride_wr, stride_wsr, k0, I, n_mask, BLOCK_K, W, W_PTX, W_LEFT)
            acc = weight_mma(a, w, acc, W_LEFT, INTERPRET)
        acc = acc_rows_first(acc, W_LEFT)
        if HAS_BIAS:
            acc = acc + tl.load(bias_ptr + e * H + n, mask=n_mask, other=0.0)[None, :]
        if WEIGHT_HERE:
            acc = acc * tl.load(tw_ptr + pairs, mask=valid, other=0.0)[:, None]
        tl.store(y_ptr + rows[:, None] * stride_y + n[None, :], acc, mask=valid[:, None] & n_mask[None, :])


@triton.jit
def _sum_slots_kernel(y_ptr, live_ptr, out_ptr, M, H, topk, HAS_MASK: tl.constexpr, BLOCK_T: tl.constexpr,
                      BLOCK_H: tl.constexpr):
    """out[t] = bf16(((y[t, 0] + y[t, 1]) + ...) + y[t, topk - 1]) in fp32, slots in order, masked slots
    (live 0) skipped, a token with none gets +0 (``moe_ref``'s step 6); y [M * topk, H] fp32, out as
    int16 bf16 patterns (ties to even)."""
    t = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    h = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    mask = (t < M)[:, None] & (h < H)[None, :]
    acc = tl.zeros((BLOCK_T, BLOCK_H), tl.float32)
    for k in range(topk):
        pair = t.to(tl.int64) * topk + k
        y = tl.load(y_ptr + pair[:, None] * H + h[None, :], mask=mask, other=0.0)
        if HAS_MASK:
            live = tl.load(live_ptr + pair, mask=t < M, other=0) != 0
            acc = tl.where(live[:, None], acc + y, acc)
        else:
            acc = acc + y
    tl.store(out_ptr + t[:, None].to(tl.int64) * H + h[None, :], f32_to_bf16_bits(acc).to(tl.int16), mask=mask)
