"""The NVIDIA weight decode's PTX, run on the CPU (``ptx_sim``): the asm text the GPUs run, held to
``emulation`` at every fp4x2 byte, in every byte position of its register, at every scale byte (the
Triton interpreter does not run inline asm; on a GPU ``test_numerics`` checks the same through a kernel)."""

from __future__ import annotations

import numpy as np
import pytest

import emulation as em
from moe_kernels import _decode

from .ptx_sim import run_ptx

ASM, UNBIAS_ASM = (getattr(a, "value", a) for a in (_decode._E2M1X2_ASM, _decode._UNBIAS_ASM))


def _scale_pair(byte: np.ndarray) -> np.ndarray:
    """bf16x2 of 2^(byte - 127) in both halves, from emulation's e8m0 decode (byte 255: NaN)."""
    half = (em.round_to_bf16(em.decode(byte.astype(np.uint8), "e8m0")).view(np.uint32) >> 16).astype(np.uint32)
    return half | (half << 16)


def _want(byte: np.ndarray, scale: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """emulation.dequantize_mxfp4 of the byte (its low nibble, its high nibble) at the scale byte."""
    values = em.dequantize_mxfp4(np.repeat(byte.astype(np.uint8)[:, None], 16, axis=1), scale.astype(np.uint8)[:, None])
    return values[:, 0], values[:, 1]


def _kernel_scale_pair(byte: np.ndarray) -> np.ndarray:
    """``e2m1x2_to_bf16_ptx``'s first factor as its Triton code computes it: byte << 7 in both halves,
    0x0040 (2^-127) for byte 0; byte 255 gives inf, which ``_UNBIAS_ASM`` turns into a NaN factor."""
    return np.maximum(byte.astype(np.uint32) * 0x00800080, 0x00400040).astype(np.uint32)


def test_scale_pairs_are_the_e8m0_values_but_255():
    byte = np.arange(256, dtype=np.uint32)
    got, want = _kernel_scale_pair(byte), _scale_pair(byte)
    np.testing.assert_array_equal(got[:255], want[:255])
    assert got[255] == 0x7F807F80  # inf: the NaN comes from the other factor
    (unbias,) = run_ptx(UNBIAS_ASM, [got], n_outputs=1)
    assert (unbias[:255] == unbias[0]).all() and unbias[0] == ((254 - 1) << 7) * 0x10001  # 2^(127 - 1), e2m1's bias 1
    assert all(((unbias[255] >> h) & 0x7FFF) > 0x7F80 for h in (0, 16))  # NaN in both halves


def test_ptx_decode_is_exact_at_every_byte_position_and_scale():
    _check_decode(ASM)


def _check_decode(asm: str) -> None:
    """65,536 (byte, scale byte) pairs in each of the register's 4 byte positions: each position runs
    through all 256 bytes (bijections of v) with its own scale byte (bijections of s), so a placement,
    a sign or a shift that confuses two positions, or a scale operand taken from the wrong byte, gives
    a wrong bit somewhere."""
    v, s = (a.ravel().astype(np.uint32) for a in np.meshgrid(np.arange(256), np.arange(256), indexing="ij"))
    bytes_ = [v, 255 - v, (7 * v) & 0xFF, (13 * v + 5) & 0xFF]
    scales = [s, (s + 1) & 0xFF, (s + 128) & 0xFF, 255 - s]
    word = bytes_[0] | bytes_[1] << 8 | bytes_[2] << 16 | bytes_[3] << 24
    pairs_in = [_kernel_scale_pair(sc) for sc in scales]
    unbias = [run_ptx(UNBIAS_ASM, [p], n_outputs=1)[0] for p in pairs_in]
    pairs = run_ptx(asm, [word, *pairs_in, *unbias], n_outputs=4)
    for pos in range(4):
        for half, want in zip((0, 16), _want(bytes_[pos], scales[pos])):
            got = (((pairs[pos] >> half) & 0xFFFF) << 16).astype(np.uint32).view(np.float32)
            np.testing.assert_array_equal(np.isnan(got), np.isnan(want), err_msg=f"byte {pos}, half {half}")
            keep = ~np.isnan(want)
            bad = np.flatnonzero(got[keep].view(np.uint32) != want[keep].astype(np.float32).view(np.uint32))
            assert bad.size == 0, (f"byte {pos} half {half}: {bad.size} wrong, e.g. byte {bytes_[pos][keep][bad[0]]:#x} "
                                   f"scale {scales[pos][keep][bad[0]]}: got {got[keep][bad[0]]}, "
                                   f"want {want[keep][bad[0]]}")


@pytest.mark.parametrize("edit", [("and.b32 s, t, 2147516416;", "and.b32 s, t, 32768;"),  # the high code's sign
                                  ("shl.b32 x4, $4, 4;", "shl.b32 x4, $4, 3;"),
                                  ("fma.rn.bf16x2 $1, w, $6, z;", "fma.rn.bf16x2 $1, w, $5, z;")])
def test_a_wrong_instruction_is_seen(edit):
    """The check can fail: a lost sign, a misplaced nibble, a neighbour's scale."""
    assert edit[0] in ASM
    with pytest.raises(AssertionError):
        _check_decode(ASM.replace(*edit))


def test_simulator_refuses_what_it_does_not_know():
    with pytest.raises(ValueError, match="unsupported PTX"):
        run_ptx("{ cvt.rn.bf16x2.f32 $0, $1, $1; }", [np.zeros(1, np.uint32)], n_outputs=1)
    with pytest.raises(ValueError, match="read before it is written"):
        run_ptx("{ .reg .b32 t; and.b32 $0, t, 1; }", [np.zeros(1, np.uint32)], n_outputs=1)
