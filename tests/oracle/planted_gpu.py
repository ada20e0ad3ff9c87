"""A planted GPU bug for ``--memcheck``: a quantizer whose bytes are right (this package's kernel) but
which also launches a Triton kernel that reads its input past the end (one block wider than the input,
the load unmasked: the bug of a kernel whose last tile forgets its mask), and the same quantizer
without it. Only the sanitizer can tell them apart: every byte they return is equal."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

import moe_kernels as mk


@triton.jit
def _sum_unmasked(x_ptr, out_ptr, BLOCK: tl.constexpr):
    offsets = tl.arange(0, BLOCK)
    values = tl.load(x_ptr + offsets)  # no mask: BLOCK is past the input's end
    tl.store(out_ptr, tl.sum(values.to(tl.float32), axis=0))


def _reading_past_end(x, scale_mode="round_up"):
    flat = x.contiguous().view(-1)
    total = torch.empty(1, device=x.device, dtype=torch.float32)
    _sum_unmasked[(1,)](flat, total, BLOCK=triton.next_power_of_2(flat.numel() + 256))
    return mk.quantize_mxfp4(x, scale_mode=scale_mode)


reads_past_end = {"quantize_mxfp4": _reading_past_end}
masked = {"quantize_mxfp4": mk.quantize_mxfp4}
