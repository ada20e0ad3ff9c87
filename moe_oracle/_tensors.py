"""Tensors of an implementation under test as NumPy, by value: 1-byte types (float8, e8m0, uint8 codes)
as their bytes, 16-bit floats widened exactly to float32, everything else as is. torch is imported
lazily (checking a NumPy-returning implementation needs no torch)."""

from __future__ import annotations

import numpy as np

__all__ = ["torch_module", "to_numpy"]


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
