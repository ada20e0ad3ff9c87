"""The NVIDIA weight decode's PTX, run on the CPU (``ptx_sim``): the asm text the GPUs run, held to
``emulation`` at every fp4x2 byte, in every byte position of its register, at every scale byte (the
Triton interpreter does not run inline asm; on a GPU ``test_numerics`` checks the same through a kernel)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import emulation as em
from moe_kernels import _decode
from moe_kernels.prepared import prepare_mxfp4

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


WORDS_ASM, WORDS_FOLDED_ASM = (a.value for a in (_decode._WORDS_ASM, _decode._WORDS_FOLDED_ASM))


def _check_words(asm: str, folded: bool) -> None:
    """The prepared weights' decode (``_decode.e2m1x8_words_to_bf16``'s asm) on words that
    ``prepare_mxfp4`` made from public rows: row (v, s) holds code (v * (2k + 1) + k) % 16 at k (every
    code at every k over v = 0..15) under scale bytes s and 255 - s (every byte in both blocks); each
    word's four pairs must be emulation's values of its lane's k = 2q + 8u + 16t + h (pair 2t + u, h the
    half). ``folded``: one multiplication by 2^(byte - 1), at the scale bytes it serves (<= 128)."""
    v, s = (a.ravel() for a in np.meshgrid(np.arange(16), np.arange(129 if folded else 256), indexing="ij"))
    k = np.arange(64)
    codes = (v[:, None] * (2 * k + 1) + k) % 16  # [rows, 64]
    scales = np.stack([s, 128 - s if folded else 255 - s], 1).astype(np.uint8)  # [rows, 2 blocks]
    public = (codes[:, 0::2] | codes[:, 1::2] << 4).astype(np.uint8)
    want = em.dequantize_mxfp4(public, scales)  # [rows, 64]
    words = prepare_mxfp4(torch.from_numpy(public)).numpy().view(np.uint32).reshape(-1, 4, 2)  # [rows, q, block]
    byte = np.broadcast_to(scales[:, None, :], words.shape).astype(np.uint32)
    if folded:
        pairs = run_ptx(asm, [words.ravel(), ((byte + 126) * 0x00800080).ravel()], n_outputs=4)
    else:
        scale_pair = _kernel_scale_pair(byte).ravel()
        (unbias,) = run_ptx(UNBIAS_ASM, [scale_pair], n_outputs=1)
        pairs = run_ptx(asm, [words.ravel(), scale_pair, unbias], n_outputs=4)
    for j, pair in enumerate(pairs):
        pair = pair.reshape(words.shape)
        for q in range(4):
            for b in range(2):
                for h in range(2):
                    col = 32 * b + 2 * q + 8 * (j & 1) + 16 * (j >> 1) + h
                    got = ((pair[:, q, b] >> (16 * h)) & 0xFFFF).astype(np.uint32) << 16
                    exp = want[:, col].astype(np.float32)
                    nan = np.isnan(exp)
                    assert np.array_equal(np.isnan(got.view(np.float32)), nan), f"pair {j} lane {q} block {b} half {h}"
                    bad = np.flatnonzero(got[~nan] != exp[~nan].view(np.uint32))
                    assert bad.size == 0, (f"pair {j} lane {q} block {b} half {h}: {bad.size} wrong, e.g. code "
                                           f"{codes[~nan][bad[0], col]} scale {scales[~nan][bad[0], b]}")


@pytest.mark.parametrize("folded", [False, True])
def test_prepared_words_decode_is_exact_at_every_code_position_and_scale(folded):
    _check_words(WORDS_FOLDED_ASM if folded else WORDS_ASM, folded)


@pytest.mark.parametrize("edit", [("shf.r.wrap.b32 r, $4, $4, 4;", "shf.r.wrap.b32 r, $4, $4, 3;"),  # a pair off by a bit
                                  ("and.b32 v, r, 4194368;", "and.b32 v, r, 64;"),  # pair 3's high mantissa bit lost
                                  ("fma.rn.bf16x2 $2, w, $5, z;", "fma.rn.bf16x2 $2, w, $6, z;")])  # scale of the bias
def test_a_wrong_word_instruction_is_seen(edit):
    assert edit[0] in WORDS_ASM
    with pytest.raises(AssertionError):
        _check_words(WORDS_ASM.replace(*edit), False)
