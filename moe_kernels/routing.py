"""``moe_ref.moe_align_block_size`` on the device, without host syncs (CUDA-graph capturable).

Two implementations of one layout: up to ``SMALL_PAIRS`` (token, slot) pairs - decode, where host
overhead is the cost - a single Triton program does it all (counts, block starts, stable ranks,
scatter, block experts) in one launch, with tensors of at most pairs x 32 or experts x 32; above, about twenty torch ops whose device time is small next
to the GEMMs'. Both return (sorted_ids, expert_ids, n_blocks, out_of_range): out_of_range, a device
int32 scalar, counts the ids outside [0, E) (``fused_moe``'s deferred range check reads it: no
kernels of its own); n_blocks is an upper bound of the
blocks (one partial block per expert at most), blocks past the last expert's have expert id -1, and
``tests/kernels/test_fused_moe.py`` holds both to ``moe_ref``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

__all__ = ["align_pairs", "SMALL_PAIRS"]

SMALL_PAIRS = 256


def align_pairs(topk_ids: torch.Tensor, live: torch.Tensor | None, block_m: int, E: int):
    """Block layout of the (token, slot) pairs by expert; ``live`` None: every pair's expert is here.
    Pairs whose id is outside [0, E) are not placed (as masked ones) and are counted: ``fused_moe``
    reports them after the kernels are queued, and they must not index out of bounds meanwhile. The ids
    are read as int32: wider ids must be saturated into [-1, E] first (``fused_moe`` does)."""
    n_pairs = topk_ids.numel()
    n_blocks = -(-(n_pairs + (block_m - 1) * min(E, n_pairs)) // block_m)
    align = _align_one_program if n_pairs <= SMALL_PAIRS else _align_torch
    sorted_ids, expert_ids, out_of_range = align(topk_ids, live, block_m, E, n_blocks)
    return sorted_ids, expert_ids, n_blocks, out_of_range


def _align_torch(topk_ids, live, block_m, E, n_blocks):
    flat = topk_ids.reshape(-1).to(torch.int64)
    n_pairs = flat.numel()
    in_range = (flat >= 0) & (flat < E)
    placed = in_range if live is None else in_range & live.reshape(-1)
    key = torch.where(placed, flat, E)  # masked pairs (and ids out of range) sort last, under key E
    order = torch.argsort(key, stable=True)
    counts = torch.zeros(E + 1, dtype=torch.int64, device=flat.device).scatter_add_(0, key, torch.ones_like(key))[:E]
    blocks = (counts + block_m - 1) // block_m
    start_in = torch.cumsum(counts, 0) - counts
    start_out = (torch.cumsum(blocks, 0) - blocks) * block_m
    key_sorted = torch.clamp(key[order], max=E - 1)
    dest = start_out[key_sorted] + torch.arange(n_pairs, device=flat.device) - start_in[key_sorted]
    dest = torch.where(key[order] < E, dest, n_blocks * block_m)  # masked pairs: a trash slot past the end
    sorted_ids = torch.full((n_blocks * block_m + 1,), n_pairs, dtype=torch.int32, device=flat.device)
    sorted_ids[dest] = order.to(torch.int32)
    block_expert = torch.searchsorted(torch.cumsum(blocks, 0), torch.arange(n_blocks, device=flat.device),
                                      right=True)
    out_of_range = (~in_range).sum(dtype=torch.int32)
    return sorted_ids[:-1], torch.where(block_expert < E, block_expert, -1).to(torch.int32), out_of_range


def _align_one_program(topk_ids, live, block_m, E, n_blocks):
    dev = topk_ids.device
    n_pairs = topk_ids.numel()
    sorted_ids = torch.empty(n_blocks * block_m, dtype=torch.int32, device=dev)
    expert_ids = torch.empty(n_blocks, dtype=torch.int32, device=dev)
    start = torch.empty(E + 2, dtype=torch.int32, device=dev)  # scratch: each expert's first slot; the count
    ids = topk_ids.reshape(-1)
    _align_kernel[(1,)](ids, ids if live is None else live.reshape(-1), sorted_ids, expert_ids, start, n_pairs, E,
                        n_blocks, BLOCK_M=block_m, HAS_LIVE=live is not None, PAIRS=triton.next_power_of_2(n_pairs),
                        EXPERTS=triton.next_power_of_2(E + 1), BLOCKS=triton.next_power_of_2(n_blocks),
                        MAX_RUN=triton.cdiv(n_pairs, block_m), CHUNK=32, num_warps=4)
    return sorted_ids, expert_ids, start[E + 1]


@triton.jit
def _keys(ids_ptr, live_ptr, idx, n_pairs, E, HAS_LIVE: tl.constexpr):
    """(expert of pairs ``idx``: E for a masked pair, an id outside [0, E) or one past the end; whether
    the id is outside [0, E))."""
    key = tl.load(ids_ptr + idx, mask=idx < n_pairs, other=E).to(tl.int32)
    bad = ((key < 0) | (key >= E)) & (idx < n_pairs)
    key = tl.where((key >= 0) & (key < E), key, E)
    if HAS_LIVE:
        key = tl.where(tl.load(live_ptr + idx, mask=idx < n_pairs, other=0) != 0, key, E)
    return key, bad


@triton.jit
def _align_kernel(ids_ptr, live_ptr, sorted_ptr, expert_ptr, start_ptr, n_pairs, E, n_blocks,
                  BLOCK_M: tl.constexpr, HAS_LIVE: tl.constexpr, PAIRS: tl.constexpr, EXPERTS: tl.constexpr,
                  BLOCKS: tl.constexpr, MAX_RUN: tl.constexpr, CHUNK: tl.constexpr):
    """One program, no [pairs x pairs] tensors: counts and stable ranks from a loop over CHUNK-pair
    slices; pair i of expert e goes to start[e] + (its rank among e's pairs, in pair order), start[e] =
    BLOCK_M * (blocks of the experts before e), gathered through the ``start_ptr`` scratch; expert e
    writes its id into its blocks (at most MAX_RUN), over a fill of -1. Masked pairs are not placed.
    start_ptr[E + 1]: the count of ids outside [0, E)."""
    i = tl.arange(0, PAIRS)
    key, _ = _keys(ids_ptr, live_ptr, i, n_pairs, E, HAS_LIVE)
    e = tl.arange(0, EXPERTS)
    counts = tl.zeros((EXPERTS,), tl.int32)
    rank = tl.zeros((PAIRS,), tl.int32)
    for j0 in tl.static_range(0, PAIRS, CHUNK):
        j = j0 + tl.arange(0, CHUNK)
        key_j, _ = _keys(ids_ptr, live_ptr, j, n_pairs, E, HAS_LIVE)
        counts += tl.sum((key_j[None, :] == e[:, None]).to(tl.int32), axis=1)
        rank += tl.sum(((key_j[None, :] == key[:, None]) & (j[None, :] < i[:, None])).to(tl.int32), axis=1)
    blocks = tl.where(e < E, (counts + BLOCK_M - 1) // BLOCK_M, 0)
    first = tl.cumsum(blocks, axis=0) - blocks  # each expert's first block
    tl.store(start_ptr + e, first * BLOCK_M, mask=e <= E)
    r = tl.arange(0, BLOCKS * BLOCK_M)
    tl.store(sorted_ptr + r, tl.full(r.shape, 0, tl.int32) + n_pairs, mask=r < n_blocks * BLOCK_M)
    b = tl.arange(0, BLOCKS)
    tl.store(expert_ptr + b, tl.full(b.shape, -1, tl.int32), mask=b < n_blocks)
    tl.debug_barrier()  # the scratch and the fills land before the gathers and scatters below
    placed = (i < n_pairs) & (key < E)
    tl.store(sorted_ptr + tl.load(start_ptr + key, mask=placed, other=0) + rank, i, mask=placed)
    for k in tl.static_range(MAX_RUN):
        tl.store(expert_ptr + first + k, e, mask=(k < blocks) & (e < E))
    _, bad = _keys(ids_ptr, live_ptr, i, n_pairs, E, False)  # last: no live state held through the loops
    tl.store(start_ptr + E + 1, tl.sum(bad.to(tl.int32), axis=0))
