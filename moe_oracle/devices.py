"""Several GPUs of one host: which are visible, and how to pin a process to one of them (CUDA and
ROCm alike), for the GPU suite's xdist workers and ``moe-oracle verify --devices``.

A process is pinned by its environment before it initialises the GPU runtime (``CUDA_VISIBLE_DEVICES``
on NVIDIA, ``HIP_VISIBLE_DEVICES`` on ROCm): it then sees its one GPU as device 0, so every
``"cuda"`` in the code (and Triton's current device) means that GPU, with nothing to pass around.
"""

from __future__ import annotations

import os

__all__ = ["visible_gpus", "default_device", "resolve_device", "parse_device", "pin_env", "resolve_devices", "gpu_for_worker"]


def _runtime_var() -> str:
    import torch

    return "HIP_VISIBLE_DEVICES" if getattr(torch.version, "hip", None) else "CUDA_VISIBLE_DEVICES"


def visible_gpus() -> list[str]:
    """The GPUs this process may use, as the ids its visibility variable names them by ([] without a GPU,
    or under TRITON_INTERPRET=1, where kernels run on the CPU)."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        return []
    try:
        import torch
    except ImportError:
        return []
    if not torch.cuda.is_available():
        return []
    listed = os.environ.get(_runtime_var())
    count = torch.cuda.device_count()
    if listed:
        return [d.strip() for d in listed.split(",") if d.strip()][:count]
    return [str(i) for i in range(count)]


def default_device() -> str:
    """"cuda" where a GPU is visible (:func:`visible_gpus`), else "cpu" (kernels under the interpreter)."""
    return "cuda" if visible_gpus() else "cpu"


def resolve_device(asked: str | None) -> str:
    """``--device``: None -> :func:`default_device`; "cuda" without a visible GPU is a ValueError (the
    usage error of each command line that takes the option)."""
    if asked == "cuda" and default_device() != "cuda":
        raise ValueError("--device cuda: no GPU is visible (or TRITON_INTERPRET=1)")
    return asked or default_device()


def parse_device(device) -> str:
    """The API's ``device``: "cpu", "cuda" or "cuda:N" (a string, an int N or a torch.device); a GPU one only
    where torch sees a GPU. Anything else a ValueError naming it."""
    import torch

    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"device={device!r} is not a device ({exc}); expected 'cpu', 'cuda' or 'cuda:N'") from None
    if parsed.type not in ("cpu", "cuda"):
        raise ValueError(f"device={device!r}: expected 'cpu', 'cuda' or 'cuda:N' (a ROCm GPU is 'cuda' too)")
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r}: torch sees no GPU")
    return str(parsed)


def pin_env(gpu: str) -> dict[str, str]:
    """The environment entries that make a new process see only ``gpu`` (an id from :func:`visible_gpus`)."""
    return {_runtime_var(): gpu}


def gpu_for_worker(worker_id: str, gpus: list[str]) -> str | None:
    """pytest-xdist worker "gwN" -> its GPU: N modulo the number of GPUs (None with fewer than two)."""
    if len(gpus) < 2 or not worker_id.startswith("gw") or not worker_id[2:].isdigit():
        return None
    return gpus[int(worker_id[2:]) % len(gpus)]


def resolve_devices(spec: str | None, gpus: list[str]) -> int:
    """``--devices``: "all" -> every visible GPU (1 without one), N -> N (at most the visible GPUs, 1
    on CPU-only runs: N CPU processes only when asked for explicitly, as the tests do). ValueError else."""
    if spec is None:
        return 1
    if spec == "all":
        return max(1, len(gpus))
    if not spec.isdigit() or int(spec) < 1:
        raise ValueError(f"--devices: expected 'all' or a positive integer, got {spec!r}")
    n = int(spec)
    if gpus and n > len(gpus):
        raise ValueError(f"--devices {n}: only {len(gpus)} GPU(s) visible ({', '.join(gpus)})")
    return n
