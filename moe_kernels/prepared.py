"""MXFP4 weights in the register order of Hopper's left MMA operand, bits placed for a cheap decode: an
exact bit permutation, made once.

With the GEMMs' operands swapped (acc^T = W @ X^T, ``moe_gemm``), the decoded weight tile is wgmma's
left operand, read from registers. There, per 16-wide K tile, lane q = lane % 4 of a quad holds the
element pairs (2q, 2q + 1) and (2q + 8, 2q + 9) of its rows; over one 32-wide scale block that is eight
values of a row, k = 2q + 8u + 16t + h (u, t, h in {0, 1}), all under one e8m0 scale byte. The prepared
layout stores them as one 32-bit word (little endian), and in each 64-wide group of a row the words of
lane q's two blocks side by side (word 2q + block: a lane's 8 bytes are contiguous). Rows are padded
with zero codes to a multiple of 64 values (32 bytes; zero codes decode to 0 at any scale, and the
activations are masked there). Scale rows are padded with zero bytes to a multiple of 16 (``prepare_scales``):
the GEMMs read them 32 bits at a time, loads that Triton's pipeline copies ahead like the words (byte
loads it issues synchronously in the loop, and converts through shared memory).

Inside a word the code bits are placed so that the decode is a rotation and a mask per bf16 pair
(``PAIR_PARTS``): pair j = 2t + u (k and k + 1, h = 0 in the low half) is the OR over its parts
(rotation r, mask) of rotr(word, r) & mask, which puts each code's sign at bf16 bit 15 and its three
magnitude bits at bits 6-8 of the low half (22-24 and 31 for the high one): the bf16 pattern of
value(code) * 2^-126 (e2m1 code 1, 0.5, is the bf16 subnormal 2^-127), which two exact bf16x2
multiplications (``_decode``) scale. Pairs 0-2 are one rotation and one mask each, pair 3 two: 9 integer
instructions per 8 weights, against 16 with the public byte order.

``prepare_mxfp4`` makes it (``prepared_for`` caches it per weight tensor, so a layer is prepared on its
first call only); ``unprepare_mxfp4`` is the inverse.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch

__all__ = ["GROUP_BYTES", "PAIR_MASK", "PAIR_PARTS", "SCALE_ROW_BYTES", "WORD_BITS", "PreparedWeights",
           "held_from_tensors", "prepare_mxfp4", "prepare_scales", "prepare_weights", "unprepare_mxfp4",
           "prepared_for", "small_scales", "left_weights"]

GROUP_BYTES = 32  # 64 values: two scale blocks of a row, the lanes' words side by side
SCALE_ROW_BYTES = 16  # prepared scale rows: a multiple of 16 bytes (aligned 32-bit loads; Triton's stride hint)
_LANES = 4  # lanes of a quad sharing a row of the MMA's register operand
PAIR_MASK = 0x81C081C0  # a bf16x2 pair's code bits: sign 15 / 31, magnitude 6-8 / 22-24
# pair j of a word: ((rotation right, mask), ...); the masks of one pair cover PAIR_MASK once
PAIR_PARTS = (((0, PAIR_MASK),), ((4, PAIR_MASK),), ((10, PAIR_MASK),), ((6, 0x81808180), (14, 0x00400040)))
_CODE_BIT_AT = (6, 7, 8, 15)  # e2m1 code bit b (m, e0, e1, sign) -> its bit in a bf16 (low half)


def _word_bits() -> tuple[tuple[int, int], ...]:
    """For each word bit 0..31: (k offset in the block for lane 0, so k = 2q + offset; code bit)."""
    where = {}
    for j, parts in enumerate(PAIR_PARTS):
        for h in range(2):
            for b, dest in enumerate(_CODE_BIT_AT):
                dest += 16 * h
                (rot,) = [r for r, mask in parts if mask >> dest & 1]
                src = (dest + rot) % 32
                assert src not in where, "PAIR_PARTS place two code bits at one word bit"
                where[src] = (8 * (j & 1) + 16 * (j >> 1) + h, b)
    assert sorted(where) == list(range(32)), "PAIR_PARTS leave a word bit unused"
    return tuple(where[p] for p in range(32))


WORD_BITS = _word_bits()


def _padded(n: int, unit: int) -> int:
    """n rounded up to a multiple of unit: a prepared row's width (bytes)."""
    return -(-n // unit) * unit


def _check_fp4x2(w, arg: str) -> None:
    if not isinstance(w, torch.Tensor) or w.dtype != torch.uint8 or w.dim() < 2:
        raise TypeError(f"{arg}: expected a torch.uint8 tensor [..., N, K/2] of fp4x2 bytes, got "
                        f"{getattr(w, 'dtype', type(w).__name__)} {list(getattr(w, 'shape', []))}")


def _k_index(device) -> torch.Tensor:
    """[4 lanes, 32 word bits]: the k (0..31) of the block whose code each word bit of lane q holds."""
    offsets = torch.tensor([k for k, _ in WORD_BITS], device=device)
    return 2 * torch.arange(_LANES, device=device)[:, None] + offsets[None, :]


def _code_bit() -> torch.Tensor:
    return torch.tensor([b for _, b in WORD_BITS])


def prepare_mxfp4(w: torch.Tensor) -> torch.Tensor:
    """fp4x2 weights [..., N, K/2] (public layout) -> [..., N, ceil(K/64) * 32] bytes in the prepared
    layout (module docstring), contiguous, on w's device."""
    _check_fp4x2(w, "w")
    *lead, n, row_bytes = w.shape
    padded = _padded(row_bytes, GROUP_BYTES)
    w = torch.nn.functional.pad(w, (0, padded - row_bytes)) if padded != row_bytes else w
    flat = w.reshape(-1, n * padded)
    out = torch.empty(flat.shape[0], n * padded, dtype=torch.uint8, device=w.device)
    k_index, code_bit = _k_index(w.device).flatten(), _code_bit().to(w.device)
    shifts = torch.arange(32, device=w.device)
    for i in range(flat.shape[0]):  # one matrix at a time: the bit expansion takes 32 bytes a value
        codes = torch.stack((flat[i] & 15, flat[i] >> 4), -1).reshape(-1, 2, 32)  # [n * groups, block, k]
        bits = (codes[:, :, k_index].reshape(-1, 2, _LANES, 32).to(torch.int32) >> code_bit) & 1  # [.., b, q, bit]
        words = (bits.transpose(1, 2).to(torch.int64) << shifts).sum(-1)  # [n * groups, q, block]
        out[i] = torch.stack([(words >> (8 * byte)) & 0xFF for byte in range(4)], -1).to(torch.uint8).flatten()
    return out.reshape(*lead, n, padded)


def prepare_scales(scale: torch.Tensor) -> torch.Tensor:
    """e8m0 scales [..., N, K/32] -> the same bytes in rows padded with zeros to a multiple of
    ``SCALE_ROW_BYTES``, contiguous ([..., N, 16 * ceil(K/512)]); ``[..., :K/32]`` gives them back."""
    if not isinstance(scale, torch.Tensor) or scale.dtype != torch.uint8 or scale.dim() < 2:
        raise TypeError(f"scale: expected a torch.uint8 tensor [..., N, K/32] of e8m0 bytes, got "
                        f"{getattr(scale, 'dtype', type(scale).__name__)} {list(getattr(scale, 'shape', []))}")
    return torch.nn.functional.pad(scale, (0, _padded(scale.shape[-1], SCALE_ROW_BYTES) - scale.shape[-1])).contiguous()


def unprepare_mxfp4(prepared: torch.Tensor, row_bytes: int) -> torch.Tensor:
    """The inverse of ``prepare_mxfp4``: the public layout's first ``row_bytes`` (K/2) bytes of each row."""
    _check_fp4x2(prepared, "prepared")
    *lead, n, padded = prepared.shape
    if padded % GROUP_BYTES or not 0 <= row_bytes <= padded:
        raise ValueError(f"prepared: rows of {padded} bytes are not a prepared layout of {row_bytes}-byte rows")
    words = prepared.reshape(-1, _LANES, 2, 4).to(torch.int64)  # [.., q, block, byte]
    words = (words << (8 * torch.arange(4, device=prepared.device))).sum(-1)  # [n * groups, q, block]
    bits = (words[..., None] >> torch.arange(32, device=prepared.device)) & 1  # [.., q, block, word bit]
    contrib = (bits.transpose(1, 2) << _code_bit().to(prepared.device)).reshape(words.shape[0], 2, -1)  # [.., block, (q, bit)]
    codes = torch.zeros(words.shape[0], 2, 32, dtype=torch.int64, device=prepared.device)  # [.., block, k]
    codes.index_add_(2, _k_index(prepared.device).flatten(), contrib)  # each (k, code bit) once: a sum is an OR
    public = (codes[..., 0::2] | (codes[..., 1::2] << 4)).to(torch.uint8)
    return public.reshape(*lead, n, padded)[..., :row_bytes]


_CACHE_SIZE = 4  # the last few tensors of each cache (a layer's w1 and w2, and a neighbour's)
_PREPARED: list = []  # [(weakref to the public tensor, (version, data pointer, shape, strides), prepared)], newest first
_PREPARED_SCALES: list = []  # the same for scale tensors
_SMALL_SCALES: list = []  # the same for scale tensors: (weakref, key, every byte <= 128)


def _key(t: torch.Tensor) -> tuple:
    """What identifies a tensor's current contents: torch's version counter (an inference-mode tensor has
    none and cannot be written outside inference mode, where weights are not written), storage, layout."""
    try:
        version = t._version
    except RuntimeError:  # "Inference tensors do not track version counter"
        version = None
    return version, t.data_ptr(), tuple(t.shape), tuple(t.stride())


def _made_from(*tensors) -> tuple:
    """(weak reference, ``_key``) of each tensor: what ``PreparedWeights.check`` compares a call's tensors with."""
    return tuple((weakref.ref(t), _key(t)) for t in tensors)


def _cached(cache: list, t: torch.Tensor, make):
    """make(t), made on the first call for this tensor and reused while it is alive and unchanged
    (``_key``: same storage, no in-place write since)."""
    key = _key(t)
    for i, (ref, version, value) in enumerate(cache):
        if ref() is t and version == key:
            cache.insert(0, cache.pop(i))
            return value
    value = make(t)
    cache.insert(0, (weakref.ref(t), key, value))
    del cache[_CACHE_SIZE:]
    return value


def prepared_for(w: torch.Tensor) -> torch.Tensor:
    """``prepare_mxfp4(w)``, made once per weight tensor (``_cached``)."""
    return _cached(_PREPARED, w, prepare_mxfp4)


def prepared_scales_for(scale: torch.Tensor) -> torch.Tensor:
    """``prepare_scales(scale)``, made once per scale tensor (``_cached``)."""
    return _cached(_PREPARED_SCALES, scale, prepare_scales)


def small_scales(scale: torch.Tensor) -> bool:
    """Whether every e8m0 byte of ``scale`` is <= 128 (block scales up to 2: every trained weight's),
    which lets the prepared weights' decode fold 2^126 into the scale (``_decode.FOLDED_PTX``): checked
    once per scale tensor (one host sync), cached like ``prepared_for``."""
    return _cached(_SMALL_SCALES, scale, lambda s: s.numel() == 0 or int(s.max()) <= 128)


@dataclass(frozen=True, eq=False)
class PreparedWeights:
    """A layer's weights as the left-operand GEMMs read them, held by the caller as a serving engine holds
    its weights: made once by ``prepare_weights``, passed to ``fused_moe(..., prepared=...)`` together
    with the public weights it was made from, and read as it is by CUDA graphs that capture such calls.
    Without it, eager calls prepare (once, cached) and graph captures use the GEMMs that read the public
    layout, so that a replay sees weights written after the capture. After writing the weights, prepare
    again (and capture again)."""

    w1: torch.Tensor  # prepare_mxfp4(w1)
    w1_scale: torch.Tensor  # prepare_scales(w1_scale)
    w2: torch.Tensor  # prepare_mxfp4(w2)
    w2_scale: torch.Tensor  # prepare_scales(w2_scale)
    small_scales: bool  # every scale byte of w1_scale and w2_scale <= 128: the one-multiplication decode
    made_from: tuple  # ((weakref, _key) of w1, w1_scale, w2, w2_scale) at preparation

    def op_args(self) -> tuple:
        """(w1, w1_scale, w2, w2_scale, small_scales): the trailing arguments of
        ``torch.ops.moe_kernels.fused_moe_prepared``."""
        return self.w1, self.w1_scale, self.w2, self.w2_scale, self.small_scales

    def check(self, w1, w1_scale, w2, w2_scale) -> None:
        """Raise ValueError unless made from these very tensors, none of them written since."""
        for name, t, (ref, key) in zip(("w1", "w1_scale", "w2", "w2_scale"), (w1, w1_scale, w2, w2_scale),
                                       self.made_from):
            if ref() is not t or _key(t) != key:
                raise ValueError(f"prepared: not made from this call's {name}, or {name} was written since "
                                 f"(prepare_weights again after writing the weights)")


def held_from_tensors(w1, w1_scale, w2, w2_scale, w1_prepared, w1_scale_prepared, w2_prepared, w2_scale_prepared,
                      small: bool) -> PreparedWeights:
    """A ``PreparedWeights`` from its tensors, as ``torch.ops.moe_kernels.fused_moe_prepared`` receives them (a
    custom operator takes tensors, not records): each prepared tensor must have the shape, dtype and device that
    ``prepare_weights`` gives these public tensors (ValueError / TypeError naming it otherwise). That they were
    made from these very weights, and ``small`` from their scales, is the caller's word: pass the fields of
    ``prepare_weights(w1, w1_scale, w2, w2_scale)``."""
    for name, pub, prep, unit in (("w1_prepared", w1, w1_prepared, GROUP_BYTES),
                                  ("w1_scale_prepared", w1_scale, w1_scale_prepared, SCALE_ROW_BYTES),
                                  ("w2_prepared", w2, w2_prepared, GROUP_BYTES),
                                  ("w2_scale_prepared", w2_scale, w2_scale_prepared, SCALE_ROW_BYTES)):
        if not isinstance(prep, torch.Tensor) or prep.dtype != torch.uint8:
            raise TypeError(f"{name}: expected the torch.uint8 tensor prepare_weights made, got "
                            f"{getattr(prep, 'dtype', type(prep).__name__)}")
        want = [*pub.shape[:-1], _padded(pub.shape[-1], unit)]
        if list(prep.shape) != want or not prep.is_contiguous() or prep.device != pub.device:
            raise ValueError(f"{name}: expected a contiguous {want} tensor on {pub.device} (prepare_weights of this "
                             f"call's weights), got {list(prep.shape)} on {prep.device}")
    return PreparedWeights(w1_prepared, w1_scale_prepared, w2_prepared, w2_scale_prepared, bool(small),
                           _made_from(w1, w1_scale, w2, w2_scale))


def prepare_weights(w1: torch.Tensor, w1_scale: torch.Tensor, w2: torch.Tensor,
                    w2_scale: torch.Tensor) -> PreparedWeights:
    """``PreparedWeights`` of a layer's public MXFP4 weights (``fused_moe``'s w1, w1_scale, w2, w2_scale)."""
    _check_fp4x2(w1, "w1")
    _check_fp4x2(w2, "w2")
    for name, t in (("w1_scale", w1_scale), ("w2_scale", w2_scale)):
        if not isinstance(t, torch.Tensor) or t.dtype != torch.uint8:
            raise TypeError(f"{name}: expected a torch.uint8 tensor of e8m0 bytes, got "
                            f"{getattr(t, 'dtype', type(t).__name__)}")
    return PreparedWeights(prepare_mxfp4(w1), prepare_scales(w1_scale), prepare_mxfp4(w2), prepare_scales(w2_scale),
                           small_scales(w1_scale) and small_scales(w2_scale), _made_from(w1, w1_scale, w2, w2_scale))


def left_weights(w1, w1_scale, w2, w2_scale, prepared: PreparedWeights | None) -> tuple:
    """(w1, w1_scale, w2, w2_scale in the prepared layouts, whether every scale byte is <= 128): the held
    ones, else the cached copies (``prepared_for``, ``prepared_scales_for``, ``small_scales``: made on the
    first eager call)."""
    if prepared is not None:
        return prepared.w1, prepared.w1_scale, prepared.w2, prepared.w2_scale, prepared.small_scales
    return (prepared_for(w1), prepared_scales_for(w1_scale), prepared_for(w2), prepared_scales_for(w2_scale),
            small_scales(w1_scale) and small_scales(w2_scale))
