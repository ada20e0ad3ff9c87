"""Grid sizes of persistent kernels: as many programs as the GPU holds at once.

A persistent program walks tiles p, p + P, ... and prefetches the next one; programs beyond what
the SMs can hold resident only start when others finish, and then run their whole share late (a
tail). So the grid is SMs x (programs resident per SM): from the compiled kernel's registers, shared
memory and warps (as Triton's fused-softmax tutorial computes it), recorded after a kernel's first
launch (which uses the configured fallback); a fixed number where configs.json says so, on ROCm,
and under the interpreter (one "SM": the loops still run there).
"""

from __future__ import annotations

import functools

import torch
import triton

_RESIDENT: dict = {}  # (kernel key, device) -> programs per SM


@functools.cache
def sm_count(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 1


def programs(key, n_tiles: int, per_sm, device: torch.device, fallback: int = 4) -> int:
    """Grid size for ``n_tiles`` tiles: ``per_sm`` programs per SM, or "occupancy" (as recorded)."""
    if per_sm == "occupancy":
        per_sm = _RESIDENT.get((key, device), fallback) if device.type == "cuda" else fallback
    return max(1, min(n_tiles, per_sm * sm_count(device)))


def launch(kernel, grid, key, device: torch.device, *args, **meta) -> None:
    """``kernel[grid](*args, **meta)``, then :func:`record` its occupancy under ``key``."""
    record(key, device, kernel[grid](*args, **meta), meta["num_warps"])


def record(key, device: torch.device, compiled, num_warps: int) -> None:
    """Programs of ``compiled`` (a launch's return value) resident per SM of a CUDA device."""
    if (key, device) in _RESIDENT or device.type != "cuda" or torch.version.hip or compiled is None:
        return
    n_regs = getattr(compiled, "n_regs", 0)
    if not n_regs:
        return
    try:
        regs, smem, max_threads = device_limits(device)
    except (RuntimeError, KeyError, AttributeError):  # a driver without these properties: keep the fallback
        return
    threads = 32 * num_warps
    by_regs = regs // (n_regs * threads)
    by_smem = smem // max(1, compiled.metadata.shared)
    _RESIDENT[key, device] = max(1, min(by_regs, by_smem, max_threads // threads))


@functools.cache
def device_limits(device: torch.device) -> tuple[int, int, int]:
    """(32-bit registers, shared-memory bytes, threads) of one SM of a CUDA device."""
    props = triton.runtime.driver.active.utils.get_device_properties(device.index or 0)
    return props["max_num_regs"], props["max_shared_mem"], \
        torch.cuda.get_device_properties(device).max_threads_per_multi_processor
