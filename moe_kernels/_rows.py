"""Row access shared by the quantizers: fp32 bit patterns of bf16/fp32 rows, element pairs (a 32-bit
word of bf16 holds elements 2j and 2j + 1, which is what fp4x2 packs into a byte and fp8 pairs into
16 bits), and the input checks and views the launchers use."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

import emulation as em

from ._numerics import bf16_bits_to_f32_bits

__all__ = ["load_f32_bits", "load_pairs", "check_input", "bits_view", "words_view"]


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


def check_input(x, *, need_k32: bool) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x: expected a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in (torch.bfloat16, torch.float32):
        raise TypeError(f"x: expected dtype torch.bfloat16 or torch.float32, got {x.dtype}")
    if x.dim() != 2:
        raise ValueError(f"x: expected a 2-D tensor [M, K], got shape {list(x.shape)}")
    if need_k32 and x.shape[1] % em.BLOCK_SIZE:
        raise ValueError(f"x: K={x.shape[1]} is not a multiple of {em.BLOCK_SIZE} (one e8m0 scale per "
                         f"{em.BLOCK_SIZE} values)")


def bits_view(x: torch.Tensor) -> torch.Tensor:
    return x.view(torch.int16) if x.dtype == torch.bfloat16 else x.view(torch.int32)


def words_view(x: torch.Tensor) -> torch.Tensor | None:
    """bf16 [M, K] with unit K stride as int32 words [M, K/2] (pairs of elements), if it can be viewed so."""
    if x.dtype != torch.bfloat16 or x.stride(1) != 1 or x.shape[1] % 2 or x.stride(0) % 2 or x.storage_offset() % 2:
        return None
    return x.view(torch.int32)
