"""``moe_kernels.prepared``: the left-operand GEMMs' byte order is an exact permutation of the public
fp4x2 layout (each lane's bytes contiguous), its inverse, its padding, its refusals and its cache."""

from __future__ import annotations

import pytest
import torch

from moe_kernels import prepared
from moe_kernels.prepared import GROUP_BYTES, prepare_mxfp4, prepared_for, unprepare_mxfp4


def test_each_lanes_bytes_are_contiguous():
    row = torch.arange(2 * GROUP_BYTES, dtype=torch.uint8)[None, :]  # two groups: byte b holds b
    got = prepare_mxfp4(row)[0].tolist()
    # lane q of a quad reads bytes q + 4j (j = 0..7) of each 32-byte group (two values of 4 MMA K tiles)
    want = [g * 32 + q + 4 * j for g in range(2) for q in range(4) for j in range(8)]
    assert got == want


@pytest.mark.parametrize("row_bytes", [16, 32, 48, 64, 144, 1440])
@pytest.mark.parametrize("lead", [(), (3,), (2, 2)])
def test_round_trip_and_padding(row_bytes, lead):
    gen = torch.Generator().manual_seed(row_bytes)
    w = torch.randint(0, 256, (*lead, 5, row_bytes), dtype=torch.uint8, generator=gen)
    p = prepare_mxfp4(w)
    padded = -(-row_bytes // 32) * 32
    assert p.shape == (*lead, 5, padded) and p.dtype == torch.uint8 and p.is_contiguous()
    assert torch.equal(unprepare_mxfp4(p, row_bytes), w)
    assert sorted(p.flatten().tolist()) == sorted(w.flatten().tolist() + [0] * (p.numel() - w.numel()))
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
