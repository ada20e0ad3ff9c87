"""Products of activation rows with one expert's dequantized weights, the reference's only heavy work:
in float64 on the host (NumPy, the contract) or on a torch device (a GPU's float64 GEMMs).

Every product the reference needs is ``x @ F(w_e).T`` in float64, with F the weight itself, its
absolute value or its square (the bound's sums of |a w| and (a w)^2). Dequantization is exact either
way (e2m1 value times a power of two, in fp32 as the emulation does it), so the device's matrices
equal the host's bit for bit; float64 products differ only in summation order, and the exact GEMM of
the contract (``exact``) uses them only where every order gives the same float64 result
(``moe_ref.exact.exact_round_f32``). One instance serves one reference run: it keeps only the
current expert's matrices.
"""

from __future__ import annotations

import warnings
import weakref

import numpy as np

import emulation as em

from .exact import exact_round_f32
from .weights import _BYTE_HIGH, _BYTE_LOW, MoEWeights

__all__ = ["HostProducts", "DeviceProducts", "products_for", "FORMS"]

FORMS = ("value", "abs", "square")  # F(w): the weight, |w|, w^2

class HostProducts:
    """NumPy float64 products with the weights of the expert last asked for."""

    def __init__(self, weights: MoEWeights):
        self.weights = weights
        self._expert, self._forms = None, {}

    def _matrix(self, e: int, which: str, form: str):
        if form not in FORMS:
            raise ValueError(f"form={form!r} is not valid; expected one of {list(FORMS)}")
        if self._expert != e:
            self._expert, self._forms = e, {}
        if (which, form) not in self._forms:
            self._forms[(which, form)] = self._make(e, which, form)
        return self._forms[(which, form)]

    def _make(self, e: int, which: str, form: str):
        w = self.weights.dequant(which, e).astype(np.float64)
        return w if form == "value" else np.abs(w) if form == "abs" else w * w  # FORMS

    def matmul(self, x: np.ndarray, e: int, which: str, form: str = "value") -> np.ndarray:
        """[n, N] float64: ``x @ F(w_e).T`` with F per ``form`` ("value", "abs", "square")."""
        with np.errstate(invalid="ignore", over="ignore"):
            return np.asarray(x, np.float64) @ self._matrix(e, which, form).T

    def bits(self, which: str, e: int):
        return self.weights.bits(which, e)

    def exact(self, x: np.ndarray, e: int, which: str, x_bits=None) -> np.ndarray:
        """[n, N] float32: every dot product of ``x`` (float32) with expert e's rows exact, rounded once
        (``x_bits``: x's per-row bit range, if known: ``moe_ref.exact.row_bits``)."""
        x = np.ascontiguousarray(x, np.float32)
        bits, finite = self.bits(which, e)
        return exact_round_f32(x, self.matmul(x, e, which), bits, lambda j: self.weights.dequant_row(which, e, j),
                               finite, lambda part: self.matmul(part, e, which), x_bits)


class DeviceProducts(HostProducts):
    """The same products on a torch device: packed weights uploaded once per layer and device, one
    expert dequantized there at a time, float64 GEMMs there, results back on the host."""

    def __init__(self, weights: MoEWeights, device):
        super().__init__(weights)
        import torch

        self.torch, self.device = torch, torch.device(device)
        self._packed = _uploaded(weights, self.device)

    def _make(self, e: int, which: str, form: str):
        if form != "value":
            w = self._matrix(e, which, "value")
            return w.abs() if form == "abs" else w * w
        torch = self.torch
        packed, scale, lut_e2m1, lut_e8m0 = self._packed[which]
        codes = torch.stack([packed[e] & 0xF, packed[e] >> 4], dim=-1).reshape(packed.shape[1], -1).long()
        scales = lut_e8m0[scale[e].long()].repeat_interleave(32, dim=-1)
        return (lut_e2m1[codes] * scales).double()  # fp32 product, as the emulation's (inf past fp32's range)

    def bits(self, which: str, e: int):
        """``MoEWeights.bits`` computed on the device from the same tables (equal: tested), kept in the
        weights' own cache."""
        return self.weights.bits(which, e, self._device_bits)

    def _device_bits(self, which: str, e: int):
        torch = self.torch
        packed, scale, _, _ = self._packed[which]
        byte_low, byte_high = self._packed["bits"]
        codes, s = packed[e].long(), scale[e].int() - 127
        n = codes.shape[0]
        low = (byte_low[codes].view(n, -1, 16).amin(-1).int() + s).amin(-1)
        high = (byte_high[codes].view(n, -1, 16).amax(-1).int() + s).amax(-1)
        nonzero = ((packed[e] & 0x77) != 0).any(-1)
        low = torch.where(nonzero, low, torch.iinfo(torch.int32).max).cpu().numpy()
        high = torch.where(nonzero, high, torch.iinfo(torch.int32).min).cpu().numpy()
        finite = not bool((scale[e] == 255).any()) and int(high.max()) <= 128
        return (low, high), finite

    def matmul(self, x: np.ndarray, e: int, which: str, form: str = "value") -> np.ndarray:
        xt = self.torch.from_numpy(np.ascontiguousarray(x, np.float64)).to(self.device)
        return (xt @ self._matrix(e, which, form).T).cpu().numpy()


_UPLOADS: dict = {}
_UPLOADED_LAYERS = 4  # a report's shapes: their layers stay on the device while its references run


def _uploaded(weights: MoEWeights, device):
    """The layer's packed bytes and the decode tables on ``device``: uploaded once, the last few kept."""
    import torch

    key = (id(weights), str(device))
    hit = _UPLOADS.get(key)
    if hit is None or hit[0]() is not weights:
        while len(_UPLOADS) >= _UPLOADED_LAYERS:
            _UPLOADS.pop(next(iter(_UPLOADS)))
        lut_e2m1 = torch.from_numpy(em.decode(np.arange(16, dtype=np.uint8), "e2m1").astype(np.float32)).to(device)
        lut_e8m0 = torch.from_numpy(em.decode(np.arange(256, dtype=np.uint8), "e8m0").astype(np.float32)).to(device)
        with warnings.catch_warnings():  # read-only (frozen) layers: copied to the device, never written
            warnings.simplefilter("ignore", UserWarning)
            tables = {which: (torch.from_numpy(np.ascontiguousarray(p)).to(device),
                              torch.from_numpy(np.ascontiguousarray(s)).to(device), lut_e2m1, lut_e8m0)
                      for which, (p, s) in (("w1", (weights.w1, weights.w1_scale)),
                                            ("w2", (weights.w2, weights.w2_scale)))}
        tables["bits"] = tuple(torch.from_numpy(t).to(device) for t in (_BYTE_LOW, _BYTE_HIGH))
        hit = _UPLOADS[key] = (weakref.ref(weights), tables)  # the host layer is not kept alive by it
    return hit[1]


def products_for(weights: MoEWeights, device=None) -> HostProducts:
    """Host products for ``device`` None or "cpu", else the device's."""
    if device is None or str(device) == "cpu":
        return HostProducts(weights)
    return DeviceProducts(weights, device)
