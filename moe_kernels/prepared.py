"""MXFP4 weights in the byte order of Hopper's register-operand MMA: an exact byte permutation, made once.

With the GEMMs' operands swapped (acc^T = W @ X^T, ``moe_gemm``), the decoded weight tile is wgmma's
left operand, read from registers. There, per 16-wide K tile, lane q = lane % 4 of each quad holds the
element pairs (2q, 2q + 1) and (2q + 8, 2q + 9) of its rows: fp4x2 bytes q and q + 4 of the tile's 8.
Over four K tiles (32 bytes, 64 values) a lane's bytes are q + 4j, j = 0..7: in the public layout they
lie 4 bytes apart, and Triton reads them back from shared memory one byte at a time. The prepared
layout stores byte q + 4j of each 32-byte group of a row at 8q + j: a lane's 8 bytes are contiguous
(one 8-byte load). Rows are padded with zero bytes to a multiple of 32 bytes (K to a multiple of 64;
zero codes decode to 0 at any scale and the activations are masked there); scales keep their layout.

``prepare_mxfp4`` makes it (``prepared_for`` caches it per weight tensor, so a layer is prepared on its
first call only); ``unprepare_mxfp4`` is the inverse; ``moe_gemm.load_mxfp4_rows_bf16(PREPARED=True)``
undoes the permutation in registers (a reshape and a transpose Triton folds into the load's layout).
"""

from __future__ import annotations

import weakref

import torch

__all__ = ["GROUP_BYTES", "prepare_mxfp4", "unprepare_mxfp4", "prepared_for"]

GROUP_BYTES = 32  # four 16-wide K tiles of fp4x2: the permutation's unit
_LANES = 4  # lanes of a quad sharing a row of the MMA's register operand


def _check_fp4x2(w, arg: str) -> None:
    if not isinstance(w, torch.Tensor) or w.dtype != torch.uint8 or w.dim() < 2:
        raise TypeError(f"{arg}: expected a torch.uint8 tensor [..., N, K/2] of fp4x2 bytes, got "
                        f"{getattr(w, 'dtype', type(w).__name__)} {list(getattr(w, 'shape', []))}")


def prepare_mxfp4(w: torch.Tensor) -> torch.Tensor:
    """fp4x2 weights [..., N, K/2] (public layout) -> [..., N, ceil(K/64) * 32] in the prepared byte order
    (module docstring), contiguous, on w's device."""
    _check_fp4x2(w, "w")
    *lead, n, row_bytes = w.shape
    padded = -(-row_bytes // GROUP_BYTES) * GROUP_BYTES
    w = torch.nn.functional.pad(w, (0, padded - row_bytes)) if padded != row_bytes else w
    groups = w.reshape(*lead, n, padded // GROUP_BYTES, GROUP_BYTES // _LANES, _LANES)  # [.., g, j, q]: byte q + 4j
    return groups.transpose(-1, -2).contiguous().reshape(*lead, n, padded)  # [.., g, q, j]: at 8q + j


def unprepare_mxfp4(prepared: torch.Tensor, row_bytes: int) -> torch.Tensor:
    """The inverse of ``prepare_mxfp4``: the public layout's first ``row_bytes`` (K/2) bytes of each row."""
    _check_fp4x2(prepared, "prepared")
    *lead, n, padded = prepared.shape
    if padded % GROUP_BYTES or not 0 <= row_bytes <= padded:
        raise ValueError(f"prepared: rows of {padded} bytes are not a prepared layout of {row_bytes}-byte rows")
    groups = prepared.reshape(*lead, n, padded // GROUP_BYTES, _LANES, GROUP_BYTES // _LANES)
    return groups.transpose(-1, -2).contiguous().reshape(*lead, n, padded)[..., :row_bytes]


_CACHE_SIZE = 4  # the prepared copies of the last few weight tensors (a layer's w1 and w2, and a neighbour's)
_PREPARED: list = []  # [(weakref to the public tensor, (version, data pointer, shape, strides), prepared)], newest first


def prepared_for(w: torch.Tensor) -> torch.Tensor:
    """``prepare_mxfp4(w)``, made on the first call for this tensor and reused while it is alive and
    unchanged (same storage, no in-place write since: torch's version counter; an inference-mode tensor
    has none and cannot be written outside inference mode, where weights are not written)."""
    try:
        version = w._version
    except RuntimeError:  # "Inference tensors do not track version counter"
        version = None
    key = (version, w.data_ptr(), tuple(w.shape), tuple(w.stride()))
    for i, (ref, version, prep) in enumerate(_PREPARED):
        if ref() is w and version == key:
            _PREPARED.insert(0, _PREPARED.pop(i))
            return prep
    prep = prepare_mxfp4(w)
    _PREPARED.insert(0, (weakref.ref(w), key, prep))
    del _PREPARED[_CACHE_SIZE:]
    return prep
