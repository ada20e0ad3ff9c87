"""Where kernels run: a GPU when one is visible, else the Triton interpreter on the CPU.

Triton decides between compiling and interpreting when a kernel is *defined*, from
``TRITON_INTERPRET``. So this module, imported before any kernel module, turns the interpreter on
when the variable is unset and torch sees no GPU: ``import moe_kernels`` then works on a laptop
as it does on a GPU machine (if triton was imported first, that is too late, and a clear ImportError
says so). An explicit ``TRITON_INTERPRET`` (0 or 1) is always respected.
Every kernel of this package is bit-exact under the interpreter by construction: conversions are
integer arithmetic on fp32 bits, never the interpreter's float8/bf16 casts (NUMERICS.md section 5).
"""

from __future__ import annotations

import functools
import os
import sys

import numpy as np
import torch

if "TRITON_INTERPRET" not in os.environ and not torch.cuda.is_available():
    if "triton" in sys.modules:
        raise ImportError(
            "moe_kernels: no GPU is visible, so its kernels need the Triton interpreter, but triton was imported "
            "before moe_kernels without TRITON_INTERPRET=1 (triton fixes the mode at import). Set "
            "TRITON_INTERPRET=1 in the environment, or import moe_kernels before triton."
        )
    os.environ["TRITON_INTERPRET"] = "1"

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"


def launch_device(*tensors: torch.Tensor) -> torch.device:
    """The device kernels run on for these inputs (all inputs must share one device)."""
    devices = {t.device for t in tensors if t is not None}
    if len(devices) > 1:
        raise ValueError(f"inputs are on different devices: {sorted(str(d) for d in devices)}")
    device = devices.pop() if devices else torch.device("cpu")
    if INTERPRET:
        return device
    if device.type == "cpu":
        if not torch.cuda.is_available():
            raise RuntimeError("no GPU is visible and TRITON_INTERPRET=0: set TRITON_INTERPRET=1 to run on the CPU")
        return torch.device("cuda", torch.cuda.current_device())
    return device


def interpreter_quiet(fn):
    """Under the interpreter NumPy runs the kernels, and its floating-point warnings on the NaN / Inf
    lanes that the kernels compute on purpose (NaN inputs, masked lanes, overflow to inf) would reach
    every caller: they are silenced for the call. On a GPU ``fn`` is returned as it is."""
    if not INTERPRET:
        return fn

    @functools.wraps(fn)
    def quiet(*args, **kwargs):
        with np.errstate(all="ignore"):
            return fn(*args, **kwargs)

    return quiet
