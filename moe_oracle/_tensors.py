"""Tensors of an implementation under test as NumPy, by value: 1-byte types (float8, e8m0, uint8 codes)
as their bytes, 16-bit floats widened exactly to float32, everything else as is. torch is imported
lazily (checking a NumPy-returning implementation needs no torch)."""

from __future__ import annotations

import numpy as np

__all__ = ["torch_module", "to_numpy", "same_bits", "Kept"]


def torch_module():
    import torch

    return torch


def to_numpy(t) -> np.ndarray:
    if type(t).__module__.split(".")[0] != "torch":
        return np.asarray(t)
    torch = torch_module()
    t = t.detach().cpu()
    if t.dtype.itemsize == 1 and t.dtype not in (torch.uint8, torch.int8, torch.bool):
        t = t.view(torch.uint8)  # float8 codes and e8m0 scales: their bytes, never their values
    elif t.dtype.is_floating_point and t.dtype.itemsize < 4:
        t = t.float()
    return t.contiguous().numpy()


def same_bits(a, b) -> bool:
    """Equal shapes and bytes: -0 differs from +0, a NaN equals itself (``torch.equal`` says otherwise of both)."""
    torch = torch_module()
    if a.shape != b.shape:
        return False
    if "meta" in (a.device.type, b.device.type):  # no bytes to compare (shape-only tensors, as in tests)
        return True
    return torch.equal(a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8))


class Kept:
    """Tensors handed to an implementation, kept bit for bit: :meth:`put_back` after each call restores,
    in place, any it changed (a write that a second call would undo still shows) and adds their names
    to :attr:`written`, in the order the tensors were given."""

    def __init__(self, named: dict):
        self.named = named
        self.copies = {name: t.clone() for name, t in named.items()}
        self.touched: set[str] = set()

    def put_back(self) -> None:
        for name, t in self.named.items():
            if not same_bits(self.copies[name], t):
                self.touched.add(name)
                t.copy_(self.copies[name])

    @property
    def written(self) -> list[str]:
        return [name for name in self.named if name in self.touched]
