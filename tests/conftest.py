"""Shared test set-up: logged per-test seeds and the gpu marker's skip rule."""

from __future__ import annotations

import os
import secrets

import numpy as np
import pytest


def pytest_addoption(parser):
    parser.addoption("--seed", type=int, default=None, help="base seed (default: fresh per run; also MOE_ORACLE_SEED)")


def _base_seed(config) -> int:
    if not hasattr(config, "_moe_seed") and hasattr(config, "workerinput"):  # xdist worker: the controller's seed
        config._moe_seed = int(config.workerinput["moe_seed"])
    if not hasattr(config, "_moe_seed"):
        seed = config.getoption("--seed")
        if seed is None and os.environ.get("MOE_ORACLE_SEED"):
            seed = int(os.environ["MOE_ORACLE_SEED"])
        config._moe_seed = seed if seed is not None else secrets.randbits(32)
    return config._moe_seed


try:
    import xdist  # noqa: F401
except ImportError:  # the hook below exists only with pytest-xdist
    xdist = None

if xdist is not None:

    def pytest_configure_node(node):
        """xdist: hand the controller's base seed to every worker, so the logged seed reproduces, and
        the visible GPUs, so that each worker pins itself to one (``moe_oracle.devices``)."""
        from moe_oracle.devices import pin_env, visible_gpus

        node.workerinput["moe_seed"] = _base_seed(node.config)
        gpus = visible_gpus()
        node.workerinput["moe_gpus"] = ",".join(gpus)
        node.workerinput["moe_gpu_var"] = next(iter(pin_env(gpus[0]))) if gpus else ""


def pytest_configure(config):
    """An xdist worker on a host of several GPUs sees only its own: gwN takes GPU N mod their number
    (set before anything initialises the GPU runtime; one GPU or none: nothing changes)."""
    if not hasattr(config, "workerinput") or not config.workerinput.get("moe_gpus"):
        return
    from moe_oracle.devices import gpu_for_worker

    gpu = gpu_for_worker(os.environ.get("PYTEST_XDIST_WORKER", ""), config.workerinput["moe_gpus"].split(","))
    if gpu is not None:
        os.environ[config.workerinput["moe_gpu_var"]] = gpu
        config._moe_gpu = gpu


def pytest_report_header(config):
    return f"moe-oracle base seed: {_base_seed(config)} (rerun with --seed {_base_seed(config)})"


@pytest.fixture(scope="session")
def worker_gpu(request) -> str | None:
    """The GPU this xdist worker is pinned to (None: one GPU, none, or no xdist)."""
    return getattr(request.config, "_moe_gpu", None)


@pytest.fixture
def rng(request) -> np.random.Generator:
    """A fresh generator per test, seeded from the logged base seed and the test's id."""
    seed = [_base_seed(request.config), *request.node.nodeid.encode()]
    request.node.user_properties.append(("seed", _base_seed(request.config)))
    print(f"seed: base {_base_seed(request.config)} node {request.node.nodeid}")
    return np.random.default_rng(seed)


@pytest.fixture
def base_seed(request) -> int:
    """The run's logged base seed (for data shared between tests through a cache)."""
    return _base_seed(request.config)


def _gpu_available() -> tuple[bool, str]:
    try:
        import torch
    except ImportError:
        return False, "torch is not installed"
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        return False, "TRITON_INTERPRET=1 runs kernels on the CPU interpreter"
    if not torch.cuda.is_available():
        return False, "no CUDA or ROCm device visible to torch"
    return True, ""


def pytest_collection_modifyitems(config, items):
    if not any("gpu" in item.keywords for item in items):
        return
    ok, reason = _gpu_available()
    if not ok:
        skip = pytest.mark.skip(reason=f"gpu test: {reason}")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)
