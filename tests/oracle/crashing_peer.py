"""A library whose native code kills its process (tests/oracle/test_ecosystem.py): its MXFP4 quantizer
raises SIGSEGV when asked for the "even" scale mode; ``KILL_ON_IMPORT=1`` kills it at import."""

from __future__ import annotations

import os
import signal

import emulation as em
from moe_oracle.implementation import Implementation

if os.environ.get("KILL_ON_IMPORT") == "1":
    os.kill(os.getpid(), signal.SIGABRT)


def quantize_mxfp4(x, scale_mode="round_up"):
    import torch

    if scale_mode == "even":
        os.kill(os.getpid(), signal.SIGSEGV)  # what a C++ extension's bad memory access does
    codes, scale = em.quantize_mxfp4(x.float().cpu().numpy(), scale_mode=scale_mode)
    return torch.from_numpy(codes), torch.from_numpy(scale)


impl = Implementation("crashing-peer", quantize_mxfp4=quantize_mxfp4, scale_modes=("round_up", "even", "ceil"))
