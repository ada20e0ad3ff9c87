"""Routing: softmax top-k and the Triton/vLLM ``moe_align_block_size`` layout."""

from __future__ import annotations

import numpy as np

from emulation.validate import check_mask_values

from ._arrays import is_torch, like, real_array, to_numpy

__all__ = ["softmax_topk", "moe_align_block_size"]


def softmax_topk(logits, topk: int, *, renormalize: bool = True):
    """Router: softmax over experts in fp32, the ``topk`` largest (ties: lower expert id first).

    Returns ``(topk_weights float32 [M, topk], topk_ids int32 [M, topk])``; with ``renormalize`` the
    weights of each token are divided by their sum (fp32).
    """
    torch_out = is_torch(logits)
    x = real_array(logits, arg="logits").astype(np.float32)
    if x.ndim != 2:
        raise ValueError(f"logits: expected shape [M, E], got {x.shape}")
    if not 1 <= topk <= x.shape[1]:
        raise ValueError(f"topk={topk} is not valid for {x.shape[1]} experts")
    z = x - x.max(axis=1, keepdims=True)
    p = np.exp(z)
    p = (p / p.sum(axis=1, keepdims=True, dtype=np.float32)).astype(np.float32)
    ids = np.argsort(-p, axis=1, kind="stable")[:, :topk].astype(np.int32)
    w = np.take_along_axis(p, ids, axis=1)
    if renormalize:
        w = (w / w.sum(axis=1, keepdims=True, dtype=np.float32)).astype(np.float32)
    return like(w, torch_out), like(ids, torch_out)


def moe_align_block_size(topk_ids, block_size: int, num_experts: int, expert_mask=None):
    """Group the flattened (token, slot) pairs by expert, each group padded to ``block_size``.

    Convention (Triton / vLLM): ``sorted_token_ids`` holds flat indices ``t * topk + k`` of
    ``topk_ids``, expert by expert in increasing expert id and, within an expert, in increasing flat
    index; each expert's run is padded to a multiple of ``block_size`` with ``topk_ids.size``.
    ``expert_ids`` has one expert id per block. Experts with no pairs get no block; with
    ``expert_mask`` ([E], 1 or True = local expert, 0 or False = not; other values are refused, as
    everywhere: ``emulation.validate.check_mask_values``) pairs routed to masked-out experts are dropped.

    Returns ``(sorted_token_ids int32 [P], expert_ids int32 [P / block_size], num_tokens_post_padded)``
    where P is exactly the padded length (the kernels' buffers may be longer).
    """
    torch_out = is_torch(topk_ids)
    ids = to_numpy(topk_ids, arg="topk_ids")
    if ids.dtype.kind not in "iu":
        raise TypeError(f"topk_ids: expected an integer array, got dtype {ids.dtype}")
    if block_size < 1:
        raise ValueError(f"block_size={block_size} is not valid; expected >= 1")
    flat = ids.reshape(-1).astype(np.int64)
    if flat.size and (flat.min() < 0 or flat.max() >= num_experts):
        raise ValueError(f"topk_ids: expert ids must lie in [0, {num_experts - 1}]")
    keep = np.ones(num_experts, bool) if expert_mask is None else check_mask_values(
        to_numpy(expert_mask, arg="expert_mask"))
    if keep.shape != (num_experts,):
        raise ValueError(f"expert_mask: expected shape [{num_experts}], got {keep.shape}")
    order = np.argsort(flat, kind="stable")
    counts = np.bincount(flat, minlength=num_experts) * keep
    padded = -(-counts // block_size) * block_size
    total = int(padded.sum())
    sorted_ids = np.full(total, flat.size, dtype=np.int32)
    expert_ids = np.repeat(np.arange(num_experts, dtype=np.int32), padded // block_size)
    starts_in = np.concatenate([[0], np.cumsum(np.bincount(flat, minlength=num_experts))[:-1]])
    starts_out = np.concatenate([[0], np.cumsum(padded)[:-1]])
    for e in np.flatnonzero(counts):
        sorted_ids[starts_out[e]:starts_out[e] + counts[e]] = order[starts_in[e]:starts_in[e] + counts[e]]
    return like(sorted_ids, torch_out), like(expert_ids, torch_out), total
