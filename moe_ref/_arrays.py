"""NumPy <-> torch at the reference's boundary (torch is optional and imported lazily)."""

from __future__ import annotations

import numpy as np


def is_torch(x) -> bool:
    return type(x).__module__.split(".")[0] == "torch"


def to_numpy(x, *, arg: str) -> np.ndarray:
    """CPU numpy view/copy of an array or torch tensor; bf16 tensors become float32 (exact)."""
    if x is None:
        return None
    if is_torch(x):
        import torch

        t = x.detach().cpu()
        if t.dtype in (torch.bfloat16, torch.float16):
            t = t.float()
        return t.contiguous().numpy()
    arr = np.asarray(x)
    if arr.dtype.name == "bfloat16":
        arr = arr.astype(np.float32)
    if arr.dtype == object:
        raise TypeError(f"{arg}: expected a numeric array or tensor, got {type(x).__name__}")
    return arr


def real_array(x, *, arg: str) -> np.ndarray:
    """:func:`to_numpy` of a real (float or integer) array; any other dtype (str, bool, complex, ...) is
    a TypeError naming ``arg``."""
    arr = to_numpy(x, arg=arg)
    if arr.dtype.kind not in "iuf":
        raise TypeError(f"{arg}: expected a real (float or integer) array, got dtype {arr.dtype}")
    return arr


def like(result: np.ndarray, torch_out: bool, torch_dtype: str | None = None):
    """Return ``result`` as a torch tensor (optionally cast, e.g. "bfloat16") when inputs were torch."""
    if not torch_out:
        return result
    import torch

    t = torch.from_numpy(np.ascontiguousarray(result))
    return t.to(getattr(torch, torch_dtype)) if torch_dtype else t
