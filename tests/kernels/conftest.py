"""Kernel-test helpers: where kernels run, poisoned outputs, device selection."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture
def device(request) -> torch.device:
    """cuda for gpu-marked tests, else cpu (the interpreter)."""
    return torch.device("cuda") if request.node.get_closest_marker("gpu") else torch.device("cpu")
