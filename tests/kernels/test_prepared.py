"""``moe_kernels.prepared``: the left-operand GEMMs' layout is an exact bit permutation of the public fp4x2
layout (each lane's eight values of a block in one word, bits placed for the rotation decode), its inverse,
its padding, its refusals and its caches."""

from __future__ import annotations

import pytest
import torch

from moe_kernels import prepared
from moe_kernels.prepared import (
    PAIR_MASK,
    PAIR_PARTS,
    prepare_mxfp4,
    prepare_scales,
    prepared_for,
    small_scales,
    unprepare_mxfp4,
)


def test_each_code_bit_lies_where_the_rotation_decode_takes_it():
    """Spelled out from the MMA's register layout and the bf16 bit positions, independently of
    ``WORD_BITS``: a row whose only nonzero code is 1 << b at column c sets exactly one bit: in word
    2q + block of its 64-wide group (lane q = (c % 8) // 2), the bit that pair j = 2t + u's part
    rotates to the code bit's bf16 position (6, 7, 8 or 15, +16 for the odd column)."""
    bf16_bit = (6, 7, 8, 15)  # e2m1 m, e0, e1, sign -> bf16 bits of value * 2^-126
    for col in range(128):
        group, block, k = col // 64, col % 64 // 32, col % 32
        q, h, u, t = k % 8 // 2, k % 2, k // 8 % 2, k // 16
        for b in range(4):
            row = torch.zeros(1, 64, dtype=torch.uint8)
            row[0, col // 2] = (1 << b) << (4 * (col % 2))
            words = prepare_mxfp4(row)[0].view(torch.int32).tolist()
            dest = bf16_bit[b] + 16 * h
            (rot,) = [r for r, mask in PAIR_PARTS[2 * t + u] if mask >> dest & 1]
            want = [0] * 16
            want[8 * group + 2 * q + block] = 1 << ((dest + rot) % 32)
            assert [w & 0xFFFFFFFF for w in words] == want, f"column {col} code bit {b}"


def test_the_pairs_parts_cover_a_pair_once():
    for parts in PAIR_PARTS:
        masks = [mask for _, mask in parts]
        assert sum(masks) == PAIR_MASK and all(a & b == 0 for i, a in enumerate(masks) for b in masks[i + 1:])


@pytest.mark.parametrize("row_bytes", [16, 32, 48, 64, 144, 1440])
@pytest.mark.parametrize("lead", [(), (3,), (2, 2)])
def test_round_trip_and_padding(row_bytes, lead):
    gen = torch.Generator().manual_seed(row_bytes)
    w = torch.randint(0, 256, (*lead, 5, row_bytes), dtype=torch.uint8, generator=gen)
    p = prepare_mxfp4(w)
    padded = -(-row_bytes // 32) * 32
    assert p.shape == (*lead, 5, padded) and p.dtype == torch.uint8 and p.is_contiguous()
    assert torch.equal(unprepare_mxfp4(p, row_bytes), w)
    popcount = [sum(bin(x).count("1") for x in t.flatten().tolist()) for t in (p, w)]  # a bit permutation
    assert popcount[0] == popcount[1]
    # the padding is zero bytes, wherever the permutation puts them
    tail = unprepare_mxfp4(p, padded)[..., row_bytes:]
    assert tail.numel() == p.numel() // p.shape[-1] * (padded - row_bytes) and not tail.any()


def test_a_non_contiguous_input():
    w = torch.randint(0, 256, (4, 64, 6), dtype=torch.uint8).transpose(1, 2)  # [4, 6, 64], strided
    assert torch.equal(unprepare_mxfp4(prepare_mxfp4(w), 64), w)


@pytest.mark.parametrize("bad, words", [
    (torch.zeros(4, 32, dtype=torch.int8), "w: expected a torch.uint8 tensor [..., N, K/2] of fp4x2 bytes, got torch.int8 [4, 32]"),
    (torch.zeros(32, dtype=torch.uint8), "w: expected a torch.uint8 tensor [..., N, K/2] of fp4x2 bytes, got torch.uint8 [32]"),
    ([[1, 2]], "w: expected a torch.uint8 tensor [..., N, K/2] of fp4x2 bytes, got list []"),
])
def test_refusals(bad, words):
    with pytest.raises(TypeError) as info:
        prepare_mxfp4(bad)
    assert str(info.value) == words


def test_unprepare_refuses_what_is_no_prepared_layout():
    with pytest.raises(ValueError, match=r"prepared: rows of 48 bytes are not a prepared layout of 40-byte rows"):
        unprepare_mxfp4(torch.zeros(2, 48, dtype=torch.uint8), 40)
    with pytest.raises(ValueError, match=r"rows of 32 bytes are not a prepared layout of 33-byte rows"):
        unprepare_mxfp4(torch.zeros(2, 32, dtype=torch.uint8), 33)
    with pytest.raises(TypeError, match=r"^prepared: expected a torch.uint8"):
        unprepare_mxfp4(torch.zeros(2, 32, dtype=torch.int32), 32)


def test_the_cache_reuses_and_notices_writes(monkeypatch):
    monkeypatch.setattr(prepared, "_PREPARED", [])
    made = []
    real = prepared.prepare_mxfp4
    monkeypatch.setattr(prepared, "prepare_mxfp4", lambda w: made.append(w) or real(w))
    w = torch.randint(0, 256, (2, 8, 32), dtype=torch.uint8)
    first = prepared_for(w)
    assert prepared_for(w) is first and len(made) == 1  # once per layer
    w[0, 0, 0] ^= 0xFF  # an in-place write: prepared again, with the new byte
    again = prepared_for(w)
    assert len(made) == 2 and torch.equal(unprepare_mxfp4(again, 32), w)
    twin = w.clone()  # equal bytes, another tensor: its own entry
    assert prepared_for(twin) is not again and len(made) == 3
    view = w[:, :4]  # same storage, another shape
    assert torch.equal(unprepare_mxfp4(prepared_for(view), 32), view) and len(made) == 4


def test_the_cache_is_bounded_and_holds_no_tensor_alive(monkeypatch):
    monkeypatch.setattr(prepared, "_PREPARED", [])
    tensors = [torch.full((1, 4, 32), i, dtype=torch.uint8) for i in range(prepared._CACHE_SIZE + 2)]
    for t in tensors:
        prepared_for(t)
    assert len(prepared._PREPARED) == prepared._CACHE_SIZE
    assert [ref() for ref, _, _ in prepared._PREPARED] == tensors[::-1][:prepared._CACHE_SIZE]  # newest first
    prepared_for(tensors[-3])  # a hit moves to the front
    assert prepared._PREPARED[0][0]() is tensors[-3]
    del tensors, t
    assert all(ref() is None for ref, _, _ in prepared._PREPARED)  # weak references only


def test_inference_mode_weights(monkeypatch):
    """Serving engines load weights under torch.inference_mode: such tensors have no version counter."""
    monkeypatch.setattr(prepared, "_PREPARED", [])
    with torch.inference_mode():
        w = torch.randint(0, 256, (2, 8, 48), dtype=torch.uint8)
    first = prepared_for(w)
    assert prepared_for(w) is first and torch.equal(unprepare_mxfp4(first, 48), w)


def test_small_scales_is_checked_once_and_notices_writes(monkeypatch):
    monkeypatch.setattr(prepared, "_SMALL_SCALES", [])
    scale = torch.full((2, 8, 4), 128, dtype=torch.uint8)
    assert small_scales(scale) and small_scales(scale)
    assert len(prepared._SMALL_SCALES) == 1
    scale[1, 7, 3] = 129  # one block scale of 4: the folded decode would overflow there
    assert not small_scales(scale)
    assert small_scales(torch.zeros(0, 4, dtype=torch.uint8)) and not small_scales(torch.full((1,), 255, dtype=torch.uint8))


@pytest.mark.parametrize("blocks", [1, 4, 15, 16, 17, 90, 224])
@pytest.mark.parametrize("lead", [(), (3,)])
def test_prepared_scales_are_the_bytes_in_rows_padded_to_16(blocks, lead):
    """``prepare_scales``: the same bytes, rows padded with zero bytes to a multiple of 16 (the GEMMs' 32-bit
    scale loads stay inside a row and read 0 past K), contiguous; non-contiguous input accepted."""
    scale = torch.randint(0, 256, (*lead, 5, blocks), dtype=torch.uint8)
    out = prepare_scales(scale)
    assert out.shape == (*lead, 5, -(-blocks // 16) * 16) and out.is_contiguous() and out.dtype == torch.uint8
    assert torch.equal(out[..., :blocks], scale) and not out[..., blocks:].any()
    wide = torch.randint(0, 256, (5, 2 * blocks), dtype=torch.uint8)[:, ::2]
    assert torch.equal(prepare_scales(wide)[:, :blocks], wide)


@pytest.mark.parametrize("bad", [torch.zeros(4, 4, dtype=torch.int8), torch.zeros(4, dtype=torch.uint8), "s"])
def test_prepare_scales_refuses(bad):
    with pytest.raises(TypeError, match=r"^scale: expected a torch.uint8 tensor \[\.\.\., N, K/32\]"):
        prepare_scales(bad)


def test_prepared_scales_are_cached_once_per_tensor(monkeypatch):
    monkeypatch.setattr(prepared, "_PREPARED_SCALES", [])
    scale = torch.randint(0, 256, (2, 8, 90), dtype=torch.uint8)
    first = prepared.prepared_scales_for(scale)
    assert prepared.prepared_scales_for(scale) is first
    scale[0, 0, 0] ^= 1  # written: made again
    assert torch.equal(prepared.prepared_scales_for(scale)[..., :90], scale)
